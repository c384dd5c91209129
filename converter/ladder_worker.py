"""TensorFlow child process of the recovery ladder (the parent side is :mod:`converter.ladder`).

``python -m converter.ladder_worker WORKDIR``: step 1 is :mod:`converter.worker`'s (load the model,
write ``float.tflite`` and ``step1.json``, print ``@@step1``). Then, for every line ``NAME`` on
stdin, it reads ``NAME.json``, writes ``NAME.result.json`` and prints ``@@NAME``; ``quit`` ends it.

Jobs (``"kind"``):

* ``quantize``: calibrate with ``calibration`` (``.npy``), optionally narrow every activation
  range to the ``percentile`` of the values seen in calibration, keep ``keep_float`` op output
  tensors in float, and write ``out``;
* ``equalize``: cross-layer equalisation (:mod:`converter.train.equalize`) of the Keras ``model``,
  then calibrate with ``calibration`` and write ``out``; returns the equalised ``pairs`` (an empty
  list, and no model, when the model has no pair to equalise);
* ``qat``: quantisation-aware training (:func:`converter.train.qat.run_qat`, with the ``train``
  job of :func:`converter.compress.train_job`), then full-int8 conversion calibrated with
  ``calibration``, written to ``out``;
* ``rank``: per-layer comparison of float and int8 activations with TensorFlow's
  ``QuantizationDebugger`` (each quantised op against its float twin); returns the activation
  tensors worst first (by the error an op adds to what its inputs had), each with the ops that
  keep it float when it stays wide.

Errors are reported as ``{"error": ..., "kind": ...}`` like :mod:`converter.worker`'s.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter import worker

MARK_PREFIX = "@@"
RANK_SAMPLES = 100  # enough for a stable ranking of a layer's error; the debugger is slow on big models
PERCENTILE_SAMPLES = 200
VALUES_PER_SAMPLE = 4096  # per tensor and sample, for the percentiles: bounds memory on large models
_NAME = re.compile(r"^[a-z0-9-]{1,40}$")


def _samples(path: Path, limit: int | None = None) -> Callable[[], Iterator[list[np.ndarray]]]:
    data = np.load(path, mmap_mode="r")
    count = data.shape[0] if limit is None else min(limit, data.shape[0])

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(count):
            yield [np.asarray(data[i : i + 1], dtype=np.float32)]

    return gen


def _calibrated(saved: str, calibration: Path) -> bytes:
    """The float model with the activation ranges seen on the calibration data (not quantised yet)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _samples(calibration)
    converter._experimental_calibrate_only = True  # the hook TF's QuantizationDebugger uses
    result: bytes = converter.convert()
    return result


def _narrow_ranges(calibrated: bytes, calibration: Path, percentile: float) -> tuple[bytes, int]:
    """Shrink each recorded activation range [min, max] to the given percentile of its values.

    Returns the edited model and how many ranges became narrower. The model input keeps its range.
    """
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    interp = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    skip = set(int(i) for i in graph.inputs)
    wanted = [i for i, t in enumerate(graph.tensors)
              if i not in skip and t.quantization is not None and t.quantization.min is not None
              and len(t.quantization.min) == 1]
    values: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    rng = np.random.default_rng(0)
    in_index = interp.get_input_details()[0]["index"]
    for (sample,) in _samples(calibration, PERCENTILE_SAMPLES)():
        interp.set_tensor(in_index, sample)
        interp.invoke()
        for i in wanted:
            try:
                flat = np.asarray(interp.get_tensor(i), dtype=np.float32).ravel()
                if flat.size > VALUES_PER_SAMPLE:
                    flat = flat[rng.choice(flat.size, VALUES_PER_SAMPLE, replace=False)]
                values[i].append(flat)
            except ValueError:  # a tensor the interpreter does not keep
                continue
    narrowed = 0
    for i in wanted:
        if not values[i]:
            continue
        flat = np.concatenate(values[i])
        q = graph.tensors[i].quantization
        lo = min(0.0, float(np.percentile(flat, 100.0 - percentile)))
        hi = max(0.0, float(np.percentile(flat, percentile)))
        new_lo, new_hi = max(float(q.min[0]), lo), min(float(q.max[0]), hi)
        if new_hi - new_lo <= 0:
            continue
        if new_lo > float(q.min[0]) or new_hi < float(q.max[0]):
            narrowed += 1
        q.min, q.max = [new_lo], [new_hi]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), narrowed


