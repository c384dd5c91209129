"""Benchmark models, trained on real data (scikit-learn digits) and cached.

``digits``: the converter's example digits CNN (32x32 grey; well under 2 ms).
``digits_big``: a heavier CNN (~880 M multiply-adds) on the same digits rendered at
192x192 RGB, so one int8 inference costs a few milliseconds like a real edge classifier; the
throughput figures use it. ``yolo256``: a YOLOv8-layout detector (256x256 RGB, 3-scale head,
``[1, 84, 1344]`` output) with random, seeded weights, for the detection throughput figures
(:func:`ensure_yolo_model`). Run as ``python -m bench.models`` in a child process so the
benchmark process never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import CACHE, run, tool

BIG_SIZE = 192

YOLO_SIZE = 256
YOLO_CLASSES = 80
YOLO_STRIDES = (8, 16, 32)
YOLO_PAD = 114
# Cells (across the three scales) whose best class score passes 0.25, per frame on average:
# a handful of objects with a few candidates each, as a trained detector gives.
YOLO_CANDIDATES = 25
SHAPES_SIZE = (320, 240)
YOLO_VIDEO_FRAMES = 600


def digits_big(images: np.ndarray) -> np.ndarray:
    """32x32 grey digits → 192x192 BGR frames (ink tinted, as a camera would see them)."""
    out = []
    for img in images:
        big = cv2.resize(img, (BIG_SIZE, BIG_SIZE), interpolation=cv2.INTER_LINEAR)
        bgr = np.stack([big * 0.6, big * 0.9, big], axis=-1)
        out.append(np.clip(bgr, 0, 255).astype(np.uint8))
    return np.stack(out)


def _train_big(out: Path) -> None:
    import keras

    from converter.examples import digits_split, write_image_folder

    x_train, y_train, x_test, y_test = digits_split()
    x_big, t_big = digits_big(x_train), digits_big(x_test)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(BIG_SIZE, BIG_SIZE, 3), name="image"),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(256, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(256, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_big",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # The model is RGB; frames are BGR: give it RGB like the manifest's colour order will.
    model.fit(x_big[..., ::-1].astype(np.float32), y_train, epochs=2, batch_size=32, verbose=0)
    model.save(str(out / "digits_big.keras"))
    # write_image_folder writes with cv2 (BGR), the converter reads with cv2 and converts to RGB.
    write_image_folder(x_big, y_train, out / "train_big")
    write_image_folder(t_big, y_test, out / "test_big")


def render_shapes(count: int, size: tuple[int, int] = SHAPES_SIZE, seed: int = 0) -> list[np.ndarray]:
    """``count`` BGR frames of OpenCV-drawn shapes (circles, boxes, triangles) moving over a
    shaded, noisy background; deterministic for a seed."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([60 + 80 * xx / width, 90 + 60 * yy / height, 120 - 40 * xx / width], axis=-1)
    kinds, sizes, colours, positions, velocities = [], [], [], [], []
    for _ in range(6):
        kinds.append(int(rng.integers(0, 3)))
        sizes.append(int(rng.uniform(14, 48)))
        positions.append(rng.uniform([0, 0], [width, height]))
        velocities.append(rng.uniform(-3, 3, 2))
        colours.append(tuple(float(c) for c in rng.integers(0, 256, 3)))
    pos, vel = np.array(positions), np.array(velocities)
    frames = []
    for _ in range(count):
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        pos += vel
        bounce = (pos < 0) | (pos > [width, height])
        vel[bounce] = -vel[bounce]
        pos = np.clip(pos, 0, [width, height])
        for kind, r, colour, (x, y) in zip(kinds, sizes, colours, pos.astype(int).tolist(), strict=True):
            if kind == 0:
                cv2.circle(image, (x, y), r, colour, -1, cv2.LINE_AA)
            elif kind == 1:
                cv2.rectangle(image, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
            else:
                points = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], dtype=np.int32)
                cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
        frames.append(image)
    return frames


def yolo_sidecar() -> str:
    """The TOML sidecar of the ``yolo256`` model (what an Ultralytics export would be given)."""
    labels = ", ".join(f'"c{i}"' for i in range(YOLO_CLASSES))
    return f"""name = "yolo256"
version = "1"
task = "detect"
labels = [{labels}]

[preprocess]
kind = "image"
width = {YOLO_SIZE}
height = {YOLO_SIZE}
color = "rgb"
resize = "letterbox"
pad_value = {YOLO_PAD}
std = [255.0]

[output]
detection_format = "yolo"
score_threshold = 0.25
iou_threshold = 0.45
max_detections = 100
"""


