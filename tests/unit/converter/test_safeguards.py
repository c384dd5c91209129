"""Near-chance detection, confusion matrices and per-class figures (converter/safeguards.py)."""

from __future__ import annotations

import numpy as np
import pytest

from converter.report import format_report
from converter.safeguards import (
    chance_limit,
    class_figures,
    confusion_matrix,
    format_class_figures,
    low_accuracy_message,
    near_chance,
    per_class_accuracy,
)


def test_confusion_matrix_rows_true_columns_predicted() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert per_class_accuracy(cm) == [0.5, 1.0, pytest.approx(2 / 3)]


def test_confusion_matrix_skips_out_of_range_and_empty_class() -> None:
    cm = confusion_matrix(np.array([0, 5, -1, 1]), np.array([0, 0, 0, 7]), 3)
    assert cm.sum() == 1 and cm[0, 0] == 1
    assert per_class_accuracy(cm) == [1.0, None, None]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]), 2)


@pytest.mark.parametrize(("accuracy", "classes", "samples", "expected"), [
    (0.0833, 10, 360, True),    # the case: chance on 10 classes
    (0.15, 10, 360, True),      # exactly 1.5 x chance
    (0.16, 10, 360, False),
    (0.98, 10, 360, False),
    (0.40, 3, 100, True),       # 3 classes: limit 50 %
    (0.55, 3, 100, False),
    (0.55, 2, 100, False),      # binary models are left alone: 75 % can be a real model
    (0.05, 10, 19, False),      # too few samples to judge
    (None, 10, 360, False),     # no labels, no accuracy
])
def test_near_chance(accuracy: float | None, classes: int, samples: int, expected: bool) -> None:
    assert near_chance(accuracy, classes, samples) is expected


def test_chance_limit() -> None:
    assert chance_limit(10) == pytest.approx(0.15)
    assert chance_limit(100) == pytest.approx(0.015)


def test_low_accuracy_message_hints_at_double_normalisation() -> None:
    text = low_accuracy_message(0.0833, 10, 360, [0.0], [255.0])
    assert "\n" not in text
    assert text.startswith("float accuracy 8.33% on 360 labelled validation samples is near chance")
    assert "already rescale" in text and "--std 1" in text and "--allow-low-accuracy" in text
    raw = low_accuracy_message(0.1, 10, 360, [0.0], [1.0])
    assert "--std 255" in raw and "already rescale" not in raw


def test_class_figures_and_printed_report() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    float_out = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    int8_out = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    figures = class_figures(float_out, int8_out, y, ["cat", "dog", "bird"])
    assert figures["confusion_matrix"]["float"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert figures["confusion_matrix"]["int8"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert [row["accuracy_int8"] for row in figures["per_class"]] == [0.5, 1.0, 0.5]
    assert [row["support"] for row in figures["per_class"]] == [2, 2, 2]
    text = format_class_figures(figures)
    assert "confusion matrix float" in text and "confusion matrix int8" in text
    assert "cat" in text and " 50.0" in text
    assert "confusion matrix int8" in format_report({"model": "m", **figures})
    assert format_class_figures({}) == ""


def test_many_classes_print_no_matrix() -> None:
    k = 25
    figures = class_figures(np.eye(k), np.eye(k), np.arange(k), [f"c{i}" for i in range(k)])
    text = format_class_figures(figures)
    assert "see confusion_matrix in the report JSON" in text and "confusion matrix float" not in text
