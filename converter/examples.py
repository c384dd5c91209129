"""Example models on real data, shared by tests, benchmarks and the demo.

* Digits: scikit-learn's handwritten digits (8x8, 0..16) upscaled to 32x32 grey
  uint8 images; a small CNN with its own ``Rescaling(1/255)`` layer, so raw
  0..255 pixels feed it and the manifest keeps mean 0, std 1.
* Keywords: spoken words synthesised with ``espeak-ng`` (several voices, speeds
  and pitches, with noise and time shifts) plus a background class; a small CNN
  over log-mel features computed *outside* the graph with
  :func:`edge_agent.preprocess.audio_features`, the same code the device runs.
  The audio and its features are :mod:`converter.keyword_data`; this module trains.

TensorFlow is imported lazily inside the training functions, so importing this
module (for data helpers) stays cheap. ``python -m converter.examples`` builds
the models from the command line (tests run it in a child process so the test
process never loads TensorFlow).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from converter.keyword_data import keyword_preprocess, load_keyword_features, make_keyword_dataset

log = logging.getLogger(__name__)

DIGIT_SIZE = 32
SaveFormat = Literal["keras", "savedmodel", "h5"]


# --------------------------------------------------------------------------- digits


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real handwritten digits as 32x32 uint8 grey images, split 80/20 (stratified).

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images have shape (N, 32, 32)
        with values 0..255, labels are int64 class indices 0..9.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).astype(np.float32)
    images = np.stack(
        [cv2.resize(img, (DIGIT_SIZE, DIGIT_SIZE), interpolation=cv2.INTER_LINEAR) for img in small]
    )
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def write_image_folder(images: np.ndarray, labels: Sequence[int] | np.ndarray, folder: Path,
                       names: Sequence[str] | None = None) -> Path:
    """Write images as PNGs into class subfolders (``folder/<label>/<n>.png``)."""
    folder = Path(folder)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = names[int(label)] if names is not None else str(int(label))
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target / f"{i:05d}.png"), image):
            raise OSError(f"cannot write {target / f'{i:05d}.png'}")
    return folder


def _seed_everything(seed: int) -> None:
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def train_digits_model(x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0) -> Any:
    """Train the digits CNN on raw 0..255 pixels; returns a compiled ``keras.Model``.

    About 280k parameters (float file ~1.1 MB), softmax output, ~17 s on 2 cores.
    """
    import keras

    _seed_everything(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(DIGIT_SIZE, DIGIT_SIZE, 1), name="image"),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    images = x.reshape(-1, DIGIT_SIZE, DIGIT_SIZE, 1).astype(np.float32)
    model.fit(images, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def save_model(model: Any, path: Path, fmt: SaveFormat) -> Path:
    """Save a Keras model as a ``.keras`` file, a SavedModel folder or a legacy ``.h5`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "keras":
        model.save(str(path))
    elif fmt == "h5":
        model.save(str(path))  # Keras 3 picks the legacy HDF5 writer from the suffix
    elif fmt == "savedmodel":
        model.export(str(path), verbose=False)
    else:
        raise ValueError(f"unknown model format {fmt!r}; choose keras, savedmodel or h5")
    return path


def evaluate(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a Keras classifier on inputs already shaped for it."""
    probs = model.predict(x, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y))


# --------------------------------------------------------------------------- keywords


def train_keyword_model(features: np.ndarray, labels: np.ndarray, epochs: int = 50,
                        seed: int = 0, n_classes: int | None = None) -> Any:
    """Train a small CNN on log-mel features of shape (N, frames, n_mels)."""
    import keras

    _seed_everything(seed)
    frames, n_mels = features.shape[1:]
    classes = n_classes or int(labels.max()) + 1
    # Log-mel values span roughly -14..+6; a fixed affine keeps them near [-1, 1]
    # without a data-dependent normalisation layer.
    model = keras.Sequential(
        [
            keras.Input(shape=(frames, n_mels), name="logmel"),
            keras.layers.Rescaling(1.0 / 8.0, offset=0.5),
            keras.layers.Reshape((frames, n_mels, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name="keywords",
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(features, labels, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
    return model


# --------------------------------------------------------------------------- command line


def _split_folder_files(folder: Path, test_fraction: float, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    out: dict[str, list[Path]] = {"train": [], "test": []}
    for label in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(label.glob("*.wav"))
        rng.shuffle(files)
        n_test = max(1, round(len(files) * test_fraction))
        out["test"].extend(files[:n_test])
        out["train"].extend(files[n_test:])
    return out


def build_digits(out: Path, formats: Sequence[SaveFormat] = ("keras",), epochs: int = 30) -> dict[str, Any]:
    """Train the digits model and write models plus calibration/validation image folders."""
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = digits_split()
    model = train_digits_model(x_train, y_train, epochs=epochs)
    accuracy = evaluate(model, x_test.reshape(-1, DIGIT_SIZE, DIGIT_SIZE, 1).astype(np.float32), y_test)
    paths = {}
    suffix = {"keras": "digits.keras", "h5": "digits.h5", "savedmodel": "digits_savedmodel"}
    for fmt in formats:
        paths[fmt] = str(save_model(model, out / suffix[fmt], fmt))
    write_image_folder(x_train, y_train, out / "train")
    write_image_folder(x_test, y_test, out / "test")
    return {"accuracy": accuracy, "models": paths, "train": str(out / "train"), "test": str(out / "test")}


def build_keywords(out: Path, n_per_word: int = 80, epochs: int = 50) -> dict[str, Any]:
    """Synthesise the keyword dataset, split it by file, train and save the model."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    data = make_keyword_dataset(out / "all", n_per_word=n_per_word)
    split = _split_folder_files(data, 0.25, seed=0)
    for part, files in split.items():
        for path in files:
            target = out / part / path.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
    spec = keyword_preprocess()
    x_train, y_train, labels = load_keyword_features(out / "train", spec)
    x_test, y_test, _ = load_keyword_features(out / "test", spec)
    model = train_keyword_model(x_train, y_train, epochs=epochs, n_classes=len(labels))
    accuracy = evaluate(model, x_test, y_test)
    model_path = save_model(model, out / "keywords.keras", "keras")
    return {"accuracy": accuracy, "labels": labels, "model": str(model_path),
            "train": str(out / "train"), "test": str(out / "test"), "all": str(data)}


OUTLIER = 300.0


def build_outlier(source: Path, target: Path, factor: float = OUTLIER) -> Path:
    """A copy of a digits model that plain int8 post-training quantisation hurts.

    One unit of the first Dense layer is multiplied by ``factor`` (kernel and bias) and the matching
    input weights of the next Dense layer divided by it. ReLU is positively homogeneous, so the
    float model computes the same function, but that one activation spans hundreds of times the
    others' range: per-tensor int8 activations leave the other units one or two steps. The unit
    with the largest weights is chosen (a dead one would make the rescaling a no-op).
    """
    import keras

    model = keras.models.load_model(str(source), compile=False)
    first, second = [layer for layer in model.layers if type(layer).__name__ == "Dense"][:2]
    kernel, bias = first.get_weights()
    unit = int(np.argmax(np.abs(kernel).sum(axis=0)))
    kernel[:, unit] *= factor
    bias[unit] *= factor
    first.set_weights([kernel, bias])
    kernel2, bias2 = second.get_weights()
    kernel2[unit, :] /= factor
    second.set_weights([kernel2, bias2])
    model.save(str(target))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converter.examples digits|keywords --out DIR``: build example models
    (``outlier --model DIGITS.keras --out OUT.keras``: the digits model plain int8 hurts)."""
    import json

    parser = argparse.ArgumentParser(prog="python -m converter.examples", description=main.__doc__)
    parser.add_argument("which", choices=["digits", "keywords", "outlier"])
    parser.add_argument("--out", type=Path, required=True, help="a folder (outlier: the .keras file to write)")
    parser.add_argument("--model", type=Path, help="outlier: the digits .keras model to copy")
    parser.add_argument("--formats", default="keras", help="digits: comma list of keras,savedmodel,h5")
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--per-word", type=int, default=80)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.which == "outlier":
        if args.model is None:
            parser.error("outlier needs --model DIGITS.keras")
        print(build_outlier(args.model, args.out))
        return 0
    if args.which == "digits":
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        info = build_digits(args.out, formats, epochs=args.epochs or 30)  # type: ignore[arg-type]
    else:
        info = build_keywords(args.out, n_per_word=args.per_word, epochs=args.epochs or 50)
    (args.out / "info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
