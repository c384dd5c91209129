"""Checks that stop a broken conversion, and the per-class figures of the report.

* **Near-chance float accuracy.** On labelled validation data with at least
  :data:`MIN_CLASSES` classes and :data:`MIN_SAMPLES` samples, a float accuracy
  at or below ``NEAR_CHANCE_FACTOR / classes`` (1.5 x chance: 15 % for 10
  classes) means the model never saw its inputs the way it was trained — almost
  always preprocessing given twice (a model with its own ``Rescaling`` layer
  converted with ``--std 255``) or not at all. Binary models are left out: 75 %
  can be a real, weak model.
* **Per-class figures.** Confusion matrices (rows: true class, columns:
  predicted) and per-class accuracy for the float and the int8 model.

No TensorFlow here: plain numpy, unit-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converter.errors import ConvertError

NEAR_CHANCE_FACTOR = 1.5
MIN_CLASSES = 3
MIN_SAMPLES = 20
MAX_PRINTED_CLASSES = 20


class LowAccuracyError(ConvertError):
    """Float accuracy near chance on labelled data: the preprocessing does not fit the model."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def chance_limit(num_classes: int) -> float:
    """Accuracy at or below which a classifier counts as guessing."""
    return NEAR_CHANCE_FACTOR / num_classes


def near_chance(accuracy: float | None, num_classes: int, samples: int) -> bool:
    """True when ``accuracy`` (0..1) on ``samples`` labelled samples is no better than guessing."""
    if accuracy is None or num_classes < MIN_CLASSES or samples < MIN_SAMPLES:
        return False
    return accuracy <= chance_limit(num_classes) + 1e-12


def low_accuracy_message(accuracy: float, num_classes: int, samples: int, mean: Sequence[float],
                         std: Sequence[float]) -> str:
    """One line: the figure, why it is suspicious, what to try."""
    normalised = any(m != 0.0 for m in mean) or any(s != 1.0 for s in std)
    given = f"--mean {','.join(f'{m:g}' for m in mean)} --std {','.join(f'{s:g}' for s in std)}"
    if normalised:
        hint = (f"does the model already rescale its input (a Rescaling layer)? then {given} normalises "
                "it twice: try --std 1 (and --mean 0)")
    else:
        hint = ("was the model trained on normalised input? the pixels reach it as 0..255: try --std 255 "
                "or --mean 127.5 --std 127.5")
    return (f"float accuracy {accuracy:.2%} on {samples} labelled validation samples is near chance "
            f"({num_classes} classes, limit {chance_limit(num_classes):.2%}): {hint}; also check "
            "--color/--invert and the labels, or pass --allow-low-accuracy")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes`` x ``num_classes`` counts, rows = true class, columns = predicted.

    Samples whose true or predicted class is outside ``0..num_classes-1`` are not counted.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    flat = np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(matrix: np.ndarray) -> list[float | None]:
    """Recall per true class (None for a class without samples)."""
    support = matrix.sum(axis=1)
    return [None if n == 0 else float(matrix[i, i]) / float(n) for i, n in enumerate(support)]


def class_figures(float_outputs: np.ndarray, int8_outputs: np.ndarray, y: np.ndarray,
                  labels: Sequence[str]) -> dict[str, Any]:
    """``per_class`` and ``confusion_matrix`` entries of the report."""
    k = len(labels)
    pred_f = np.argmax(float_outputs.reshape(len(float_outputs), -1), axis=1)
    pred_q = np.argmax(int8_outputs.reshape(len(int8_outputs), -1), axis=1)
    cm_f, cm_q = confusion_matrix(y, pred_f, k), confusion_matrix(y, pred_q, k)
    acc_f, acc_q = per_class_accuracy(cm_f), per_class_accuracy(cm_q)
    support = cm_f.sum(axis=1)
    per_class = [
        {"label": label, "support": int(support[i]),
         "accuracy_float": None if acc_f[i] is None else round(float(acc_f[i] or 0.0), 6),
         "accuracy_int8": None if acc_q[i] is None else round(float(acc_q[i] or 0.0), 6)}
        for i, label in enumerate(labels)
    ]
    return {"per_class": per_class,
            "confusion_matrix": {"labels": list(labels), "rows": "true", "columns": "predicted",
                                 "float": cm_f.tolist(), "int8": cm_q.tolist()}}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def format_class_figures(report: dict[str, Any]) -> str:
    """Per-class accuracy and both confusion matrices as text ("" when the report has none)."""
    per_class = report.get("per_class")
    cm = report.get("confusion_matrix")
    if not per_class or not cm:
        return ""
    labels = [str(row["label"]) for row in per_class]
    width = max(5, *(len(label) for label in labels))
    lines = [f"{'class'.ljust(width)}  {'n':>5}  {'float %':>7}  {'int8 %':>7}"]
    for row in per_class:
        lines.append(f"{str(row['label']).ljust(width)}  {row['support']:>5}  "
                     f"{_pct(row['accuracy_float']):>7}  {_pct(row['accuracy_int8']):>7}")
    if len(labels) > MAX_PRINTED_CLASSES:
        lines.append(f"confusion matrices: {len(labels)} classes, see confusion_matrix in the report JSON")
        return "\n".join(lines)
    for kind in ("float", "int8"):
        matrix = cm[kind]
        cell = max(4, *(len(str(v)) + 1 for r in matrix for v in r), *(len(label[:6]) + 1 for label in labels))
        lines.append(f"confusion matrix {kind} (rows true, columns predicted)")
        lines.append(" " * width + "".join(label[:6].rjust(cell) for label in labels))
        for label, row in zip(labels, matrix, strict=True):
            lines.append(label.ljust(width) + "".join(str(v).rjust(cell) for v in row))
    return "\n".join(lines)
