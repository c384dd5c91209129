"""Benchmark models, trained on real data (scikit-learn digits) and cached.

``digits``: the converter's example digits CNN (32x32 grey; well under 2 ms).
``digits_big``: a heavier CNN (~880 M multiply-adds) on the same digits rendered at
192x192 RGB, so one int8 inference costs a few milliseconds like a real edge classifier; the
throughput figures use it. Run as ``python -m bench.models`` in a child process
so the benchmark process never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from bench.common import CACHE, run, tool

BIG_SIZE = 192


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
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.train_big:
        _train_big(args.train_big)
    else:
        print(json.dumps({k: str(v) for k, v in ensure_models().items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
