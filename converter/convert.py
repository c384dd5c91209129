"""Trained model -> verified int8 bundle.

The steps, in order (see :func:`convert`):

1. check the model path, output path, signing key and label file up front;
2. a child process (:mod:`converter.worker`) loads the model and writes a float
   TFLite file; its input shape fixes the image size / audio feature shape;
3. calibration (and validation) data are preprocessed here with the agent's own
   functions and handed to the child as ``.npy``; it runs full-integer
   quantisation (int8 builtins only; with float fallback if that fails and
   ``--strict`` is off);
4. the produced flatbuffer is read back: which ops run in int8, tensor
   scale/zero-point from the interpreter;
5. float and int8 models are compared on the validation data, latency measured;
6. manifest with golden vectors; the bundle is written to a temporary file
   next to the output, read back, smoke-tested, and only then renamed into place.

TensorFlow is never imported in this process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

import edge_agent
from converter import compress, ladder, safeguards, validate, worker
from converter import ops as ops_mod
from converter.child import WorkerProcess, raise_step_error, read_step
from converter.data import Dataset, data_kind, load_dataset
from converter.errors import AccuracyError, ConvertError, DataError, ModelLoadError, QuantizationError
from converter.golden import golden_vectors
from converter.output import check_output_writable, write_report_copy, write_verified
from converter.plots import write_plots
from converter.progress import Steps
from converter.report import report_json
from edge_agent.model.bundle import LABELS, REPORT
from edge_agent.model.keys import load_private_key
from edge_agent.model.manifest import (
    AudioPreprocess,
    ImagePreprocess,
    Manifest,
    ModelInfo,
    OutputSpec,
    TensorSpec,
)
from edge_agent.preprocess import audio_feature_shape
from edge_agent.runtimes.litert import LiteRTRuntime, backend_version
from edge_agent.schema import ValidationError
from edge_agent.util.fs import atomic_write

log = logging.getLogger(__name__)

ModelFormat = Literal["savedmodel", "keras", "h5"]
IoType = Literal["int8", "uint8", "float32"]
Task = Literal["classify", "detect", "audio_classify"]
HOLDOUT_FRACTION = 0.2


@dataclass
class ConvertOptions:
    """Everything ``edge-convert`` accepts (see ``edge-convert --help``)."""

    model: Path
    calibration: Path
    output: Path
    validation: Path | None = None
    labels: Path | None = None
    task: Task | None = None
    name: str | None = None
    version: str = "1"
    # image preprocessing
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    resize: Literal["stretch", "letterbox", "crop"] = "stretch"
    color: Literal["rgb", "bgr", "gray"] | None = None
    invert: bool = False
    # audio preprocessing (None = AudioPreprocess defaults)
    audio: dict[str, Any] = field(default_factory=dict)
    # quantisation and checks
    io: IoType = "int8"
    max_accuracy_drop: float = 1.0
    strict: bool = False
    sign_key: Path | None = None
    report: Path | None = None
    save_float: Path | None = None
    calibration_samples: int = 500
    latency_budget_ms: float | None = None
    detection_format: Literal["tflite_postprocess", "raw_boxes", "yolo"] = "tflite_postprocess"
    activation: Literal["none", "softmax", "sigmoid"] | None = None  # None: softmax unless already probabilities
    seed: int = 0
    # safeguards (see converter/safeguards.py)
    allow_low_accuracy: bool = False
    input_shape: list[int] | None = None  # fixed input size for models with dynamic dimensions
    plots: Path | None = None
    # recovery ladder (converter/ladder.py)
    min_agreement: float | None = None
    ladder: bool = True
    # compression: QAT, pruning, distillation (converter/compress.py, converter/train/)
    compress: compress.CompressOptions = field(default_factory=compress.CompressOptions)


@dataclass
class ConvertResult:
    """What a successful conversion produced."""

    output: Path
    manifest: Manifest
    report: dict[str, Any]
    smoke_summary: str


# --------------------------------------------------------------------------- checks


def detect_model_format(path: Path) -> ModelFormat:
    """Tell a SavedModel folder, a ``.keras`` file and an ``.h5`` file apart."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path} not found; give a SavedModel folder, a .keras or an .h5 file")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path} is a folder but not a SavedModel (no saved_model.pb in it)")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".tflite":
        raise ModelLoadError(f"{path} is already a TFLite model; give the SavedModel or Keras model "
                             "it was made from so it can be quantised and validated")
    raise ModelLoadError(f"unknown model format {suffix or '(no suffix)'!r} for {path}; give a "
                         "SavedModel folder, a Keras 3 .keras file or a legacy .h5 file")


