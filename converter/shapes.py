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

The scenes and datasets are :mod:`converter.shapes_data`, the independent check
:mod:`converter.shapes_eval`; this module trains, exports and writes ``OUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from converter.shapes_data import (
    ANCHOR_PX,
    CELLS,
    GRID,
    LABELS,
    PAD,
    SIZE,
    SSD_SCALE,
    STRIDE,
    make_test_set,
    make_training_set,
)
from converter.shapes_eval import evaluate, output_shapes

N_TRAIN, EPOCHS, BATCH = 2500, 24, 32
SEED = 0


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
