"""Calibration and validation data, preprocessed exactly as the device will do it.

Accepted inputs:

* a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``): files directly in
  the folder are unlabelled, files in class subfolders take the subfolder name
  as their label (sorted label order);
* a folder of WAV files, laid out the same way;
* a ``.npz`` file with an array ``x`` and optionally ``y`` (integer class
  indices), or a ``.npy`` file holding ``x`` only.

Every image and every audio clip goes through :func:`edge_agent.preprocess.preprocess_image`
or :func:`edge_agent.preprocess.audio_features` with the manifest's own spec, so
the int8 ranges are calibrated on what the device feeds the model. Arrays are
treated by dtype and shape:

* ``uint8`` arrays of images (N, H, W) or (N, H, W, C) with C in 1, 3, 4 are raw
  images (BGR order like OpenCV) and are preprocessed;
* for audio, float arrays of shape (N, samples) that are not already the
  feature shape are raw mono audio in [-1, 1] at the manifest's sample rate and
  get the audio front end;
* any other float array whose per-sample size equals the model input is taken
  as *already preprocessed* and used as is. That is the caller's promise that it
  was produced with the same preprocessing options given to the converter.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from converter.errors import DataError
from edge_agent.errors import PreprocessError
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess
from edge_agent.preprocess import audio_features, preprocess_image, read_wav, resample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
AUDIO_SUFFIXES = frozenset({".wav"})
MIN_SAMPLES = 100


@dataclass(frozen=True)
class Dataset:
    """Preprocessed model inputs (float32, without the batch dim) and optional labels."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str] | None
    source: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.x[index], None if self.y is None else self.y[index], self.class_names,
                       self.source)