def read_labels_file(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConvertError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConvertError(f"labels file {path} is empty; give one label per line")
    return labels


def default_model_name(model: Path) -> str:
    stem = model.name if model.is_dir() else model.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    return name[:128]


# --------------------------------------------------------------------------- preprocessing spec


def build_preprocess(opts: ConvertOptions, task: Task, input_shape: list[int]
                     ) -> ImagePreprocess | AudioPreprocess:
    """The manifest's preprocessing section from options and the model's input shape."""
    try:
        if task == "audio_classify":
            spec = AudioPreprocess(**opts.audio)
            feature_shape = audio_feature_shape(spec)
            if int(np.prod(feature_shape)) != int(np.prod(input_shape[1:])):
                raise DataError(
                    f"audio features have shape {feature_shape} but the model input is "
                    f"{input_shape}; set --window/--frame-length/--frame-step/--n-mels/--n-mfcc/"
                    "--feature to match the model"
                )
            return spec
        if len(input_shape) != 4 or input_shape[3] not in (1, 3):
            raise DataError(f"model input {input_shape} is not an NHWC image with 1 or 3 channels; "
                            "for audio models pass --task audio_classify")
        channels = input_shape[3]
        color = opts.color or ("gray" if channels == 1 else "rgb")
        if (color == "gray") != (channels == 1):
            raise DataError(f"--color {color} does not fit the model input with {channels} channel(s)")
        return ImagePreprocess.model_validate({
            "width": input_shape[2], "height": input_shape[1], "channels": channels, "resize": opts.resize,
            "color": color, "mean": opts.mean, "std": opts.std, "invert": opts.invert,
        })
    except ValidationError as exc:
        where = exc.where()
        raise ConvertError(f"invalid preprocessing options{' (' + where + ')' if where else ''}: "
                           f"{exc.first['msg']}") from exc


# --------------------------------------------------------------------------- main entry


def _note(message: str) -> None:
    print(f"edge-convert: {message}", file=sys.stderr, flush=True)


@dataclass
class _Converted:
    """What the child process produced, plus the data preprocessed for it.

    ``float_model`` is the float TFLite model of the model the user gave: the reference of
    ``accuracy_float`` and ``top1_agreement`` whatever path makes ``int8_model`` (PTQ, the
    recovery ladder, QAT, pruning); only ``int8_model`` may be replaced.
    """

    float_model: bytes
    int8_model: bytes
    tensorflow: str
    int8_only_error: str | None
    fallback: bool
    spec: ImagePreprocess | AudioPreprocess
    calibration: Dataset
    validation: Dataset
    validation_source: str
    label_names: list[str] | None
    labels_source: str = "labels file"
    calibration_pool: np.ndarray | None = None  # every calibration sample, before --calibration-samples
    compression: dict[str, Any] | None = None


def convert(opts: ConvertOptions) -> ConvertResult:
    """Convert, validate and bundle one model (see the module doc).

    Raises:
        ConvertError: a clear, one-line reason; :class:`AccuracyError` carries the report.
        edge_agent.errors.EdgeError: signing key or bundle problems.
    """
    started = time.perf_counter()
    fmt = detect_model_format(Path(opts.model))
    check_output_writable(Path(opts.output))
    sign_key = load_private_key(opts.sign_key) if opts.sign_key else None
    label_names = read_labels_file(opts.labels) if opts.labels else None
    calib_kind = data_kind(opts.calibration)
    if opts.validation is not None:
        data_kind(opts.validation)
    if opts.calibration_samples < 1:
        raise ConvertError("--calibration-samples must be at least 1")
    if opts.min_agreement is not None and not 0.0 < opts.min_agreement <= 1.0:
        raise ConvertError(f"--min-agreement takes a fraction in (0, 1], e.g. 0.99; got {opts.min_agreement:g}")
    task: Task = opts.task or ("audio_classify" if calib_kind == "audio" else "classify")
    compress_mode = compress.mode_of(opts.compress, fmt)

    with Steps() as steps:
        conv = _run_conversion(opts, fmt, task, label_names, steps, compress_mode)
        op_list = _check_ops(conv, opts)
        report, comp, labels = _validate(conv, opts, fmt, task, op_list, steps)
        steps.finish()
        if conv.compression is not None:
            report["compression"] = compress.section(conv.compression, report, comp.float_outputs,
                                                     conv.int8_model, conv.validation)
        _safeguards(conv, opts, report, comp, labels, started)  # near-chance float: no ladder can help
        missed = ladder.misses(report, opts.max_accuracy_drop, opts.min_agreement)
        # the ladder re-quantises the original model: not after fine-tuning (it would undo the compression)
        if missed and opts.ladder and conv.calibration_pool is not None and conv.compression is None:
            steps.start("recovery ladder", spin=False)
            outcome = ladder.run_ladder(opts, fmt, conv, report, conv.calibration_pool)
            steps.finish()
            if outcome.model is not None:
                conv = dataclasses.replace(conv, int8_model=outcome.model)
                op_list = _check_ops(conv, opts)
                report, comp, labels = _validate(conv, opts, fmt, task, op_list, steps)
                steps.finish()
                _safeguards(conv, opts, report, comp, labels, started)  # the class figures of the model kept
            report["ladder"] = outcome.report
        _check_drop(opts, report, started)
        steps.start("writing the bundle and smoke-testing it")
        result = _finish(conv, opts, task, report, comp, labels, sign_key, started)
    return result


def _safeguards(conv: _Converted, opts: ConvertOptions, report: dict[str, Any], comp: validate.Comparison,
                labels: list[str], started: float) -> None:
    """Per-class figures and plots; refuse near-chance float accuracy (converter/safeguards.py)."""
    valid = conv.validation
    if report["accuracy_float"] is not None and valid.y is not None and len(labels) == int(
            np.prod(comp.float_outputs.shape[1:])):
        report.update(safeguards.class_figures(comp.float_outputs, comp.int8_outputs, valid.y, labels))
    if opts.plots is not None:
        paths = write_plots(opts.plots, report.get("confusion_matrix"), comp.float_outputs, comp.int8_outputs)
        _note(f"plots: {', '.join(str(p) for p in paths)}")
    acc = report["accuracy_float"]
    if acc is not None and safeguards.near_chance(acc, len(labels), len(valid)):
        message = safeguards.low_accuracy_message(acc, len(labels), len(valid), opts.mean, opts.std)
        report["low_accuracy"] = True
        if not opts.allow_low_accuracy:
            report["duration_s"] = round(time.perf_counter() - started, 1)
            write_report_copy(opts.report, report)
            raise safeguards.LowAccuracyError(message, report)
        _note(f"warning (--allow-low-accuracy): {message}")


def _check_drop(opts: ConvertOptions, report: dict[str, Any], started: float) -> None:
    if ladder.misses(report, opts.max_accuracy_drop, opts.min_agreement):
        report["duration_s"] = round(time.perf_counter() - started, 1)
        write_report_copy(opts.report, report)
        tried = (f"; the recovery ladder measured {ladder.measured(report['ladder'])} other model(s), none "
                 "met the targets (see the report)" if "ladder" in report else "")
        if report["accuracy_drop_pp"] is not None and report["accuracy_drop_pp"] > opts.max_accuracy_drop:
            raise AccuracyError(
                f"int8 accuracy {report['accuracy_int8']:.2%} is {report['accuracy_drop_pp']:.2f} pp below "
                f"float {report['accuracy_float']:.2%}, more than --max-accuracy-drop "
                f"{opts.max_accuracy_drop:g}; calibrate with data preprocessed like the real input "
                f"(and more of it), or raise the limit{tried}", report)
        raise AccuracyError(
            f"int8 top-1 agreement with the float model {report['top1_agreement']:.2%} is below "
            f"--min-agreement {opts.min_agreement:g}{tried}", report)


def _finish(conv: _Converted, opts: ConvertOptions, task: Task, report: dict[str, Any],
            comp: validate.Comparison, labels: list[str], sign_key: Any, started: float) -> ConvertResult:
    """Manifest, verified bundle, report copy."""
    manifest = _build_manifest(conv, opts, task, labels, comp, report)
    report["duration_s"] = round(time.perf_counter() - started, 1)
    files = {LABELS: ("\n".join(labels) + "\n").encode(), REPORT: report_json(report)}
    written, smoke = write_verified(Path(opts.output), manifest, conv.int8_model, files, sign_key)
    write_report_copy(opts.report, report)
    if opts.save_float is not None:
        try:
            atomic_write(Path(opts.save_float), conv.float_model)
        except OSError as exc:
            raise ConvertError(f"cannot write {opts.save_float}: {exc.strerror or exc}") from exc
    return ConvertResult(output=Path(opts.output), manifest=written, report=report, smoke_summary=smoke)


def _run_conversion(opts: ConvertOptions, fmt: ModelFormat, task: Task, label_names: list[str] | None,
                    steps: Steps, compress_mode: str | None = None) -> _Converted:
    """Float model (child) -> input shape -> preprocessed data (here) -> int8 model (child)."""
    model_path = Path(opts.model)
    child_steps = {"load": f"loading {fmt} model {model_path}", "float": "converting to float TFLite",
                   "quantise": "quantising to int8"}

    def on_start(step: str) -> None:
        steps.start(child_steps.get(step, step))

    labels_source = "labels file" if label_names is not None else ""
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        workdir = Path(tmp)
        (workdir / worker.JOB1).write_text(json.dumps({"model": str(model_path.resolve()), "format": fmt,
                                                       "input_shape": opts.input_shape}))
        steps.start("starting the TensorFlow child process")
        child = WorkerProcess(workdir)
        try:
            child.wait_for(worker.MARK1, on_start)
            step1 = read_step(workdir, worker.STEP1)
            if "error" in step1:
                raise_step_error(step1, model_path)
            steps.finish()
            float_model = Path(step1["float"]).read_bytes()
            float_rt = LiteRTRuntime(float_model)
            input_shape = list(float_rt.inputs[0].shape)
            float_rt.close()
            spec = build_preprocess(opts, task, input_shape)

            steps.start(f"preprocessing calibration data {opts.calibration}", spin=False)
            calib = load_dataset(opts.calibration, spec, input_shape, label_names, "calibration")
            if label_names is None and calib.class_names is not None:
                label_names, labels_source = calib.class_names, f"class folders of {opts.calibration}"
            rng = np.random.default_rng(opts.seed)
            if opts.validation is not None:
                steps.start(f"preprocessing validation data {opts.validation}", spin=False)
                valid = load_dataset(opts.validation, spec, input_shape, label_names, "validation")
                if label_names is None and valid.class_names is not None:
                    label_names, labels_source = valid.class_names, f"class folders of {opts.validation}"
                validation_source = str(opts.validation)
            else:
                calib, valid = _hold_out(calib, rng)
                validation_source = f"held-out {int(HOLDOUT_FRACTION * 100)} % of calibration data"
            pool = calib.x
            if len(calib) > opts.calibration_samples:
                calib = calib.subset(np.sort(rng.choice(len(calib), opts.calibration_samples, replace=False)))

            np.save(workdir / "calibration.npy", calib.x)
            job2: dict[str, Any] = {
                "savedmodel": step1["savedmodel"], "calibration": str(workdir / "calibration.npy"),
                "io": opts.io, "strict": opts.strict,
            }
            if compress_mode is not None:
                steps.start(f"preprocessing training data {opts.compress.train_data}", spin=False)
                job2["train"] = compress.train_job(opts.compress, compress_mode, model_path, spec, input_shape,
                                                   label_names, workdir)
                child_steps["train"] = f"fine-tuning ({compress_mode}) in the TensorFlow child"
            (workdir / worker.JOB2).write_text(json.dumps(job2))
            steps.finish()
            child_steps["quantise"] = f"quantising to int8 with {len(calib)} calibration samples (io {opts.io})"
            child.send("go")
            child.wait_for(worker.MARK2, on_start)
            step2 = read_step(workdir, worker.STEP2)
            if "error" in step2:
                raise_step_error(step2, model_path)
            steps.finish()
            int8_model = Path(step2["int8"]).read_bytes()
            compression = compress.read_outputs(step2["train"]) if step2.get("train") else None
            if compression is not None and compression.get("teacher_float"):
                float_model = compression["teacher_float"]  # figures against the teacher
        finally:
            child.close()
    return _Converted(
        float_model=float_model, int8_model=int8_model,
        tensorflow=str(step1.get("tensorflow", "unknown")),
        int8_only_error=step2.get("int8_only_error"), fallback=bool(step2.get("fallback")),
        spec=spec, calibration=calib, validation=valid, validation_source=validation_source,
        label_names=label_names, labels_source=labels_source, calibration_pool=pool,
        compression=compression,
    )


def _check_ops(conv: _Converted, opts: ConvertOptions) -> list[ops_mod.OpInfo]:
    """Read the int8 flatbuffer back; report (or, under --strict, refuse) float ops."""
    op_list = ops_mod.list_ops(conv.int8_model, float_io=opts.io == "float32")
    left_in_float = ops_mod.float_ops(op_list)
    if not left_in_float:
        return op_list
    coverage = ops_mod.int8_coverage(op_list)
    culprits = ops_mod.float_compute_ops(op_list) or left_in_float
    message = (f"ops left in float: {', '.join(culprits)} (int8 op coverage {coverage:.0%}; "
               f"float ops incl. boundary: {', '.join(left_in_float)})")
    if opts.strict:
        raise QuantizationError(
            f"{message}; these ops have no int8 kernel and --strict forbids float fallback: "
            "run without --strict to keep them in float (or replace them in the model)")
    hint = (conv.int8_only_error or "").strip()
    _note(f"warning: {message}" + (f"; int8-only conversion said: {hint}" if hint else ""))
    return op_list


def _validate(conv: _Converted, opts: ConvertOptions, fmt: ModelFormat, task: Task,
              op_list: list[ops_mod.OpInfo], steps: Steps
              ) -> tuple[dict[str, Any], validate.Comparison, list[str]]:
    """Compare float and int8 on the validation data; returns (report, outputs, labels)."""
    valid = conv.validation
    steps.start(f"validating float vs int8 on {len(valid)} samples ({conv.validation_source})", spin=False)
    comp = validate.compare(conv.float_model, conv.int8_model, valid.x)
    int8_rt = LiteRTRuntime(conv.int8_model)
    in_spec, out_spec = int8_rt.inputs[0], int8_rt.outputs[0]
    int8_rt.close()
    n_outputs = int(np.prod(out_spec.shape[1:]))
    labels = _resolve_labels(conv.label_names, n_outputs, task)
    classify = task in ("classify", "audio_classify")
    labels_source = conv.labels_source
    if classify and conv.label_names is None:
        labels_source = "class indices (no --labels, no class folders)"
        _note(f"no label names (no --labels, no class folders): the bundle's labels are the class indices "
              f"0..{n_outputs - 1}; pass --labels FILE to name them")
    acc_f = acc_q = None
    if classify and valid.y is not None:
        acc_f = validate.accuracy(comp.float_outputs, valid.y)
        acc_q = validate.accuracy(comp.int8_outputs, valid.y)
    elif classify:
        _note(f"no labels in the validation data ({conv.validation_source}: no class folders, no 'y' array): "
              "accuracy not measured, only float-vs-int8 agreement")
    steps.start("measuring latency (float and int8, 1 and 2 threads)")
    latency = {"float": validate.measure_latency(conv.float_model, valid.x),
               "int8": validate.measure_latency(conv.int8_model, valid.x)}
    report: dict[str, Any] = {
        "model": str(opts.model),
        "model_format": fmt,
        "task": task,
        "size_float_bytes": len(conv.float_model),
        "size_int8_bytes": len(conv.int8_model),
        "size_ratio": round(len(conv.int8_model) / len(conv.float_model), 4),
        "top1_agreement": round(validate.top1_agreement(comp.float_outputs, comp.int8_outputs), 6)
        if classify else None,
        "accuracy_float": None if acc_f is None else round(acc_f, 6),
        "accuracy_int8": None if acc_q is None else round(acc_q, 6),
        "accuracy_drop_pp": None if acc_f is None or acc_q is None else round(100.0 * (acc_f - acc_q), 4),
        "max_accuracy_drop_pp": opts.max_accuracy_drop,
        "output_cosine": round(validate.mean_cosine(comp.float_outputs, comp.int8_outputs), 6),
        "int8_op_coverage": round(ops_mod.int8_coverage(op_list), 6),
        "float_ops": ops_mod.float_ops(op_list),
        "float_fallback": conv.fallback,
        "ops": [op.as_dict() for op in op_list],
        "io": {"requested": opts.io, "input": _io_dict(in_spec), "output": _io_dict(out_spec)},
        "latency_ms": latency,
        "calibration_samples": len(conv.calibration),
        "validation_samples": len(valid),
        "validation_source": conv.validation_source,
        "validation_labelled": valid.y is not None,
        "labels_source": labels_source if classify else None,
        "preprocess": conv.spec.model_dump(mode="json"),
        "versions": {"edge_infer": edge_agent.__version__, "tensorflow": conv.tensorflow,
                     "litert": backend_version(), "python": sys.version.split()[0]},
        "created_utc": _utc_now(),
        "duration_s": 0.0,
    }
    return report, comp, labels


def _build_manifest(conv: _Converted, opts: ConvertOptions, task: Task, labels: list[str],
                    comp: validate.Comparison, report: dict[str, Any]) -> Manifest:
    """Manifest with tensor specs from the interpreter, golden vectors and headline figures."""
    in_spec, outputs, golden = golden_vectors(conv.int8_model, comp)
    # Generous: the budget must hold on a Pi-class board, not only on this host.
    budget = opts.latency_budget_ms if opts.latency_budget_ms is not None else round(
        20.0 * report["latency_ms"]["int8"]["1"] + 5.0, 2)
    layout = "NTF" if task == "audio_classify" else "NHWC"
    return Manifest(
        name=opts.name or default_model_name(Path(opts.model)),
        version=opts.version,
        task=task,
        created_utc=report["created_utc"],
        model=ModelInfo(sha256="0" * 64, size_bytes=0),  # filled in by write_bundle
        inputs=[in_spec.model_copy(update={"layout": layout})],
        outputs=outputs,
        preprocess=conv.spec,
        output=_output_spec(task, labels, comp.float_outputs, opts),
        golden=golden,
        latency_budget_ms=budget,
        converter={"edge_infer": edge_agent.__version__, "tensorflow": conv.tensorflow,
                   "litert": report["versions"]["litert"], "io": opts.io},
        validation={k: report[k] for k in (
            "size_ratio", "top1_agreement", "accuracy_float", "accuracy_int8", "output_cosine",
            "int8_op_coverage", "calibration_samples", "validation_samples")},
    )


def _hold_out(data: Dataset, rng: np.random.Generator) -> tuple[Dataset, Dataset]:
    if len(data) < 10:
        _note("warning: too few samples to hold some out; validating on the calibration data")
        return data, data
    order = rng.permutation(len(data))
    n_valid = max(1, round(len(data) * HOLDOUT_FRACTION))
    return data.subset(np.sort(order[n_valid:])), data.subset(np.sort(order[:n_valid]))


def _resolve_labels(names: Sequence[str] | None, n_outputs: int, task: Task) -> list[str]:
    if task == "detect":
        return list(names or [])
    if names is None:
        return [str(i) for i in range(n_outputs)]
    if len(names) != n_outputs:
        raise ConvertError(f"{len(names)} labels given but the model has {n_outputs} outputs; "
                           "fix --labels or the class folders")
    return list(names)


def _output_spec(task: Task, labels: list[str], float_outputs: np.ndarray, opts: ConvertOptions
                 ) -> OutputSpec:
    if task == "detect":
        return OutputSpec(labels=labels, detection_format=opts.detection_format, score_threshold=0.5,
                          activation=opts.activation or "none")
    activation = opts.activation or ("none" if validate.outputs_are_probabilities(float_outputs) else "softmax")
    background = [label for label in labels if label.startswith("_")] if task == "audio_classify" else []
    return OutputSpec(labels=labels, activation=activation, background_labels=background,
                      top_k=min(3, max(1, len(labels))))


def _io_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": spec.shape, "dtype": spec.dtype, "scale": spec.scale,
            "zero_point": spec.zero_point}


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


