"""A tiny shapes detector exported in the output layouts people deploy (demo and integration tests).

``python -m converter.shapes OUT`` (a child process: it imports
TensorFlow) trains a small grid detector on synthetic OpenCV-drawn squares and
circles and writes:

* ``OUT/<name>.tflite`` + ``OUT/<name>.toml`` (the agent's sidecar) for
  ``shapes_v8`` / ``shapes_v8_int8`` (YOLOv8/YOLO11: one ``[1, 4 + C, N]`` output,
  normalised boxes), ``shapes_v5`` / ``shapes_v5_int8`` (YOLOv5: ``[1, N, 5 + C]``),
  ``shapes_v8_pixels`` (YOLOv8 with boxes in input pixels) and ``shapes_ssd`` /
  ``shapes_ssd_int8`` (MediaPipe SSD head: ``[1, N, C]`` score logits first, then
  ``[1, N, 6]`` box + keypoint regressions against one fixed-size anchor per cell).
* ``OUT/test_images/*.png``: 160x120 (not square, so letterboxing matters) scenes
  with one shape each, and ``OUT/truth.json``: file name -> ``[{label, box}]``
  with boxes ``[x0, y0, x1, y1]`` in those images' pixels.
* ``OUT/info.json``: ``{"models": {name: {"model", "sidecar", "layout", "int8",
  "outputs" (shapes, in the model's order), "iou", "min_iou", "accuracy",
  "max_keypoint_error"}}, "labels", "test_images", "truth", "train_seconds", ...}``;
  the metrics (best detection per test image, source pixels) are measured here
  with ai-edge-litert and a NumPy decoder written independently of the agent's.

The model: 64x64 RGB in (``pixel / 255``), an 8x8 grid out (stride 8), each cell
predicting an objectness logit, 2 class logits, the centre offset inside the cell
(sigmoid) and log size relative to 32 px. The cell holding an object's centre is
responsible for it (YOLO-style). The export heads are plain TF ops on that grid.
"""

from __future__ import annotations

import json
import sys
import time
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
N_TRAIN, EPOCHS, BATCH = 2500, 24, 32
SEED = 0


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


# --------------------------------------------------------------------------- training