def _build_yolo(out: Path) -> None:
    """Write ``yolo256.tflite`` (full int8) and ``yolo256.toml`` into ``out``.

    Backbone: twelve 3x3 convolutions with ReLU (16 to 256 channels, five stride-2 steps),
    feature maps at strides 8/16/32 (32x32, 16x16, 8x8 cells); each has
    a 3x3 conv (64) and a 1x1 conv to 4 + 80 values per cell. Boxes: centre = (cell + sigmoid)
    / cells, size = 2 + 6 x sigmoid (averaged over 5x5 cells) cells, all normalised to 0..1
    like an Ultralytics TFLite export.
    Class scores: sigmoid of the logits standardised per class on calibration frames and shifted
    so about ``YOLO_CANDIDATES`` cells per frame score 0.25 or more (most cells score < 0.01).
    About 1.2 G multiply-adds; the weights are random (He-normal, seed 0), not trained.
    """
    import tensorflow as tf

    from edge_agent.model.manifest import ImagePreprocess
    from edge_agent.preprocess import preprocess_image

    rng = np.random.default_rng(0)

    def conv(cin: int, cout: int, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        w = rng.normal(0.0, np.sqrt(2.0 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)
        return tf.constant(w), tf.constant(rng.normal(0.0, 0.05, cout).astype(np.float32))

    plan = [(3, 16, 2), (16, 32, 2), (32, 64, 1), (64, 64, 1),
            (64, 128, 2), (128, 128, 1), (128, 128, 1),  # -> stride 8
            (128, 256, 2), (256, 256, 1), (256, 256, 1),  # -> stride 16
            (256, 256, 2), (256, 256, 1)]  # -> stride 32
    taps = {6: 0, 9: 1, 11: 2}  # layer index -> scale
    backbone = [(*conv(cin, cout, 3), stride) for cin, cout, stride in plan]
    widths = [128, 256, 256]
    stems = [conv(c, 64, 3) for c in widths]
    heads = [conv(64, 4 + YOLO_CLASSES, 1) for _ in widths]
    grids = []
    for stride in YOLO_STRIDES:
        cells = YOLO_SIZE // stride
        cols, rows = np.meshgrid(np.arange(cells, dtype=np.float32), np.arange(cells, dtype=np.float32))
        grids.append((cells, tf.constant(cols.reshape(1, -1)), tf.constant(rows.reshape(1, -1))))

    def raw_heads(image: tf.Tensor) -> list[tf.Tensor]:
        """[1, cells, cells, 84] raw values per scale."""
        x, feats = image, []
        for i, (w, b, stride) in enumerate(backbone):
            x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w, stride, "SAME"), b))
            if i in taps:
                feats.append(x)
        out = []
        for feat, (sw, sb), (hw, hb) in zip(feats, stems, heads, strict=True):
            y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(feat, sw, 1, "SAME"), sb))
            out.append(tf.nn.bias_add(tf.nn.conv2d(y, hw, 1, "SAME"), hb))
        return out

    spec = ImagePreprocess(width=YOLO_SIZE, height=YOLO_SIZE, resize="letterbox", pad_value=YOLO_PAD, std=[255.0])
    frames = render_shapes(YOLO_VIDEO_FRAMES)[::10]  # every 10th frame of the benchmark's video
    frames[0][:8, :8] = (0, 0, 0)  # the full pixel range, so the input scale is 1/255 as for any camera
    frames[0][-8:, -8:] = (255, 255, 255)
    calibration = [preprocess_image(f, spec)[0][None] for f in frames]
    # Standardise each class's logits on the calibration frames and set the bias so that
    # about YOLO_CANDIDATES cells per frame pass 0.25, by folding it into the last conv.
    logits = np.concatenate([np.concatenate([h.numpy()[0, ..., 4:].reshape(-1, YOLO_CLASSES)
                                             for h in raw_heads(tf.constant(x))])
                             for x in calibration])  # (frames x 1344, 80)
    mean, std = logits.mean(axis=0), logits.std() / 2.0
    best = ((logits - mean) / std).max(axis=1)
    shift = float(np.quantile(best, 1.0 - YOLO_CANDIDATES * len(calibration) / best.shape[0]))
    shift = shift - float(np.log(0.25 / 0.75))  # sigmoid(z - shift) >= 0.25 <=> z >= quantile
    for i, (hw, hb) in enumerate(heads):
        w, b = hw.numpy(), hb.numpy()
        w[..., 4:] /= std
        b[4:] = (b[4:] - mean) / std - shift
        heads[i] = (tf.constant(w), tf.constant(b))

    class Yolo(tf.Module):  # type: ignore[misc]  # TensorFlow has no type hints
        @tf.function(input_signature=[tf.TensorSpec([1, YOLO_SIZE, YOLO_SIZE, 3], tf.float32, name="images")])  # type: ignore[untyped-decorator]
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            parts = []
            for raw, (cells, gx, gy) in zip(raw_heads(image), grids, strict=True):
                # Sizes averaged over 5x5 cells, so neighbouring candidates overlap as a real detector's do.
                size = tf.nn.avg_pool2d(raw[..., 2:4], 5, 1, "SAME")
                smooth = tf.concat([raw[..., :2], size, raw[..., 4:]], axis=-1)
                t = tf.sigmoid(tf.reshape(smooth, [1, cells * cells, 4 + YOLO_CLASSES]))
                cx, cy = (gx + t[..., 0]) / cells, (gy + t[..., 1]) / cells
                w, h = (2.0 + 6.0 * t[..., 2]) / cells, (2.0 + 6.0 * t[..., 3]) / cells
                box = tf.stack([cx, cy, w, h], axis=1)  # [1, 4, cells]
                parts.append(tf.concat([box, tf.transpose(t[..., 4:], [0, 2, 1])], axis=1))
            return {"output0": tf.concat(parts, axis=2)}  # [1, 84, 1344]

    module = Yolo()
    saved = out / "yolo256_saved"
    tf.saved_model.save(module, str(saved), signatures=module.serve)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))

    def representative() -> Any:
        for x in calibration:
            yield [x.astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (out / "yolo256.tflite").write_bytes(converter.convert())
    (out / "yolo256.toml").write_text(yolo_sidecar())


def ensure_yolo_model() -> dict[str, Path]:
    """Build (once, in a child process) the ``yolo256`` detector; returns its model and sidecar paths."""
    out = CACHE / "models" / "yolo256"
    paths = {"model": out / "yolo256.tflite", "sidecar": out / "yolo256.toml"}
    if not all(p.exists() for p in paths.values()):
        out.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "bench.models", "--build_yolo", str(out)])
    return paths


