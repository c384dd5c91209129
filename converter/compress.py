"""Compression options (QAT, pruning, distillation) on the converter's side: checks, the training
data handed to the TensorFlow child, and the report section.

TensorFlow is not imported here; the fine-tuning itself runs in the child
(:mod:`converter.train.run`). Figures in the main report stay measured against the float
reference the user gave: the original model for QAT and pruning, the teacher for distillation.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter import validate
from converter.data import Dataset, load_dataset
from converter.errors import ConvertError, DataError
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess
from edge_agent.runtimes.litert import LiteRTRuntime

DEFAULT_EPOCHS = {"qat": 3, "prune": 8, "distill": 20}
MAX_EPOCHS = 1000
DEFAULT_PRUNE_BLOCK = 4  # zeros in runs of 4 bytes: the int8 file gzips smaller than scattered zeros
MAX_PRUNE_BLOCK = 64


@dataclass
class CompressOptions:
    """``--qat`` / ``--prune S`` / ``--distill-from T`` / ``--student-width W`` and their data."""

    train_data: Path | None = None
    epochs: int | None = None
    qat: bool = False
    prune: float | None = None
    prune_block: int = DEFAULT_PRUNE_BLOCK
    distill_from: Path | None = None
    student_width: float | None = None
    logdir: Path | None = None


def mode_of(c: CompressOptions, model_format: str) -> str | None:
    """The requested compression mode (None: plain PTQ); raises on inconsistent options."""
    modes = [name for name, on in (("qat", c.qat), ("prune", c.prune is not None),
                                   ("distill", c.distill_from is not None or c.student_width is not None))
             if on]
    if not modes:
        if c.train_data is None and (c.epochs is not None or c.logdir is not None):
            raise ConvertError("--epochs/--logdir need --train-data and --qat, --prune or --distill-from/"
                               "--student-width (or --train-data alone: the recovery ladder's QAT rung)")
        if c.train_data is not None and not c.train_data.exists():
            raise DataError(f"--train-data {c.train_data} not found")
        _check_epochs(c)
        return None  # plain PTQ; training data, if given, is for the recovery ladder's QAT rung
    if len(modes) > 1:
        raise ConvertError(f"choose one of --qat, --prune, --distill-from/--student-width (got {', '.join(modes)})")
    mode = modes[0]
    if c.train_data is None:
        raise ConvertError(f"--{'distill-from' if mode == 'distill' else mode} needs --train-data DIR "
                           "(labelled: class folders or .npz with y)")
    if not c.train_data.exists():
        raise DataError(f"--train-data {c.train_data} not found")
    _check_epochs(c)
    if c.prune is not None and not 0.0 < c.prune < 1.0:
        raise ConvertError(f"--prune takes a sparsity between 0 and 1 (e.g. 0.5), got {c.prune:g}")
    if not 1 <= c.prune_block <= MAX_PRUNE_BLOCK:
        raise ConvertError(f"--prune-block takes 1 to {MAX_PRUNE_BLOCK} input channels, got {c.prune_block}")
    if c.student_width is not None and not 0.0 < c.student_width < 1.0:
        raise ConvertError(f"--student-width takes a multiplier between 0 and 1 (e.g. 0.25), got {c.student_width:g}")
    if c.distill_from is not None and c.student_width is not None:
        raise ConvertError("give either --distill-from TEACHER (MODEL is the student) or --student-width W "
                           "(MODEL is the teacher), not both")
    for path in (c.distill_from,):
        if path is not None and (not path.is_file() or path.suffix.lower() not in (".keras", ".h5", ".hdf5")):
            raise ConvertError(f"--distill-from {path}: give the teacher as a .keras or .h5 file")
    if model_format == "savedmodel":
        raise ConvertError("fine-tuning needs the Keras model (.keras or .h5 file); Keras 3 cannot train a "
                           "SavedModel")
    return mode


def _check_epochs(c: CompressOptions) -> None:
    if c.epochs is not None and not 1 <= c.epochs <= MAX_EPOCHS:
        raise ConvertError(f"--epochs takes 1 to {MAX_EPOCHS}, got {c.epochs}")


def train_job(c: CompressOptions, mode: str, model: Path, spec: ImagePreprocess | AudioPreprocess,
              input_shape: list[int], label_names: list[str] | None, workdir: Path) -> dict[str, Any]:
    """Preprocess the training data (device code) and describe the child's training job."""
    assert c.train_data is not None
    data = load_dataset(c.train_data, spec, input_shape, label_names, "training")
    if data.y is None:
        raise DataError(f"--train-data {c.train_data} has no labels; give class folders or an .npz with y")
    target = workdir / "train.npz"
    np.savez(target, x=data.x.astype(np.float32), y=data.y.astype(np.int64))
    teacher = c.distill_from if c.distill_from is not None else model
    return {"mode": mode, "model": str(model.resolve()), "data": str(target),
            "epochs": c.epochs or DEFAULT_EPOCHS[mode],
            "logdir": None if c.logdir is None else str(c.logdir.resolve()),
            "sparsity": c.prune, "block": c.prune_block, "teacher": str(teacher.resolve()), "width": c.student_width,
            "samples": len(data)}


