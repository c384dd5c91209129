"""Child process that runs TensorFlow: model loading and TFLite conversion.

The TFLite converter leaks memory and TensorFlow is slow to import, so the
parent (:mod:`converter.convert`) never imports it. It starts
``python -m converter.worker WORKDIR`` once per conversion and talks to it with
a tiny line protocol, so TensorFlow is imported only once:

1. The child loads the model (``.keras``/``.h5`` via Keras, then
   ``model.export()`` to a SavedModel; a SavedModel folder as is), writes
   ``float.tflite`` and ``step1.json``, and prints ``@@step1`` on stdout.
2. The parent preprocesses the calibration data with the device's own code
   (it needs the model's input shape from ``float.tflite`` for that), saves
   it as ``calibration.npy``, writes ``job2.json`` and sends ``go`` on stdin
   (or ``quit``).
3. The child runs full-integer quantisation, writes ``int8.tflite`` and
   ``step2.json``, and prints ``@@step2``. With a ``train`` entry in ``job2.json``
   (``--qat``/``--prune``/distillation) it first fine-tunes (:mod:`converter.train.run`)
   and quantises the fine-tuned model; the summary goes into ``step2.json`` as ``train``.

Before each long piece of work the child prints ``@@start NAME`` (``load``,
``float``, ``quantise``) so the parent can show which step runs and for how long.
A model input with unknown dimensions beyond the batch (``(None, None, 1)``)
is refused (kind ``input_shape``) unless ``job1.json`` carries ``input_shape``;
then the model is re-exported with that fixed shape (:mod:`converter.fixed_shape`).

Errors are reported as ``{"error": ..., "kind": ...}`` in the step file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STEP1 = "step1.json"
STEP2 = "step2.json"
JOB1 = "job1.json"
JOB2 = "job2.json"
MARK1 = "@@step1"
MARK2 = "@@step2"
START = "@@start "

# Lines of converter errors that name the offending ops, e.g.
#   'tfl.sin' op is neither a custom op nor a flex op
#   Quantization not yet supported for op: 'SIN'
#   Failed to quantize op ...
_TFLITE_OP = re.compile(r"'tfl\.([A-Za-z0-9_]+)' op")
_TF_OP = re.compile(r"'tf\.([A-Za-z0-9_]+)' op")
_NAMED_OPS = (
    re.compile(r"op: '([A-Za-z0-9_]+)'"),
    re.compile(r"Failed to quantize op[^A-Za-z0-9]+([A-Za-z0-9_]+)"),
)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def failed_ops(message: str) -> list[str]:
    """Op names mentioned in a converter error message (best effort, sorted, unique).

    TFLite ops are given in their builtin spelling (``tfl.sin`` -> ``SIN``),
    TensorFlow ops as TensorFlow names them (``tf.Erf`` -> ``Erf``).
    """
    names = {name.upper() for name in _TFLITE_OP.findall(message)}
    names.update(_TF_OP.findall(message))
    for pattern in _NAMED_OPS:
        names.update(pattern.findall(message))
    return sorted(names)


def announce(step: str) -> None:
    """Tell the parent that ``step`` starts (one ``@@start STEP`` line on stdout)."""
    print(f"{START}{step}", flush=True)


def _load_model(job: dict[str, Any], workdir: Path) -> str:
    """Return a SavedModel directory for the job's model (exporting Keras files)."""
    import keras

    from converter import fixed_shape

    model_path = Path(job["model"])
    fmt = job["format"]
    wanted = job.get("input_shape")
    target = workdir / "savedmodel"
    if fmt == "savedmodel":
        try:
            return fixed_shape.fix_savedmodel(model_path, wanted, target)
        except fixed_shape.ShapeError as exc:
            raise _StepError("input_shape", str(exc)) from exc
    try:
        model = keras.models.load_model(str(model_path), compile=False)
    except Exception as exc:
        raise _StepError("model", f"cannot load {model_path} with Keras {keras.__version__}: "
                       f"{_first_line(exc)}") from exc
    try:
        signature = fixed_shape.keras_signature(model, wanted)
    except fixed_shape.ShapeError as exc:
        raise _StepError("input_shape", str(exc)) from exc
    model.export(str(target), verbose=False, input_signature=signature)
    return str(target)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:400]
    return type(exc).__name__


