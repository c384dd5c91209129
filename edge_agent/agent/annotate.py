"""Results drawn on a copy of their frame: detection boxes with label and score, or the top
class and its score (the live preview and the annotated ``snapshot``)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

# Bright BGR colours that read on dark and light scenes; a label keeps its colour.
PALETTE = ((0, 255, 0), (0, 200, 255), (255, 128, 0), (255, 0, 255), (0, 255, 255), (128, 128, 255),
           (255, 255, 0), (0, 128, 255))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotate(image: np.ndarray, result: Mapping[str, Any] | None) -> np.ndarray:
    """A BGR copy of ``image`` with ``result`` (a task's result body) drawn on it.

    ``detections`` (boxes in source pixels) are drawn as boxes with ``label score``;
    otherwise the first of ``classes`` as text in the top-left corner. Values that are not
    what a task writes are skipped, never an error: drawing must not stop the preview.
    """
    canvas = to_bgr(image)
    if not result:
        return canvas
    detections, classes = result.get("detections"), result.get("classes")
    if isinstance(detections, list):
        for det in detections:
            if isinstance(det, Mapping):
                _draw_detection(canvas, det)
    elif isinstance(classes, list) and classes and isinstance(classes[0], Mapping):
        text = _caption(classes[0])
        if text:
            _draw_label(canvas, text, (0, 0), _colour(text.split(" ")[0]))
    return canvas


def to_bgr(image: np.ndarray) -> np.ndarray:
    """A new 8-bit BGR image from a grey, BGR or BGRA frame."""
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _caption(entry: Mapping[str, Any]) -> str:
    label, score = entry.get("label"), entry.get("score")
    if not isinstance(label, str):
        return ""
    return f"{label} {score:.2f}" if isinstance(score, int | float) and not isinstance(score, bool) else label


def _colour(label: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def _scale(canvas: np.ndarray) -> tuple[float, int]:
    """Font scale and line thickness for the image size (readable from 160 px to 4K)."""
    side = min(canvas.shape[:2])
    return max(0.35, side / 600.0), max(1, round(side / 300))


def _draw_detection(canvas: np.ndarray, det: Mapping[str, Any]) -> None:
    box = det.get("box")
    if not isinstance(box, list | tuple) or len(box) != 4 \
            or not all(isinstance(v, int | float) and np.isfinite(v) for v in box):
        return
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = (round(min(max(float(v), -1.0), float(limit))) for v, limit in zip(box, (w, h, w, h), strict=True))
    text = _caption(det)
    colour = _colour(text.split(" ")[0] if text else "")
    _, thickness = _scale(canvas)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
    if text:
        _draw_label(canvas, text, (max(0, x0), max(0, y0)), colour, above=True)


def _draw_label(canvas: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
                above: bool = False) -> None:
    """``text`` in black on a filled ``colour`` box at ``origin`` (above it when there is room)."""
    scale, thickness = _scale(canvas)
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, thickness * 2)
    x, y = origin
    top = y - th - baseline - 2 * pad if above and y - th - baseline - 2 * pad >= 0 else y
    cv2.rectangle(canvas, (x, top), (x + tw + 2 * pad, top + th + baseline + 2 * pad), colour, cv2.FILLED)
    cv2.putText(canvas, text, (x + pad, top + pad + th), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
