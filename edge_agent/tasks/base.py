"""Task interface: turn a source item into a model input, and raw outputs into a result.

Decoding lives in plain NumPy functions in each task module so it can be tested
without an interpreter; the Task classes only glue them to the manifest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.model.manifest import ImagePreprocess, Manifest, TensorSpec
from edge_agent.preprocess import dequantize, fit_to_tensor, pixel_lookup_table, resize_image
from edge_agent.sources.base import Frame, Item


@dataclass(frozen=True, slots=True)
class ClassScore:
    label: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4)}


@dataclass(frozen=True, slots=True)
class Result:
    """A decoded result. ``change_key`` feeds the on-change policy; ``always``
    results (audio events) bypass the event policy."""

    event_type: str
    body: dict[str, Any]
    change_key: tuple[Any, ...] = ()
    always: bool = False


def softmax(values: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = values - np.max(values, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / np.sum(exp, axis=axis, keepdims=True)
    return result


def sigmoid(values: np.ndarray) -> np.ndarray:
    # Clipped so that very negative logits do not overflow exp() (and warn).
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(values, -80.0, 80.0)))
    return result.astype(np.float32, copy=False)


def activate(values: np.ndarray, activation: str) -> np.ndarray:
    """Scores from raw outputs: ``softmax`` over the last axis, ``sigmoid`` per value, or ``none``."""
    if activation == "softmax":
        return softmax(values)
    if activation == "sigmoid":
        return sigmoid(values)
    return values


def get_scores(raw: np.ndarray, spec: TensorSpec, activation: str = "none", num_classes: int = 0) -> np.ndarray:
    """Float class scores of one output tensor (dequantised with the interpreter's params).

    An output with one score vector per frame (``[1, frames, classes]``, YAMNet style)
    is activated per frame and averaged over the frames.
    """
    values = dequantize(raw, spec)
    classes = num_classes or (int(values.shape[-1]) if values.ndim else 1)
    rows = activate(values.reshape(-1, classes), activation)
    result: np.ndarray = rows[0] if rows.shape[0] == 1 else rows.mean(axis=0)
    return result


def score_shape(spec: TensorSpec, n_labels: int, what: str) -> int:
    """Number of classes of a score output ``[1, C]`` or ``[1, frames, C]``; ValueError when it
    cannot hold one score per label."""
    shape = list(spec.shape)
    dims = shape[1:] if len(shape) > 1 else shape
    dims = [d for d in dims[:-1] if d != 1] + dims[-1:]  # [1, 1, 1, C] is [1, C]
    classes = int(dims[-1]) if dims else 1
    if not dims or len(dims) > 2 or classes < 1:
        raise ValueError(f"output {spec.name or 0!r} has shape {shape}; {what} expects [1, classes] "
                         "or [1, frames, classes]")
    if n_labels and classes != n_labels:
        raise ValueError(f"output {spec.name or 0!r} has shape {shape} ({classes} classes) but {n_labels} "
                         f"labels are given; fix the labels (one per class) or the model")
    return classes


def top_classes(scores: np.ndarray, labels: list[str], k: int, threshold: float) -> list[ClassScore]:
    """Best-first classes with a score at or above ``threshold`` (at most ``k``)."""
    if scores.size == 0:
        return []
    # A stable sort of all scores: equal scores keep class order, the same on every CPU (which
    # tied classes argpartition picks depends on numpy's SIMD kernel: x86 and ARM differ).
    idx = np.argsort(-scores, kind="stable")[:k]
    return [
        ClassScore(label_of(labels, int(i)), float(scores[i])) for i in idx if scores[i] >= threshold
    ]


def label_of(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def default_labels(labels: list[str], n_classes: int) -> list[str]:
    """The label list, or class numbers as labels when the model came without one."""
    return list(labels) if labels else [str(i) for i in range(n_classes)]


class Task(ABC):
    """One model task. ``prepare`` and ``decode`` run in the inference thread."""

    event_type: str = ""

    def __init__(self, manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        self.manifest = manifest
        self.labels = labels
        self.input_spec = inputs[0]
        self.output_specs = outputs
        self.threshold = manifest.output.score_threshold
        self.top_k = manifest.output.top_k
        self.activation = manifest.output.activation

    def configure(self, threshold: float | None = None, top_k: int | None = None) -> None:
        """Apply runtime overrides (None keeps the manifest's value)."""
        if threshold is not None:
            self.threshold = threshold
        if top_k is not None:
            self.top_k = top_k

    @abstractmethod
    def prepare(self, item: Item) -> tuple[np.ndarray, Any]:
        """Model input tensor (quantised, batch shape) and a context for ``decode``."""

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        """Result of one inference, or None when there is nothing to report."""


def _check_input_size(feature_shape: tuple[int, ...], spec: TensorSpec) -> None:
    """Refuse at load time a preprocessing that cannot fill the model input."""
    needed = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else int(np.prod(spec.shape))
    if int(np.prod(feature_shape)) != needed:
        raise ValueError(
            f"the preprocessing gives {'x'.join(map(str, feature_shape))} values but the model input is "
            f"{spec.shape}; fix the preprocess section (size, channels, window) to match the model"
        )


class ImageTask(Task):
    """Shared image preparation: manifest preprocessing, then the interpreter's quantisation."""

    def __init__(self, manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        super().__init__(manifest, labels, inputs, outputs)
        if not isinstance(manifest.preprocess, ImagePreprocess):
            raise TypeError("image task needs an image preprocess spec")
        self.preprocess_spec: ImagePreprocess = manifest.preprocess
        pre = self.preprocess_spec
        _check_input_size((pre.height, pre.width, pre.channels), self.input_spec)
        # Normalisation + quantisation as one lookup (bit-identical to the float path).
        table = pixel_lookup_table(self.preprocess_spec, self.input_spec)
        uniform = bool(np.all(table == table[:, :1]))
        self._lut = np.ascontiguousarray(table[:, :1] if uniform else table.reshape(256, 1, -1))

    def prepare(self, item: Item) -> tuple[np.ndarray, Any]:
        if not isinstance(item, Frame):
            raise TypeError("image task got audio")
        resized, transform = resize_image(item.image, self.preprocess_spec)
        try:
            values = cv2.LUT(resized, self._lut)
        except cv2.error:  # a dtype OpenCV's LUT does not take: same lookup in NumPy
            lut = self._lut.reshape(256, -1)
            values = lut[resized] if lut.shape[1] == 1 else np.take_along_axis(
                lut[None, None, :, :], resized[:, :, None, :].astype(np.intp), axis=2)
        return fit_to_tensor(values, self.input_spec.shape), transform
