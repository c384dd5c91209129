"""The worker's compression step: fine-tune, then hand a SavedModel to the int8 conversion.

Called by :mod:`converter.worker` inside the TensorFlow child with the ``train`` part of
``job2.json`` (written by :mod:`converter.compress`)::

    {"mode": "qat" | "prune" | "distill", "model": KERAS_FILE, "data": TRAIN_NPZ, "epochs": N,
     "logdir": DIR | null, "sparsity": S, "block": B, "teacher": KERAS_FILE, "width": W | null}

Returns the training summary; ``savedmodel`` is the model to quantise. Side files in the workdir:
``ptq.tflite`` (plain PTQ of the original model, for the side-by-side figures) for QAT and
pruning; ``equalized_ptq.tflite`` (PTQ after cross-layer equalisation, no fine-tuning) for QAT;
``teacher_float.tflite`` and ``student_float.tflite`` for distillation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter.train import common


def _float_tflite(saved: str) -> bytes:
    import tensorflow as tf

    result: bytes = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
    return result


def run(train: dict[str, Any], original_saved: str, workdir: Path,
        int8_convert: Callable[[str], bytes]) -> dict[str, Any]:
    info = _run(train, original_saved, workdir, int8_convert)
    info["samples"] = train.get("samples")
    return info


def _run(train: dict[str, Any], original_saved: str, workdir: Path,
         int8_convert: Callable[[str], bytes]) -> dict[str, Any]:
    mode, epochs, logdir = train["mode"], int(train["epochs"]), train.get("logdir")
    out_dir = str(workdir / f"{mode}_savedmodel")
    if mode == "qat":
        from converter.train import qat

        info = qat.run_qat(train["model"], train["data"], epochs, logdir, out_dir)
        if info.get("equalized_savedmodel"):  # the equalised model without fine-tuning, for the report
            (workdir / "equalized_ptq.tflite").write_bytes(int8_convert(info["equalized_savedmodel"]))
            info["equalized_ptq"] = str(workdir / "equalized_ptq.tflite")
    elif mode == "prune":
        from converter.train import prune

        info = prune.run_prune(train["model"], train["data"], float(train["sparsity"]), epochs, logdir, out_dir,
                               block=int(train.get("block") or 1))
    elif mode == "distill":
        from converter.train import distill

        student = None if train.get("width") else train["model"]
        width = float(train["width"]) if train.get("width") else None
        info = distill.run_distill(train["teacher"], student, width, train["data"], epochs, logdir, out_dir)
        teacher_saved = str(workdir / "teacher_savedmodel")
        common.export(common.load_keras(train["teacher"]), teacher_saved)
        (workdir / "teacher_float.tflite").write_bytes(_float_tflite(teacher_saved))
        (workdir / "student_float.tflite").write_bytes(_float_tflite(out_dir))
        info.update(teacher_float=str(workdir / "teacher_float.tflite"),
                    student_float=str(workdir / "student_float.tflite"))
        return info
    else:
        raise common.TrainError(f"unknown compression mode {mode!r}")
    (workdir / "ptq.tflite").write_bytes(int8_convert(original_saved))
    info["ptq"] = str(workdir / "ptq.tflite")
    return info
