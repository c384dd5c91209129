"""Knowledge distillation (Keras 3 native): a small student learns from the teacher's outputs.

``run_distill(teacher_path, student_path | None, width, train_npz, epochs, logdir, out_dir)``:
the student is either a model file, or the teacher's own architecture with every Conv/Dense
layer but the output layer narrowed to ``width`` × its filters/units (plain Sequential or
functional models; rebuilt from the config, fresh weights). Loss:
``0.3·CE(label) + 0.7·T²·KL(teacher_T ‖ student_T)`` with T = 4. Exports the student
(SavedModel) and the teacher's float TFLite model for the report.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from converter.train import common

LEARNING_RATE = 2e-3
TEMPERATURE = 4.0
ALPHA = 0.3
_WIDTH_KEYS = ("filters", "units")


def narrow_config(config: dict[str, Any], width: float) -> dict[str, Any]:
    """The model config with every filters/units but the last one's scaled by ``width``."""
    out = copy.deepcopy(config)
    layers = out.get("layers")
    if not isinstance(layers, list):
        raise common.TrainError("--student-width needs a plain Sequential or functional model")
    sized = [entry for entry in layers if any(k in entry.get("config", {}) for k in _WIDTH_KEYS)]
    if len(sized) < 2:
        raise common.TrainError("--student-width: the teacher has no hidden Conv/Dense layer to narrow")
    for entry in layers:
        entry.pop("build_config", None)  # recorded input shapes of the wide layers
    for entry in sized[:-1]:
        cfg = entry["config"]
        for key in _WIDTH_KEYS:
            if key in cfg and isinstance(cfg[key], int):
                cfg[key] = max(1, round(cfg[key] * width))
    return out


def width_student(teacher: Any, width: float) -> Any:
    import keras

    config = narrow_config(teacher.get_config(), width)
    try:
        student = type(teacher).from_config(config)
    except Exception as exc:
        raise common.TrainError(f"--student-width cannot rebuild the teacher's architecture: "
                                f"{str(exc).strip()[:200]}") from exc
    if not isinstance(student, keras.Model):
        raise common.TrainError("--student-width needs a plain Sequential or functional model")
    return student


def run_distill(teacher_path: str, student_path: str | None, width: float | None, train_npz: str,
                epochs: int, logdir: str | None, out_dir: str) -> dict[str, Any]:
    """Train the student on the teacher's soft outputs; export it to ``out_dir`` (SavedModel)."""
    import keras

    teacher = common.load_keras(teacher_path)
    x, y = common.load_train(train_npz)
    reference = common.predict(teacher, x)
    n_classes = reference.shape[-1]
    soft = reference if common.outputs_are_probabilities(reference) else _softmax(reference)
    keras.utils.set_random_seed(0)
    if student_path is not None:
        student = common.load_keras(student_path)
    else:
        assert width is not None
        student = width_student(teacher, width)
    probe = common.predict(student, x[:8])
    if probe.shape[-1] != n_classes:
        raise common.TrainError(f"the student has {probe.shape[-1]} outputs, the teacher {n_classes}")
    student.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                    loss=common.make_loss(n_classes, not common.outputs_are_probabilities(probe),
                                          alpha=ALPHA, temperature=TEMPERATURE),
                    metrics=[common.make_accuracy(n_classes)])
    summaries = common.summary_callback(logdir)
    student.fit(x, common.packed_targets(y, soft, n_classes), epochs=epochs, batch_size=32, verbose=0,
                shuffle=True, callbacks=[summaries])
    common.export(student, out_dir)
    return {"mode": "distill", "savedmodel": out_dir, "epochs": epochs, "history": summaries.history,
            "params": common.count_params(student), "teacher_params": common.count_params(teacher),
            "width": width, "student": student_path}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), np.float32)
