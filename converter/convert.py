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

import datetime as dt
import errno
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

import edge_agent
from converter import ops as ops_mod
from converter import validate, worker
from converter.data import Dataset, data_kind, load_dataset
from converter.errors import AccuracyError, ConvertError, DataError, ModelLoadError, QuantizationError
from converter.report import format_report, report_json
from edge_agent.errors import BundleError
from edge_agent.model.bundle import LABELS, REPORT, read_bundle, write_bundle
from edge_agent.model.keys import load_private_key
from edge_agent.model.manifest import (
    AudioPreprocess,
    GoldenVector,
    ImagePreprocess,
    Manifest,
    ModelInfo,
    OutputSpec,
    TensorSpec,
)
from edge_agent.model.smoke import run_smoke_test
from edge_agent.preprocess import audio_feature_shape, dequantize
from edge_agent.runtimes.litert import LiteRTRuntime, backend_version
from edge_agent.schema import ValidationError
from edge_agent.util.fs import atomic_write, fsync_dir

log = logging.getLogger(__name__)

ModelFormat = Literal["savedmodel", "keras", "h5"]
IoType = Literal["int8", "uint8", "float32"]
Task = Literal["classify", "detect", "audio_classify"]
HOLDOUT_FRACTION = 0.2
WORKER_TIMEOUT_S = 1800.0


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