def read_outputs(info: dict[str, Any]) -> dict[str, Any]:
    """The child's training summary with its side models read into memory (the workdir goes away)."""
    out = dict(info)
    for key in ("ptq", "equalized_ptq", "teacher_float", "student_float"):
        if out.get(key):
            out[key] = Path(out[key]).read_bytes()
    return out


def _outputs(model: bytes, x: np.ndarray, label: str) -> np.ndarray:
    runtime = LiteRTRuntime(model, threads=2)
    try:
        return validate.run_model(runtime, x, label)[0]
    finally:
        runtime.close()


def _figures(model: bytes, reference: np.ndarray, valid: Dataset, label: str) -> dict[str, Any]:
    outputs = _outputs(model, valid.x, label)
    acc = None if valid.y is None else round(validate.accuracy(outputs, valid.y), 6)
    return {"accuracy": acc, "top1_agreement": round(validate.top1_agreement(reference, outputs), 6),
            "size_bytes": len(model), "gzip_bytes": len(gzip.compress(model, 9)),
            "latency_ms_1_thread": validate.measure_latency(model, valid.x, threads=(1,))["1"]}


def section(info: dict[str, Any], report: dict[str, Any], float_outputs: np.ndarray, int8_model: bytes,
            valid: Dataset) -> dict[str, Any]:
    """The report's ``compression`` section (see docs/converter.md, "Compression")."""
    mode = info["mode"]
    result = _figures(int8_model, float_outputs, valid, f"validation {mode} int8")
    out: dict[str, Any] = {"mode": mode, "epochs": info.get("epochs"), "history": info.get("history", {}),
                           "train_samples": info.get("samples"), mode: result}
    if info.get("ptq") is not None:
        ptq = _figures(info["ptq"], float_outputs, valid, "validation plain PTQ int8")
        out["ptq"] = ptq
        if ptq["gzip_bytes"]:
            out["gzip_reduction_vs_ptq"] = round(1.0 - result["gzip_bytes"] / ptq["gzip_bytes"], 4)
    if info.get("equalized_ptq") is not None:
        out["equalized_ptq"] = _figures(info["equalized_ptq"], float_outputs, valid,
                                        "validation equalised PTQ int8")
    if mode == "qat":
        out["equalized"] = info.get("equalized", [])
    if mode == "prune":
        out.update(target_sparsity=info.get("target_sparsity"), sparsity=info.get("sparsity"),
                   pruned_layers=info.get("pruned_layers"), block=info.get("block"))
    if mode == "distill":
        teacher = _figures(info["teacher_float"], float_outputs, valid, "validation teacher float")
        student_float = _figures(info["student_float"], float_outputs, valid, "validation student float")
        out["teacher"] = {**teacher, "params": info.get("teacher_params")}
        out["student_float"] = {**student_float, "params": info.get("params")}
        out["distill"]["params"] = info.get("params")
        out["param_ratio"] = round(int(info.get("params") or 0) / max(1, int(info.get("teacher_params") or 1)), 4)
        out["width"] = info.get("width")
    report["size_int8_gzip_bytes"] = result["gzip_bytes"]
    return out