def progress(label: str, done: int, total: int) -> None:
    """Print a simple progress counter on stderr.

    On a terminal the counter is rewritten in place; in logs it appears at
    25 % steps so CI output stays short.
    """
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        if done == total or done % max(1, total // 100) == 0:
            print(f"\r  {label}: {done}/{total}", end=end, file=sys.stderr, flush=True)
        return
    step = max(1, total // 4)
    if done == total or done % step == 0:
        print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)


def data_kind(path: Path) -> str:
    """``image``, ``audio`` or ``array`` for a data path; raises DataError if unusable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() in (".npz", ".npy"):
            return "array"
        raise DataError(f"{path} is not a data folder or a .npz/.npy file")
    files = _data_files(path)
    if not files:
        raise DataError(
            f"data folder {path} is empty: put images (png/jpg) or WAV files in it, "
            "optionally in one subfolder per class"
        )
    kinds = {"audio" if f.suffix.lower() in AUDIO_SUFFIXES else "image" for f, _ in files}
    if len(kinds) > 1:
        raise DataError(f"data folder {path} mixes images and WAV files; use one kind per folder")
    return kinds.pop()


def _data_files(folder: Path) -> list[tuple[Path, str | None]]:
    """Data files of a folder with their class (subfolder name) or None; sorted."""
    wanted = IMAGE_SUFFIXES | AUDIO_SUFFIXES
    files: list[tuple[Path, str | None]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in wanted:
            files.append((entry, None))
        elif entry.is_dir() and not entry.name.startswith("."):
            for sub in sorted(entry.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in wanted:
                    files.append((sub, entry.name))
    return files


def _class_index(names: list[str], label_names: list[str] | None, source: Path) -> dict[str, int]:
    if label_names is None:
        return {name: i for i, name in enumerate(names)}
    unknown = [n for n in names if n not in label_names]
    if unknown:
        raise DataError(
            f"class folder(s) {', '.join(unknown)} in {source} are not in the labels "
            f"({', '.join(label_names[:10])}{', ...' if len(label_names) > 10 else ''}); "
            "rename the folders or fix --labels"
        )
    return {name: label_names.index(name) for name in names}


def load_dataset(
    path: Path,
    spec: ImagePreprocess | AudioPreprocess,
    input_shape: list[int],
    label_names: list[str] | None = None,
    role: str = "calibration",
) -> Dataset:
    """Load and preprocess a data path into model inputs of ``input_shape[1:]``.

    Args:
        path: folder or array file (see the module doc).
        spec: the preprocessing that goes into the manifest.
        input_shape: the model input shape including the batch dimension.
        label_names: known label order (``--labels``); class folders must be in it.
        role: ``calibration`` or ``validation``, for messages.

    Raises:
        DataError: empty, unreadable, wrongly shaped, NaN/inf or constant data.
    """
    path = Path(path)
    kind = data_kind(path)
    sample_shape = tuple(int(d) for d in input_shape[1:])
    if kind == "array":
        x, y = _load_array(path, spec, sample_shape, role)
        names = label_names
    else:
        if (kind == "audio") != isinstance(spec, AudioPreprocess):
            want = "audio (WAV)" if isinstance(spec, AudioPreprocess) else "image"
            raise DataError(f"{role} data {path} holds {kind} files but the model takes {want} input; "
                            "check --task and the data path")
        files = _data_files(path)
        classes = sorted({c for _, c in files if c is not None})
        labelled = all(c is not None for _, c in files)
        if classes and not labelled:
            raise DataError(f"{path} has files both in class subfolders and at the top level; "
                            "move the loose files into a class folder")
        mapping = _class_index(classes, label_names, path) if labelled else {}
        names = label_names if label_names is not None else (classes if labelled else None)
        samples: list[np.ndarray] = []
        for i, (file, _) in enumerate(files, start=1):
            samples.append(_load_file(file, spec, sample_shape))
            progress(f"{role} {kind} files", i, len(files))
        x = np.stack(samples).astype(np.float32)
        y = np.asarray([mapping[c] for _, c in files if c is not None], dtype=np.int64) if labelled else None
    check_values(x, path, role)
    if len(x) < MIN_SAMPLES:
        print(f"edge-convert: warning: only {len(x)} {role} samples in {path}; use at least "
              f"{MIN_SAMPLES} for reliable int8 ranges and figures", file=sys.stderr)
    return Dataset(x=x, y=y, class_names=names, source=str(path))


def _load_file(file: Path, spec: ImagePreprocess | AudioPreprocess, sample_shape: tuple[int, ...]
               ) -> np.ndarray:
    try:
        if isinstance(spec, ImagePreprocess):
            image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise DataError(f"cannot read image {file}; is it a valid png/jpg?")
            if image.dtype != np.uint8:  # 16-bit PNGs: scale to the 8-bit range cameras give
                image = (image.astype(np.float32) / 257.0).astype(np.uint8)
            features, _ = preprocess_image(image, spec)
        else:
            samples, rate = read_wav(file)
            features = audio_features(resample(samples, rate, spec.sample_rate), spec)
    except PreprocessError as exc:
        raise DataError(f"{file}: {exc}") from exc
    return _fit(features, sample_shape, str(file))


def _fit(features: np.ndarray, sample_shape: tuple[int, ...], where: str) -> np.ndarray:
    if features.size != int(np.prod(sample_shape)):
        raise DataError(
            f"{where}: preprocessed data has shape {tuple(features.shape)} but the model input "
            f"expects {sample_shape}; fix the preprocessing options (or the data) to match the model"
        )
    return features.reshape(sample_shape)


def _load_array(path: Path, spec: ImagePreprocess | AudioPreprocess, sample_shape: tuple[int, ...],
                role: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "x" not in archive:
                    raise DataError(f"{path} has no array 'x' (found: {', '.join(archive.files)})")
                x = np.asarray(archive["x"])
                y = np.asarray(archive["y"]) if "y" in archive else None
        else:
            x, y = np.load(path, allow_pickle=False), None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{role} array in {path} is empty")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: 'y' must be integer class indices, one per sample of 'x'")
        y = y.astype(np.int64)
    per_sample = int(np.prod(x.shape[1:]))
    target = int(np.prod(sample_shape))
    raw: list[np.ndarray] = []
    if isinstance(spec, ImagePreprocess) and x.dtype == np.uint8 and x.ndim in (3, 4):
        for i, image in enumerate(x, start=1):
            try:
                raw.append(preprocess_image(image, spec)[0])
            except PreprocessError as exc:
                raise DataError(f"{path}: sample {i - 1}: {exc}") from exc
            progress(f"{role} images", i, len(x))
    elif isinstance(spec, AudioPreprocess) and x.ndim == 2 and per_sample != target:
        for i, clip in enumerate(x, start=1):
            raw.append(audio_features(clip.astype(np.float32), spec))
            progress(f"{role} clips", i, len(x))
    else:
        if per_sample != target:
            raise DataError(
                f"{role} array in {path} has samples of shape {tuple(x.shape[1:])} but the model "
                f"input expects {sample_shape}; give raw uint8 images or preprocessed arrays of "
                "the model's input shape"
            )
        return x.reshape((len(x), *sample_shape)).astype(np.float32), y
    return np.stack([_fit(r, sample_shape, str(path)) for r in raw]).astype(np.float32), y


def check_values(x: np.ndarray, path: Path, role: str) -> None:
    """Refuse NaN/inf and constant data, which would give meaningless int8 ranges."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(x.shape[0] - np.all(finite.reshape(len(x), -1), axis=1).sum())
        raise DataError(f"{role} data {path} contains NaN or infinite values in {bad} sample(s); "
                        "clean the data before converting")
    if float(np.ptp(x)) == 0.0:
        raise DataError(f"{role} data {path} is constant (every value is {float(x.flat[0]):g}); "
                        "int8 ranges cannot be calibrated on it, use real samples")