def check_output_writable(output: Path) -> None:
    """Fail early (before minutes of work) if the bundle cannot be written there."""
    output = Path(output)
    if output.is_dir():
        raise ConvertError(f"output {output} is a directory; give a bundle file name such as "
                           f"{output / 'model.bundle'}")
    parent = output.parent if str(output.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConvertError(f"cannot write bundle {output}: {parent} is not a directory")
    if not parent.is_dir():
        raise ConvertError(f"cannot write bundle {output}: directory {parent} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise ConvertError(f"cannot write bundle {output}: {_create_failure(parent, exc)}") from exc
    os.close(fd)
    os.unlink(probe)


def _create_failure(directory: Path, exc: OSError) -> str:
    """Why no file can be created in an existing ``directory``, in the user's words.

    The bare strerror misleads: /proc answers ENOENT ("No such file or directory")
    for a directory that plainly exists.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"directory {directory} is not writable ({reason}); choose another --output"
    if exc.errno == errno.EROFS:
        return f"directory {directory} is on a read-only filesystem; choose another --output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left in directory {directory} ({reason})"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.EOPNOTSUPP):
        return (f"cannot create files in directory {directory} (it exists but refuses new files, "
                f"as /proc and /sys do: {reason}); choose another --output")
    return f"cannot create files in directory {directory}: {reason}"


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


# --------------------------------------------------------------------------- child process


class _Worker:
    """The TensorFlow child process (see :mod:`converter.worker`)."""

    def __init__(self, workdir: Path, timeout_s: float = WORKER_TIMEOUT_S) -> None:
        self.workdir = workdir
        self.timed_out = False
        self._log_path = workdir / "worker.log"
        self._log: IO[bytes] = self._log_path.open("wb")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "converter.worker", str(workdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env=env,
        )
        # A hung converter must not hang the user's shell or CI forever.
        self._timer = threading.Timer(timeout_s, self._kill_on_timeout)
        self._timer.daemon = True
        self._timer.start()

    def _kill_on_timeout(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def wait_for(self, mark: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == mark:
                return
        code = self.proc.wait()
        if self.timed_out:
            raise ConvertError(f"the TensorFlow conversion took longer than {WORKER_TIMEOUT_S:.0f} s and "
                               "was stopped; try fewer --calibration-samples")
        raise ConvertError(f"the TensorFlow conversion process died (exit code {code}); "
                           f"last log lines: {self.log_tail()}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        useful = [t for t in text if t.strip() and "cuda" not in t.lower()]
        return " | ".join(useful[-lines:]) or "(no log)"

    def close(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def _read_step(workdir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / name).read_text())
    return data


def _raise_step_error(step: dict[str, Any], model: Path) -> None:
    kind, message, failed = step.get("kind"), str(step.get("error")), list(step.get("ops", []))
    if kind == "model":
        raise ModelLoadError(message if str(model) in message else f"{model}: {message}")
    if kind == "unsupported":
        raise QuantizationError(f"{model}: {message}; replace them with TFLite builtin ops in the "
                                "model (see the TFLite op compatibility guide) and convert again")
    if kind == "quantize":
        names = ", ".join(failed) if failed else "see the message"
        raise QuantizationError(
            f"ops cannot be fully quantised to int8 ({names}): {message}; to keep them in float, "
            "run without --strict (int8 with float fallback) or with --io float32"
        )
    if kind == "setup":
        raise ConvertError(message)
    raise ConvertError(f"conversion failed: {message}")


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
    """What the child process produced, plus the data preprocessed for it."""

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
    task: Task = opts.task or ("audio_classify" if calib_kind == "audio" else "classify")

    conv = _run_conversion(opts, fmt, task, label_names)
    op_list = _check_ops(conv, opts)
    report, comp, labels = _validate(conv, opts, fmt, task, op_list)
    if report["accuracy_drop_pp"] is not None and report["accuracy_drop_pp"] > opts.max_accuracy_drop:
        report["duration_s"] = round(time.perf_counter() - started, 1)
        _write_report_copy(opts.report, report)
        raise AccuracyError(
            f"int8 accuracy {report['accuracy_int8']:.2%} is {report['accuracy_drop_pp']:.2f} pp below "
            f"float {report['accuracy_float']:.2%}, more than --max-accuracy-drop "
            f"{opts.max_accuracy_drop:g}; calibrate with data preprocessed like the real input "
            "(and more of it), or raise the limit", report)

    manifest = _build_manifest(conv, opts, task, labels, comp, report)
    report["duration_s"] = round(time.perf_counter() - started, 1)
    files = {LABELS: ("\n".join(labels) + "\n").encode(), REPORT: report_json(report)}
    written, smoke = write_verified(Path(opts.output), manifest, conv.int8_model, files, sign_key)
    _write_report_copy(opts.report, report)
    if opts.save_float is not None:
        try:
            atomic_write(Path(opts.save_float), conv.float_model)
        except OSError as exc:
            raise ConvertError(f"cannot write {opts.save_float}: {exc.strerror or exc}") from exc
    return ConvertResult(output=Path(opts.output), manifest=written, report=report, smoke_summary=smoke)


def _run_conversion(opts: ConvertOptions, fmt: ModelFormat, task: Task, label_names: list[str] | None
                    ) -> _Converted:
    """Float model (child) -> input shape -> preprocessed data (here) -> int8 model (child)."""
    model_path = Path(opts.model)
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        workdir = Path(tmp)
        (workdir / worker.JOB1).write_text(json.dumps({"model": str(model_path.resolve()), "format": fmt}))
        _note(f"loading {fmt} model {model_path} and converting to float TFLite (child process)")
        child = _Worker(workdir)
        try:
            child.wait_for(worker.MARK1)
            step1 = _read_step(workdir, worker.STEP1)
            if "error" in step1:
                _raise_step_error(step1, model_path)
            float_model = Path(step1["float"]).read_bytes()
            float_rt = LiteRTRuntime(float_model)
            input_shape = list(float_rt.inputs[0].shape)
            float_rt.close()
            spec = build_preprocess(opts, task, input_shape)

            _note(f"preprocessing calibration data {opts.calibration}")
            calib = load_dataset(opts.calibration, spec, input_shape, label_names, "calibration")
            label_names = label_names or calib.class_names
            rng = np.random.default_rng(opts.seed)
            if opts.validation is not None:
                _note(f"preprocessing validation data {opts.validation}")
                valid = load_dataset(opts.validation, spec, input_shape, label_names, "validation")
                label_names = label_names or valid.class_names
                validation_source = str(opts.validation)
            else:
                calib, valid = _hold_out(calib, rng)
                validation_source = f"held-out {int(HOLDOUT_FRACTION * 100)} % of calibration data"
            if len(calib) > opts.calibration_samples:
                calib = calib.subset(np.sort(rng.choice(len(calib), opts.calibration_samples, replace=False)))

            np.save(workdir / "calibration.npy", calib.x)
            (workdir / worker.JOB2).write_text(json.dumps({
                "savedmodel": step1["savedmodel"], "calibration": str(workdir / "calibration.npy"),
                "io": opts.io, "strict": opts.strict,
            }))
            _note(f"quantising to full int8 with {len(calib)} calibration samples (io {opts.io})")
            child.send("go")
            child.wait_for(worker.MARK2)
            step2 = _read_step(workdir, worker.STEP2)
            if "error" in step2:
                _raise_step_error(step2, model_path)
            int8_model = Path(step2["int8"]).read_bytes()
        finally:
            child.close()
    return _Converted(
        float_model=float_model, int8_model=int8_model,
        tensorflow=str(step1.get("tensorflow", "unknown")),
        int8_only_error=step2.get("int8_only_error"), fallback=bool(step2.get("fallback")),
        spec=spec, calibration=calib, validation=valid, validation_source=validation_source,
        label_names=label_names,
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
              op_list: list[ops_mod.OpInfo]) -> tuple[dict[str, Any], validate.Comparison, list[str]]:
    """Compare float and int8 on the validation data; returns (report, outputs, labels)."""
    valid = conv.validation
    _note(f"validating float vs int8 on {len(valid)} samples ({conv.validation_source})")
    comp = validate.compare(conv.float_model, conv.int8_model, valid.x)
    int8_rt = LiteRTRuntime(conv.int8_model)
    in_spec, out_spec = int8_rt.inputs[0], int8_rt.outputs[0]
    int8_rt.close()
    labels = _resolve_labels(conv.label_names, int(np.prod(out_spec.shape[1:])), task)
    classify = task in ("classify", "audio_classify")
    acc_f = acc_q = None
    if classify and valid.y is not None:
        acc_f = validate.accuracy(comp.float_outputs, valid.y)
        acc_q = validate.accuracy(comp.int8_outputs, valid.y)
    _note("measuring latency (float and int8, 1 and 2 threads)")
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
    int8_rt = LiteRTRuntime(conv.int8_model)
    try:
        in_spec, outputs = int8_rt.inputs[0], list(int8_rt.outputs)
        out_spec = outputs[0]
        golden_idx = validate.pick_golden(comp, out_spec.scale)
        # The comparison keeps output 0 only; outputs 1..n of a detector come from one more run.
        more = [int8_rt.infer(comp.int8_inputs[i][None])[1:] for i in golden_idx]
    finally:
        int8_rt.close()
    atol = golden_tolerance(out_spec, comp.int8_outputs[golden_idx])
    more_atol = [golden_tolerance(spec, np.stack([dequantize(m[k], spec) for m in more]))
                 for k, spec in enumerate(outputs[1:])]
    golden = [
        GoldenVector(
            input_b64=GoldenVector.encode(comp.int8_inputs[i][None]),
            expected_b64=GoldenVector.encode(comp.int8_raw[i][None]),
            expected_top1=int(np.argmax(comp.int8_outputs[i].reshape(-1))),
            atol=atol,
            more_expected_b64=[GoldenVector.encode(array) for array in extra],
            more_atol=more_atol,
        )
        for i, extra in zip(golden_idx, more, strict=True)
    ]
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


def golden_tolerance(spec: TensorSpec, expected: np.ndarray) -> float:
    """Smoke-test tolerance of one output, given its dequantised expected values.

    A quantised output gets three quantisation steps: other CPUs' int8 kernels
    may round differently by a step or two. A float output gets 1e-3 plus 1 %
    of its largest magnitude (float kernels differ in summation order). An
    integer output without a scale (a count, class ids) must match exactly.
    """
    if spec.scale > 0:
        return 3.0 * spec.scale
    if np.dtype(spec.dtype).kind in "iu":
        return 0.5
    return 1e-3 + 0.01 * (float(np.max(np.abs(expected))) if expected.size else 0.0)


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


def _write_report_copy(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        atomic_write(Path(path), report_json(report))
    except OSError as exc:
        raise ConvertError(f"cannot write report {path}: {exc.strerror or exc}") from exc


def write_verified(output: Path, manifest: Manifest, model: bytes, files: dict[str, bytes],
                    sign_key: Any) -> tuple[Manifest, str]:
    """Write next to ``output``, read back, smoke-test, then rename into place."""
    parent = output.parent if str(output.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_bundle(tmp, manifest, model, files, sign_key)
        bundle = read_bundle(tmp, sign_key.public_key() if sign_key is not None else None)
        runtime = LiteRTRuntime(bundle.model_bytes)
        try:
            smoke = run_smoke_test(bundle.manifest, runtime)
        finally:
            runtime.close()
        if not smoke.passed:
            raise ConvertError(f"the written bundle fails its own smoke test: {smoke.summary()}")
        try:
            os.replace(tmp, output)
        except OSError as exc:
            raise ConvertError(f"cannot write bundle {output}: {exc.strerror or exc}") from exc
        fsync_dir(parent)
        return bundle.manifest, smoke.summary()
    except BundleError as exc:
        raise ConvertError(str(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def print_report(report: dict[str, Any], stream: IO[str] | None = None) -> None:
    print(format_report(report), file=stream or sys.stdout, flush=True)