def _quantize(calibrated: bytes, io: str, keep_float: list[str]) -> bytes:
    """Quantise a calibrated model as the TFLite converter does, keeping ``keep_float`` op outputs float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    io_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io]
    if io == "uint8":
        raise worker._StepError("quantize", "the ladder's own quantiser writes int8 or float32 io, not uint8")
    result: bytes = tfl_convert.mlir_quantize(
        calibrated, fully_quantize=io != "float32", input_data_type=io_type, output_data_type=io_type,
        denylisted_nodes=keep_float or None)
    return result


def _rank(calibrated: bytes, calibration: Path) -> list[dict[str, Any]]:
    """Activation tensors, worst first, by mean per-channel relative RMS error of the int8 op output."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    def relative(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
        deq = (q.astype(np.float32) - zero_point) * scale
        channels = f.shape[-1] if f.ndim else 1
        f2, d2 = f.reshape(-1, channels), deq.reshape(-1, channels)
        err = np.sqrt(np.mean((d2 - f2) ** 2, axis=0))
        ref = np.sqrt(np.mean(f2 ** 2, axis=0))
        live = ref > 1e-6 * max(float(ref.max()), 1e-12)
        return float(np.mean(err[live] / ref[live])) if live.any() else 0.0

    debug_model = tfl_convert.mlir_quantize(calibrated, enable_numeric_verify=True)
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"relative_rmse": relative})
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model, debug_dataset=_samples(calibration, RANK_SAMPLES),
        debug_options=options)
    debugger.run()
    stats = debugger.layer_statistics or {}

    interp = tf.lite.Interpreter(model_content=calibrated)
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    kind: dict[str, str] = {}
    inputs_of: dict[str, list[str]] = {}
    outputs = {names[d["index"]] for d in interp.get_output_details()}
    for op in interp._get_ops_details():  # the graph structure, as TF's debugger reads it
        outs = [names[i] for i in op["outputs"] if i >= 0]
        for name in outs:
            producer[name] = outs[0]
            kind[name] = str(op["op_name"])
            inputs_of[name] = [names[i] for i in op["inputs"] if i >= 0 and i in names]
        for i in op["inputs"]:
            if i >= 0 and i in names:
                consumers.setdefault(names[i], []).extend(outs[:1])
    ranked: list[dict[str, Any]] = []
    for verify_name, metrics in stats.items():
        # TF's own rule (QuantizationDebugger.layer_statistics_dump): "NumericVerify/<tensor><digit>:<i>"
        tensor = verify_name.rsplit(":", 1)[0].split("/", 1)[-1]
        if tensor and tensor[-1].isdigit() and tensor not in producer:
            tensor = tensor[:-1]
        if tensor not in producer or tensor in outputs:
            continue
        wide = [tensor, *[c for c in consumers.get(tensor, []) if c != tensor]]
        ranked.append({"tensor": tensor, "op": kind.get(tensor, "?"),
                       "score": round(float(metrics.get("relative_rmse", 0.0)), 6),
                       "keep_float": list(dict.fromkeys(wide)),
                       "ops": [f"{kind.get(t, '?')} {t.split(';')[0]}" for t in dict.fromkeys(wide)]})
    # An op's error includes what its inputs brought along; rank by the error an op adds first.
    score = {r["tensor"]: r["score"] for r in ranked}
    for r in ranked:
        inherited = max((score.get(t, 0.0) for t in inputs_of.get(r["tensor"], [])), default=0.0)
        r["added"] = round(max(0.0, r["score"] - inherited), 6)
    ranked.sort(key=lambda r: (-r["added"], -r["score"]))
    return ranked


def _equalize(job: dict[str, Any], calibration: Path) -> dict[str, Any]:
    from converter.train import common, equalize

    try:
        model = common.load_keras(str(job["model"]))
    except common.TrainError as exc:
        raise worker._StepError("equalize", str(exc)) from exc
    pairs = equalize.equalize(model)
    if not pairs:
        return {"pairs": []}
    saved = common.export(model, str(Path(job["out"]).with_suffix(".savedmodel")))
    Path(job["out"]).write_bytes(_quantize(_calibrated(saved, calibration), str(job["io"]), []))
    return {"pairs": pairs, "model": job["out"]}


def _qat(job: dict[str, Any], calibration: Path) -> dict[str, Any]:
    from converter.train import common, qat

    train = job["train"]
    try:
        info = qat.run_qat(train["model"], train["data"], int(train["epochs"]), train.get("logdir"),
                           str(Path(job["out"]).with_suffix(".savedmodel")))
    except common.TrainError as exc:
        raise worker._StepError("train", str(exc)) from exc
    Path(job["out"]).write_bytes(worker._int8_convert(info["savedmodel"], calibration, str(job["io"]),
                                                      fallback=False))
    return {"model": job["out"], "equalized": info.get("equalized", []), "epochs": info["epochs"],
            "history": info.get("history", {})}


class _Session:
    """Caches the calibrated model per calibration file across jobs."""

    def __init__(self, saved: str) -> None:
        self.saved = saved
        self._cache: dict[str, bytes] = {}

    def calibrated(self, calibration: Path) -> bytes:
        key = str(calibration)
        if key not in self._cache:
            self._cache[key] = _calibrated(self.saved, calibration)
        return self._cache[key]

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        calibration = Path(job["calibration"])
        if job["kind"] == "rank":
            return {"ranked": _rank(self.calibrated(calibration), calibration)}
        if job["kind"] == "equalize":
            return _equalize(job, calibration)
        if job["kind"] == "qat":
            return _qat(job, calibration)
        if job["kind"] != "quantize":
            raise worker._StepError("internal", f"unknown ladder job {job['kind']!r}")
        calibrated = self.calibrated(calibration)
        result: dict[str, Any] = {}
        percentile = job.get("percentile")
        if percentile is not None:
            calibrated, result["ranges_narrowed"] = _narrow_ranges(calibrated, calibration, float(percentile))
        keep = [str(n) for n in job.get("keep_float", [])]
        model = _quantize(calibrated, str(job["io"]), keep)
        Path(job["out"]).write_bytes(model)
        result["model"] = job["out"]
        return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m converter.ladder_worker WORKDIR", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(args[0])
    if not worker._run_step(workdir, worker.STEP1, worker.MARK1, worker._step1):
        return 1
    session = _Session(json.loads((workdir / worker.STEP1).read_text())["savedmodel"])
    for line in sys.stdin:
        name = line.strip()
        if name == "quit" or not _NAME.fullmatch(name):
            return 0
        job = json.loads((workdir / f"{name}.json").read_text())
        worker._run_step(workdir, f"{name}.result.json", f"{MARK_PREFIX}{name}",
                         lambda _w, job=job: session.run(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
