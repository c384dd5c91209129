"""``--plots``: PNG files drawn with OpenCV (converter/plots.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from converter.plots import CONFUSION_PNG, SCATTER_PNG, write_plots
from converter.safeguards import class_figures


def test_writes_both_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 50)
    float_out = rng.random((50, 4)).astype(np.float32)
    int8_out = float_out + rng.normal(0, 0.01, float_out.shape)
    figures = class_figures(float_out, int8_out, y, ["a", "b", "c", "d"])
    paths = write_plots(tmp_path / "plots", figures["confusion_matrix"], float_out, int8_out)
    assert [p.name for p in paths] == [CONFUSION_PNG, SCATTER_PNG]
    confusion = cv2.imread(str(paths[0]))
    scatter = cv2.imread(str(paths[1]))
    assert confusion is not None and confusion.shape[1] > confusion.shape[0]  # two panels side by side
    assert scatter is not None and scatter.shape[0] == scatter.shape[1]
    assert (confusion < 250).any() and (scatter < 250).any()  # something was drawn
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [CONFUSION_PNG, SCATTER_PNG]


def test_unlabelled_data_gives_the_scatter_only(tmp_path: Path) -> None:
    scores = np.linspace(0, 1, 30).reshape(10, 3)
    paths = write_plots(tmp_path, None, scores, scores)
    assert [p.name for p in paths] == [SCATTER_PNG]