class _StepError(Exception):
    def __init__(self, kind: str, message: str, ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.ops = ops or []


def _step1(workdir: Path) -> dict[str, Any]:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise _StepError("setup", "TensorFlow is not installed in this environment; install the "
                         "converter extra: pip install 'edge-infer[converter]'") from exc

    job = json.loads((workdir / JOB1).read_text())
    announce("load")
    saved = _load_model(job, workdir)
    announce("float")
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        float_model = converter.convert()
    except Exception as exc:
        ops = failed_ops(str(exc))
        if ops:
            raise _StepError("unsupported", f"ops {', '.join(ops)} have no TFLite builtin kernel "
                           "(they would need TensorFlow on the device)", ops) from exc
        raise _StepError("model", f"TensorFlow cannot convert the model to TFLite: {_first_line(exc)}",
                       ops) from exc
    (workdir / "float.tflite").write_bytes(float_model)
    return {"savedmodel": saved, "float": str(workdir / "float.tflite"),
            "tensorflow": tf.__version__}


def _representative(path: Path) -> Iterator[list[Any]]:
    import numpy as np

    data = np.load(path, mmap_mode="r")
    for i in range(data.shape[0]):
        yield [np.asarray(data[i : i + 1], dtype=np.float32)]


def _int8_convert(saved: str, calibration: Path, io: str, fallback: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _representative(calibration)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if fallback:
        ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    converter.target_spec.supported_ops = ops
    io_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
    result: bytes = converter.convert()
    return result


def _step2(workdir: Path) -> dict[str, Any]:
    job = json.loads((workdir / JOB2).read_text())
    saved, io, strict = job["savedmodel"], job["io"], bool(job["strict"])
    calibration = Path(job["calibration"])
    result: dict[str, Any] = {"fallback": False, "int8_only_error": None, "failed_ops": []}
    if job.get("train"):  # compression (QAT, pruning, distillation): fine-tune first
        announce("train")
        from converter.train import common, run

        try:
            result["train"] = run.run(job["train"], saved, workdir,
                                      lambda path: _int8_convert(path, calibration, io, fallback=not strict))
        except common.TrainError as exc:
            raise _StepError("train", str(exc)) from exc
        saved = result["train"]["savedmodel"]
    announce("quantise")
    try:
        model = _int8_convert(saved, calibration, io, fallback=False)
    except Exception as exc:
        message = str(exc)
        ops = failed_ops(message)
        if strict:
            raise _StepError("quantize", _first_line(exc), ops) from exc
        result.update(fallback=True, int8_only_error=_first_line(exc), failed_ops=ops)
        try:
            model = _int8_convert(saved, calibration, io, fallback=True)
        except Exception as exc2:
            raise _StepError("quantize", _first_line(exc2), failed_ops(str(exc2)) or ops) from exc2
    (workdir / "int8.tflite").write_bytes(model)
    result["int8"] = str(workdir / "int8.tflite")
    return result


def _run_step(workdir: Path, name: str, mark: str, func: Any) -> bool:
    try:
        data = func(workdir)
        ok = True
    except _StepError as exc:
        data = {"error": str(exc), "kind": exc.kind, "ops": exc.ops}
        ok = False
    except Exception as exc:
        traceback.print_exc()
        data = {"error": _first_line(exc), "kind": "internal", "ops": failed_ops(str(exc))}
        ok = False
    _write(workdir / name, data)
    print(mark, flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m converter.worker WORKDIR", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(args[0])
    if not _run_step(workdir, STEP1, MARK1, _step1):
        return 1
    command = sys.stdin.readline().strip()
    if command != "go":
        return 0
    return 0 if _run_step(workdir, STEP2, MARK2, _step2) else 1


if __name__ == "__main__":
    sys.exit(main())
