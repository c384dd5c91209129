"""Tiny hand-built TFLite models for the agent tests (run in a child process: imports TF).

``python -m tests.integration.agent_models OUT_DIR`` writes:

- ``colours.tflite`` (float) + ``colours.toml``: 16x16 RGB → softmax over
  red/green/blue from the channel means (checks colour order end to end);
- ``colours_int8.tflite`` + ``colours_int8.toml``: the same, fully int8;
- ``squares.tflite`` + ``squares.toml``: 64x64 grey → raw boxes (1, 169, 4)
  normalised yxyx + scores (1, 169, 1): every 16x16 window on a 4-pixel grid,
  scored by its mean brightness, so a bright 16x16 square is found exactly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

COLOURS_SIDECAR = """name = "colours"
version = "1"
task = "classify"
labels = ["red", "green", "blue"]
[preprocess]
kind = "image"
width = 16
height = 16
color = "rgb"
std = [255.0]
[output]
top_k = 3
"""

SQUARES_SIDECAR = """name = "squares"
version = "1"
task = "detect"
labels = ["square"]
[preprocess]
kind = "image"
width = 64
height = 64
channels = 1
color = "gray"
std = [255.0]
[output]
detection_format = "raw_boxes"
box_format = "yxyx"
score_threshold = 0.5
iou_threshold = 0.3
max_detections = 5
"""

GRID = 13  # (64 - 16) / 4 + 1 window positions per axis
WINDOW = 16
STRIDE = 4


def square_anchors() -> np.ndarray:
    boxes = []
    for i in range(GRID):
        for j in range(GRID):
            y0, x0 = i * STRIDE, j * STRIDE
            boxes.append([y0 / 64, x0 / 64, (y0 + WINDOW) / 64, (x0 + WINDOW) / 64])
    return np.asarray(boxes, dtype=np.float32)


def build(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    def colours(x: tf.Tensor) -> tf.Tensor:
        means = tf.reduce_mean(x, axis=[1, 2])  # (1, 3), values in [0, 1]
        return tf.nn.softmax(means * 20.0)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([colours.get_concrete_function()], colours)
    (out / "colours.tflite").write_bytes(conv.convert())
    (out / "colours.toml").write_text(COLOURS_SIDECAR)

    rng = np.random.default_rng(0)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(64):
            yield [rng.random((1, 16, 16, 3), dtype=np.float32)]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([colours.get_concrete_function()], colours)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (out / "colours_int8.tflite").write_bytes(conv.convert())
    (out / "colours_int8.toml").write_text(COLOURS_SIDECAR.replace('"colours"', '"colours-int8"'))

    anchors = tf.constant(square_anchors())

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 1], tf.float32)])
    def squares(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pooled = tf.nn.avg_pool2d(x, ksize=WINDOW, strides=STRIDE, padding="VALID")  # (1, 13, 13, 1)
        scores = tf.reshape(pooled, [1, GRID * GRID, 1])
        # Tie the constant boxes to the input so the converter keeps them an output.
        boxes = tf.expand_dims(anchors, 0) + 0.0 * tf.reduce_mean(x)
        return boxes, scores

    conv = tf.lite.TFLiteConverter.from_concrete_functions([squares.get_concrete_function()], squares)
    (out / "squares.tflite").write_bytes(conv.convert())
    (out / "squares.toml").write_text(SQUARES_SIDECAR)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
