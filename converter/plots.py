"""``--plots DIR``: the confusion matrices and a float-vs-int8 score scatter as PNG files.

Drawn with OpenCV (already a dependency of the agent) rather than matplotlib, which
is not installed and would be a heavy dependency for two pictures.

* ``confusion_matrix.png``: float and int8 side by side, rows = true class,
  columns = predicted, each cell shaded by its share of the row, with its count;
* ``scores_scatter.png``: every output score of every validation sample, float (x)
  against int8 (y), with the diagonal; points off the diagonal are quantisation error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converter.errors import ConvertError
from edge_agent.util.fs import atomic_write

CONFUSION_PNG = "confusion_matrix.png"
SCATTER_PNG = "scores_scatter.png"
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK = (0, 0, 0)
_GREY = (160, 160, 160)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4,
          colour: tuple[int, int, int] = _BLACK) -> None:
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _matrix_panel(matrix: np.ndarray, labels: Sequence[str], title: str, cell: int) -> np.ndarray:
    k = len(labels)
    margin = 60
    img = np.full((margin + k * cell + 30, margin + k * cell + 10, 3), 255, np.uint8)
    rows = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    share = np.divide(matrix, np.maximum(rows, 1.0))
    _text(img, title, (margin, 18), 0.5)
    for i in range(k):
        _text(img, labels[i][:6], (4, margin + i * cell + cell // 2 + 4))
        _text(img, labels[i][:6], (margin + i * cell + 2, margin - 8))
        for j in range(k):
            x0, y0 = margin + j * cell, margin + i * cell
            shade = int(255 - 200 * share[i, j])
            colour = (255, shade, shade) if i == j else (shade, shade, 255)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), _GREY, 1)
            if cell >= 22 and matrix[i, j]:
                _text(img, str(int(matrix[i, j])), (x0 + 3, y0 + cell // 2 + 4), 0.35)
    _text(img, "rows: true, columns: predicted", (margin, img.shape[0] - 10), 0.35)
    return img


def confusion_png(float_cm: np.ndarray, int8_cm: np.ndarray, labels: Sequence[str]) -> bytes:
    cell = max(8, min(40, 600 // max(1, len(labels))))
    left = _matrix_panel(np.asarray(float_cm), labels, "float", cell)
    right = _matrix_panel(np.asarray(int8_cm), labels, "int8", cell)
    return _encode(np.hstack([left, right]))


def scatter_png(float_scores: np.ndarray, int8_scores: np.ndarray, size: int = 480) -> bytes:
    a = np.asarray(float_scores, np.float64).ravel()
    b = np.asarray(int8_scores, np.float64).ravel()
    lo = float(min(a.min(initial=0.0), b.min(initial=0.0)))
    hi = float(max(a.max(initial=1.0), b.max(initial=1.0)))
    span = hi - lo or 1.0
    margin = 50
    img = np.full((size + 2 * margin, size + 2 * margin, 3), 255, np.uint8)

    def xy(u: float, v: float) -> tuple[int, int]:
        return (margin + round((u - lo) / span * size), margin + size - round((v - lo) / span * size))

    cv2.rectangle(img, (margin, margin), (margin + size, margin + size), _GREY, 1)
    cv2.line(img, xy(lo, lo), xy(hi, hi), _GREY, 1, cv2.LINE_AA)
    step = max(1, len(a) // 20000)  # bound the drawing work on big validation sets
    for u, v in zip(a[::step], b[::step], strict=True):
        cv2.circle(img, xy(float(u), float(v)), 2, (200, 90, 30), -1, cv2.LINE_AA)
    _text(img, "float score", (margin + size // 2 - 40, margin + size + 35), 0.45)
    _text(img, "int8 score", (5, margin - 15), 0.45)
    _text(img, f"{lo:.3g}", (margin - 5, margin + size + 15), 0.35)
    _text(img, f"{hi:.3g}", (margin + size - 20, margin + size + 15), 0.35)
    _text(img, f"{hi:.3g}", (5, margin + 5), 0.35)
    return _encode(img)


def _encode(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise ConvertError("cannot encode a plot as PNG")
    return bytes(data.tobytes())


def write_plots(folder: Path, confusion: dict[str, Any] | None, float_scores: np.ndarray,
                int8_scores: np.ndarray) -> list[Path]:
    """Write the PNG files into ``folder`` (created if missing); returns their paths.

    ``confusion`` is the report's ``confusion_matrix`` entry; without it (unlabelled
    validation data) only the scatter is written.
    """
    folder = Path(folder)
    paths: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if confusion is not None:
            paths.append(folder / CONFUSION_PNG)
            atomic_write(paths[-1], confusion_png(np.asarray(confusion["float"]), np.asarray(confusion["int8"]),
                                                  [str(label) for label in confusion["labels"]]))
        paths.append(folder / SCATTER_PNG)
        atomic_write(paths[-1], scatter_png(float_scores, int8_scores))
    except OSError as exc:
        raise ConvertError(f"cannot write plots to {folder}: {exc.strerror or exc}") from exc
    return paths