def train(images: np.ndarray, targets: np.ndarray) -> Any:
    """A tiny fully convolutional grid detector; returns the Keras model (raw (8, 8, 7) output)."""
    import keras
    import tensorflow as tf

    def conv(x: Any, filters: int, stride: int = 1, kernel: int = 3) -> Any:
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", activation="relu")(x)

    inputs = keras.Input((SIZE, SIZE, 3))
    x = conv(inputs, 16, 2)  # 32
    x = conv(x, 24)
    x = conv(x, 32, 2)  # 16
    x = conv(x, 32)
    x = conv(x, 48, 2)  # 8
    x = conv(x, 64)
    x = conv(x, 64)
    outputs = keras.layers.Conv2D(7, 1)(x)
    model = keras.Model(inputs, outputs)

    def loss(y_true: Any, y_pred: Any) -> Any:
        obj_t = y_true[..., 0]
        batch = tf.cast(tf.shape(y_true)[0], tf.float32)
        n_pos = tf.maximum(tf.reduce_sum(obj_t), 1.0)
        obj_bce = tf.nn.sigmoid_cross_entropy_with_logits(obj_t, y_pred[..., 0])
        obj_loss = tf.reduce_sum(obj_bce * (1.0 + 4.0 * obj_t)) / batch
        cls_bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(y_true[..., 1:3], y_pred[..., 1:3]), -1)
        xy_bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(y_true[..., 3:5], y_pred[..., 3:5]), -1)
        wh_l1 = tf.reduce_sum(tf.abs(y_true[..., 5:7] - y_pred[..., 5:7]), -1)
        box_loss = tf.reduce_sum(obj_t * (cls_bce + 2.0 * xy_bce + 5.0 * wh_l1)) / n_pos
        return obj_loss + box_loss

    schedule = keras.optimizers.schedules.CosineDecay(3e-3, EPOCHS * (len(images) // BATCH), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    model.fit(images.astype(np.float32) / 255.0, targets, batch_size=BATCH, epochs=EPOCHS, verbose=0,
              shuffle=True)
    return model


# --------------------------------------------------------------------------- export heads


def build_heads(model: Any) -> dict[str, Any]:
    """tf.Modules with one serving signature each, decoding the raw grid with deterministic TF ops."""
    import tensorflow as tf

    cols, rows = np.meshgrid(np.arange(GRID, dtype=np.float32), np.arange(GRID, dtype=np.float32))
    grid_x = tf.constant(cols.reshape(1, CELLS))  # row-major cells: index = row * 8 + col
    grid_y = tf.constant(rows.reshape(1, CELLS))
    spec = tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")

    # The trained weights become constants of a plain tf.nn forward pass: Keras 3 variables saved
    # inside a tf.Module are not frozen by the converter (they stay READ_VARIABLE ops).
    layers = [(tf.constant(layer.kernel.numpy()), tf.constant(layer.bias.numpy()), layer.strides[0],
               layer.activation.__name__ == "relu") for layer in model.layers if layer.weights]

    def conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int) -> tf.Tensor:
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, stride, "SAME"), bias)

    def decoded(image: tf.Tensor) -> dict[str, tf.Tensor]:
        x = image
        for kernel, bias, stride, _ in layers[:-1]:
            x = tf.nn.relu(conv(x, kernel, bias, stride))
        kernel, bias, stride, _ = layers[-1]
        # Logits (wide range) and box regressions (need fine steps) as two convs, so that an
        # int8 model gives each its own quantisation scale.
        logits = tf.reshape(conv(x, kernel[..., :3], bias[:3], stride), [1, CELLS, 3])
        regress = tf.reshape(conv(x, kernel[..., 3:], bias[3:], stride), [1, CELLS, 4])
        # Sizes clamped to 4..64 px: cells without an object must not stretch an int8 output's range.
        log_wh = tf.clip_by_value(regress[..., 2:4], np.log(4 / ANCHOR_PX), np.log(SIZE / ANCHOR_PX))
        wh = tf.exp(log_wh) * (ANCHOR_PX / SIZE)
        obj, cls = tf.sigmoid(logits[..., 0]), tf.sigmoid(logits[..., 1:3])
        scores = obj[..., None] * cls
        # The SSD head's score logits, logit(p) = log(p) - log(1 - p), within +-6.2 (p clipped to
        # 1/512 .. 511/512) so that an int8 output keeps steps of ~0.05 where it matters.
        p = tf.clip_by_value(scores, 1.0 / 512, 511.0 / 512)
        score_logits = tf.math.log(p) - tf.math.log(1.0 - p)
        return {
            "obj": obj, "cls": cls, "scores": scores, "score_logits": score_logits,
            "ox": tf.sigmoid(regress[..., 0]), "oy": tf.sigmoid(regress[..., 1]),  # centre in the cell, 0..1
            "w": wh[..., 0], "h": wh[..., 1],
        }

    class YoloV8(tf.Module):  # type: ignore[misc]  # tf is untyped
        def __init__(self, box_scale: float) -> None:
            super().__init__()
            self.box_scale = box_scale

        @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            d = decoded(image)
            cx, cy = (grid_x + d["ox"]) / GRID, (grid_y + d["oy"]) / GRID
            box = tf.stack([cx, cy, d["w"], d["h"]], axis=1) * self.box_scale  # [1, 4, N]
            return {"output0": tf.concat([box, tf.transpose(d["scores"], [0, 2, 1])], axis=1)}

    class YoloV5(tf.Module):  # type: ignore[misc]  # tf is untyped
        @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            d = decoded(image)
            cx, cy = (grid_x + d["ox"]) / GRID, (grid_y + d["oy"]) / GRID
            rows = tf.stack([cx, cy, d["w"], d["h"], d["obj"]], axis=2)  # [1, N, 5]
            return {"output0": tf.concat([rows, d["cls"]], axis=2)}

    class MediaPipeSsd(tf.Module):  # type: ignore[misc]  # tf is untyped
        @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            d = decoded(image)
            # Anchor (col + 0.5, row + 0.5) / 8 of size 1: cx - anchor_x = (ox - 0.5) / 8. Written
            # without the grid so an int8 model quantises the offset, not the absolute position.
            dx, dy = (d["ox"] - 0.5) * (SSD_SCALE / GRID), (d["oy"] - 0.5) * (SSD_SCALE / GRID)
            regressors = tf.stack([dx, dy, d["w"] * SSD_SCALE, d["h"] * SSD_SCALE, dx, dy], axis=2)
            # Signature outputs are ordered by key: "classificators" (scores) comes first.
            return {"classificators": d["score_logits"], "regressors": regressors}

    return {"v8": YoloV8(1.0), "v8_pixels": YoloV8(float(SIZE)), "v5": YoloV5(), "ssd": MediaPipeSsd()}


