"""Synthetic shapes scenes for the demo detector (:mod:`converter.shapes`): drawing and datasets.

OpenCV-drawn squares and circles on tinted, noisy backgrounds; the 64x64 training
scenes (often with letterbox bands) and their 8x8 grid targets; the 160x120 test
images with ``truth.json``; and the Ultralytics-style letterbox the agent applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

LABELS = ["square", "circle"]
SIZE = 64  # model input, square
GRID = 8  # cells per side (stride 8)
STRIDE = SIZE // GRID
CELLS = GRID * GRID
ANCHOR_PX = 32.0  # predicted size = ANCHOR_PX * exp(t)
PAD = 114  # Ultralytics letterbox grey
SSD_SCALE = 64.0  # x/y/w/h_scale of the MediaPipe box decoding
TEST_W, TEST_H, N_TEST = 160, 120, 12


@dataclass(frozen=True)
class Shape:
    """One drawn object: class index and box ``(x0, y0, x1, y1)`` in pixel-edge coordinates."""

    class_id: int
    box: tuple[float, float, float, float]

    @property
    def label(self) -> str:
        return LABELS[self.class_id]


# --------------------------------------------------------------------------- synthetic scenes


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Grey-ish background with a faint tint, a gentle gradient and (later) noise."""
    base = rng.uniform(60, 200) + rng.uniform(-15, 15, size=3)
    ramp_x = np.linspace(-1, 1, width)[None, :, None] * rng.uniform(-20, 20)
    ramp_y = np.linspace(-1, 1, height)[:, None, None] * rng.uniform(-20, 20)
    return np.broadcast_to(base + ramp_x + ramp_y, (height, width, 3)).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    bg = background.reshape(-1, 3).mean(axis=0)
    while True:
        colour = rng.integers(0, 256, size=3)
        if abs(_luma(colour) - _luma(bg)) >= 60:
            return int(colour[0]), int(colour[1]), int(colour[2])


def _draw(image: np.ndarray, shape: Shape, colour: tuple[int, int, int]) -> None:
    # cv2 works in pixel-centre coordinates with 4 fractional bits; the box is in edge coordinates.
    f = 16
    x0, y0, x1, y1 = shape.box
    if shape.class_id == 0:
        cv2.rectangle(image, (round((x0 + 0.5) * f), round((y0 + 0.5) * f)),
                      (round((x1 - 0.5) * f), round((y1 - 0.5) * f)), colour, -1, cv2.LINE_AA, 4)
    else:
        cx, cy, r = (x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, (x1 - x0) / 2
        cv2.circle(image, (round(cx * f), round(cy * f)), round(r * f), colour, -1, cv2.LINE_AA, 4)


def _overlaps(box: tuple[float, ...], others: list[Shape], margin: float) -> bool:
    return any(box[0] < o.box[2] + margin and o.box[0] < box[2] + margin
               and box[1] < o.box[3] + margin and o.box[1] < box[3] + margin for o in others)


def draw_scene(rng: np.random.Generator, width: int, height: int, n_objects: int, scale: float,
               content: tuple[int, int, int, int] | None = None, noise: float = 6.0
               ) -> tuple[np.ndarray, list[Shape]]:
    """A uint8 RGB ``height x width`` scene with ``n_objects`` non-overlapping shapes.

    Shapes are 14..30 px at ``scale`` 1 (sides of squares, diameters of circles),
    placed inside ``content`` ``(x0, y0, x1, y1)``; outside it the image is the
    letterbox grey (as the device's letterbox would leave it).
    """
    cx0, cy0, cx1, cy1 = content or (0, 0, width, height)
    image = _background(rng, width, height)
    image += rng.normal(0, noise, size=image.shape).astype(np.float32)
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    shapes: list[Shape] = []
    for _ in range(200):  # rejection sampling for a free spot
        if len(shapes) == n_objects:
            break
        side = rng.uniform(14, 30) * scale
        x0 = rng.uniform(cx0 + 1, cx1 - 1 - side)
        y0 = rng.uniform(cy0 + 1, cy1 - 1 - side)
        box = (x0, y0, x0 + side, y0 + side)
        if _overlaps(box, shapes, margin=2 * scale):
            continue
        shape = Shape(int(rng.integers(0, 2)), box)
        _draw(canvas, shape, _contrasting_colour(rng, image[int(y0):int(y0 + side), int(x0):int(x0 + side)]))
        shapes.append(shape)
    if content is not None:
        grey = np.full_like(canvas, PAD)
        grey[cy0:cy1, cx0:cx1] = canvas[cy0:cy1, cx0:cx1]
        canvas = grey
    return canvas, shapes


def training_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[Shape]]:
    """A 64x64 scene, often with letterbox bands like a landscape (or portrait) camera frame gives."""
    roll = rng.uniform()
    content = (0, 0, SIZE, SIZE)
    if roll < 0.5:
        band = int(rng.integers(4, 13))
        content = (0, band, SIZE, SIZE - band)
    elif roll < 0.65:
        band = int(rng.integers(4, 13))
        content = (band, 0, SIZE - band, SIZE)
    n_objects = 2 if rng.uniform() < 0.3 else 1
    return draw_scene(rng, SIZE, SIZE, n_objects, 1.0, content=content, noise=float(rng.uniform(0, 10)))


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """Ultralytics-style centred letterbox to 64x64 with grey 114; returns (image, scale, off_x, off_y)."""
    h, w = image.shape[:2]
    scale = min(SIZE / w, SIZE / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if new_w < w and new_h < h else cv2.INTER_LINEAR
    canvas = np.full((SIZE, SIZE, 3), PAD, dtype=np.uint8)
    off_x, off_y = (SIZE - new_w) // 2, (SIZE - new_h) // 2
    canvas[off_y:off_y + new_h, off_x:off_x + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return canvas, scale, off_x, off_y


def grid_targets(shapes: list[Shape]) -> np.ndarray:
    """The (8, 8, 7) training target: obj, one-hot class (2), tx, ty (in-cell offsets), tw, th (log size)."""
    target = np.zeros((GRID, GRID, 7), dtype=np.float32)
    for s in shapes:
        x0, y0, x1, y1 = s.box
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        col, row = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
        target[row, col, 0] = 1.0
        target[row, col, 1 + s.class_id] = 1.0
        target[row, col, 3:5] = (cx - col, cy - row)
        target[row, col, 5:7] = np.log((x1 - x0) / ANCHOR_PX), np.log((y1 - y0) / ANCHOR_PX)
    return target


def make_training_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    targets = np.empty((n, GRID, GRID, 7), dtype=np.float32)
    for i in range(n):
        images[i], shapes = training_scene(rng)
        targets[i] = grid_targets(shapes)
    return images, targets


def make_test_set(rng: np.random.Generator, out: Path) -> dict[str, list[dict[str, Any]]]:
    """12 landscape test images, one shape each (alternating classes), drawn at the source size."""
    folder = out / "test_images"
    folder.mkdir(parents=True, exist_ok=True)
    scale = max(TEST_W, TEST_H) / SIZE  # source pixels per model pixel after letterboxing
    truth: dict[str, list[dict[str, Any]]] = {}
    for i in range(N_TEST):
        while True:
            image, shapes = draw_scene(rng, TEST_W, TEST_H, 1, scale, noise=8.0)
            if shapes and shapes[0].class_id == i % 2:
                break
        name = f"shape_{i:02d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        truth[name] = [{"label": s.label, "box": [round(v, 2) for v in s.box]} for s in shapes]
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