def ensure_models() -> dict[str, Path]:
    """Train (once) and convert the benchmark models; returns their bundle paths and data."""
    out = CACHE / "models"
    out.mkdir(parents=True, exist_ok=True)
    info = out / "info.json"
    if info.exists():
        return {k: Path(v) for k, v in json.loads(info.read_text()).items()}
    run([sys.executable, "-m", "converter.examples", "digits", "--out", str(out / "digits")])
    run([sys.executable, "-m", "bench.models", "--train_big", str(out)])
    paths: dict[str, Path] = {}
    paths["digits_bundle"] = out / "digits.bundle"
    run([tool("edge-convert"), str(out / "digits" / "digits.keras"), "--calibration", str(out / "digits" / "train"),
         "--validation", str(out / "digits" / "test"), "--color", "gray", "--output", str(paths["digits_bundle"])])
    paths["digits_big_bundle"] = out / "digits_big.bundle"
    run([tool("edge-convert"), str(out / "digits_big.keras"), "--calibration", str(out / "train_big"),
         "--validation", str(out / "test_big"), "--color", "rgb", "--max-accuracy-drop", "100",
         "--output", str(paths["digits_big_bundle"])])
    paths["digits_test"] = out / "digits" / "test"
    paths["test_big"] = out / "test_big"
    info.write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_big", type=Path)
    parser.add_argument("--build_yolo", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.train_big:
        _train_big(args.train_big)
    elif args.build_yolo:
        _build_yolo(args.build_yolo)
    else:
        print(json.dumps({k: str(v) for k, v in ensure_models().items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