def convert(saved_model: Path, int8: bool, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if int8:
        def representative() -> Any:
            for image in calibration:
                yield [image[None].astype(np.float32) / 255.0]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    data: bytes = converter.convert()
    return data


# --------------------------------------------------------------------------- sidecars


def sidecar(name: str, detection_format: str) -> str:
    text = f'''name = "{name}"
version = "1"
task = "detect"
labels = {json.dumps(LABELS)}

[preprocess]
kind = "image"
width = {SIZE}
height = {SIZE}
color = "rgb"
resize = "letterbox"
pad_value = {PAD}
std = [255.0]

[output]
detection_format = "{detection_format}"
score_threshold = 0.5
iou_threshold = 0.5
max_detections = 10
'''
    if detection_format == "ssd_anchors":
        text += f'''
[output.anchors]
num_layers = 1
min_scale = 0.1
max_scale = 0.5
input_size_width = {SIZE}
input_size_height = {SIZE}
anchor_offset_x = 0.5
anchor_offset_y = 0.5
strides = [{STRIDE}]
aspect_ratios = [1.0]
interpolated_scale_aspect_ratio = 0.0
fixed_anchor_size = true

[output.box_decoding]
num_coords = 6
box_coord_offset = 0
keypoint_coord_offset = 4
num_keypoints = 1
num_values_per_keypoint = 2
x_scale = {SSD_SCALE}
y_scale = {SSD_SCALE}
w_scale = {SSD_SCALE}
h_scale = {SSD_SCALE}
sigmoid_score = true
score_clipping_thresh = 100.0
reverse_output_order = true
'''
    return text


# --------------------------------------------------------------------------- independent check


def _run_tflite(path: Path, image: np.ndarray) -> list[np.ndarray]:
    """Float outputs of a TFLite model for one uint8 64x64 RGB image, in the model's output order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = image[None].astype(np.float32) / 255.0
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    outs = []
    for det in interpreter.get_output_details():
        y = interpreter.get_tensor(det["index"])
        if det["dtype"] == np.int8:
            scale, zero = det["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        outs.append(y.astype(np.float32))
    return outs


def output_shapes(path: Path) -> list[list[int]]:
    """The model's output tensor shapes, in its output order."""
    from ai_edge_litert.interpreter import Interpreter

    return [[int(v) for v in d["shape"]] for d in Interpreter(model_path=str(path)).get_output_details()]


def decode_best(layout: str, outputs: list[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """(class, normalised xyxy box, normalised keypoint) of the highest-scoring cell."""
    if layout in ("v8", "v8_pixels"):
        rows = outputs[0][0].T  # [N, 4 + C]
        boxes, scores = rows[:, :4] / (SIZE if layout == "v8_pixels" else 1.0), rows[:, 4:]
    elif layout == "v5":
        rows = outputs[0][0]
        boxes, scores = rows[:, :4], rows[:, 4:5] * rows[:, 5:]
    else:
        logits = next(o for o in outputs if o.shape[-1] == len(LABELS))[0]
        raw = next(o for o in outputs if o.shape[-1] == 6)[0]
        cols, rows_ = np.meshgrid(np.arange(GRID), np.arange(GRID))
        ax, ay = (cols.reshape(-1) + 0.5) / GRID, (rows_.reshape(-1) + 0.5) / GRID
        boxes = np.stack([raw[:, 0] / SSD_SCALE + ax, raw[:, 1] / SSD_SCALE + ay,
                          raw[:, 2] / SSD_SCALE, raw[:, 3] / SSD_SCALE], axis=1)
        keypoints = np.stack([raw[:, 4] / SSD_SCALE + ax, raw[:, 5] / SSD_SCALE + ay], axis=1)
        scores = 1.0 / (1.0 + np.exp(-logits))
    best = int(np.argmax(scores.max(axis=1)))
    cx, cy, w, h = boxes[best]
    keypoint = keypoints[best] if layout == "ssd" else np.array([cx, cy])
    return int(np.argmax(scores[best])), np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), keypoint


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def evaluate(path: Path, layout: str, out: Path, truth: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Mean IoU of the best detection, label accuracy and worst keypoint error (source px) on the test images."""
    ious, hits, kp_errors = [], [], []
    for name, objects in sorted(truth.items()):
        bgr = cv2.imread(str(out / "test_images" / name))
        assert bgr is not None, name
        boxed, scale, off_x, off_y = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        class_id, box, keypoint = decode_best(layout, _run_tflite(path, boxed))
        offset = np.array([off_x, off_y, off_x, off_y], dtype=np.float32)
        source_box = (box * SIZE - offset) / scale
        ious.append(box_iou(source_box, np.asarray(objects[0]["box"])))
        hits.append(LABELS[class_id] == objects[0]["label"])
        t = objects[0]["box"]
        kp = (keypoint * SIZE - offset[:2]) / scale
        kp_errors.append(float(np.hypot(kp[0] - (t[0] + t[2]) / 2, kp[1] - (t[1] + t[3]) / 2)))
    return {"iou": round(float(np.mean(ious)), 4), "min_iou": round(float(np.min(ious)), 4),
            "accuracy": round(float(np.mean(hits)), 4), "max_keypoint_error": round(max(kp_errors), 2)}


# --------------------------------------------------------------------------- main


MODELS: list[tuple[str, str, bool, str]] = [  # (name, head, int8, detection_format)
    ("shapes_v8", "v8", False, "yolo"),
    ("shapes_v8_int8", "v8", True, "yolo"),
    ("shapes_v5", "v5", False, "yolo"),
    ("shapes_v5_int8", "v5", True, "yolo"),
    ("shapes_v8_pixels", "v8_pixels", False, "yolo"),
    ("shapes_ssd", "ssd", False, "ssd_anchors"),
    ("shapes_ssd_int8", "ssd", True, "ssd_anchors"),
]


def build(out: Path) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    started = time.monotonic()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    images, targets = make_training_set(rng, N_TRAIN)
    truth = make_test_set(rng, out)

    t0, cpu0 = time.monotonic(), time.process_time()
    model = train(images, targets)
    train_seconds, train_cpu = time.monotonic() - t0, time.process_time() - cpu0
    print(f"trained in {train_seconds:.1f} s ({train_cpu:.1f} s CPU)", file=sys.stderr)

    heads = build_heads(model)
    models: dict[str, Any] = {}
    for head_name, head in heads.items():
        tf.saved_model.save(head, str(out / "saved" / head_name), signatures=head.serve)
    for name, head_name, int8, detection_format in MODELS:
        path = out / f"{name}.tflite"
        path.write_bytes(convert(out / "saved" / head_name, int8, images[:200]))
        side = out / f"{name}.toml"
        side.write_text(sidecar(name, detection_format))
        models[name] = {"model": str(path), "sidecar": str(side), "layout": head_name, "int8": int8,
                        "outputs": output_shapes(path),
                        **evaluate(path, head_name, out, truth)}
        print(f"{name}: {models[name]}", file=sys.stderr)
    info = {"models": models, "labels": LABELS, "test_images": str(out / "test_images"),
            "truth": str(out / "truth.json"), "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu, 1),
            "total_seconds": round(time.monotonic() - started, 1)}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    result = build(Path(sys.argv[1]))
    print(json.dumps(result, indent=1))
