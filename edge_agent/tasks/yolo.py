"""Ultralytics YOLO outputs: YOLOv5 ``[1, N, 5 + C]`` and YOLOv8/YOLO11 ``[1, 4 + C, N]``.

The layout is told apart by the output's shape and the label count; boxes are
``cx, cy, w, h``, either normalised to the input (what Ultralytics' TFLite export
writes) or in input pixels (detected per frame). Candidates are picked before
anything else is dequantised, so an int8 ``[1, 84, 8400]`` output costs little more
than a float one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_agent.model.manifest import TensorSpec
from edge_agent.preprocess import dequantize
from edge_agent.tasks.base import sigmoid
from edge_agent.tasks.detect import Detection, class_aware_nms

# Normalised coordinates stay within about [0, 1]; pixel coordinates of an
# input of 32 px or more reach far beyond.
_NORMALISED_LIMIT = 1.5


@dataclass(frozen=True, slots=True)
class YoloLayout:
    """Where things are in a YOLO output tensor."""

    version: Literal["v5", "v8"]
    num_classes: int
    num_boxes: int
    attributes_first: bool  # [attributes, N] (YOLOv8 export) rather than [N, attributes]

    @property
    def num_attributes(self) -> int:
        return self.num_classes + (5 if self.version == "v5" else 4)

    def describe(self) -> str:
        a, n = self.num_attributes, self.num_boxes
        shape = f"[1, {a}, {n}]" if self.attributes_first else f"[1, {n}, {a}]"
        name = "YOLOv5" if self.version == "v5" else "YOLOv8/YOLO11"
        extra = " + objectness" if self.version == "v5" else ""
        return f"{name} layout {shape}: 4 box values{extra} + {self.num_classes} classes, {n} candidates"


def yolo_layout(shape: list[int], n_labels: int, name: str = "") -> YoloLayout:
    """The YOLO layout of an output of this shape.

    With labels, the attribute axis must be ``4 + C`` (YOLOv8/11) or ``5 + C``
    (YOLOv5); without, the shorter axis holds the attributes and its position
    says which (``[1, 84, 8400]`` is YOLOv8, ``[1, 25200, 85]`` is YOLOv5).

    Raises:
        ValueError: the shape fits neither layout; the message names the tensor.
    """
    dims = list(shape[1:]) if len(shape) == 3 and shape[0] == 1 else list(shape) if len(shape) == 2 else []
    expect = (f"[1, 4 + {n_labels}, N] (YOLOv8/11) or [1, N, 5 + {n_labels}] (YOLOv5) for {n_labels} labels"
              if n_labels else "[1, 4 + C, N] (YOLOv8/11) or [1, N, 5 + C] (YOLOv5)")
    problem = f"output {name or 0!r} has shape {list(shape)}; the yolo format expects {expect}"
    if len(dims) != 2 or max(dims) < 5:
        raise ValueError(problem)
    a, b = dims
    candidates: list[YoloLayout] = []
    if n_labels:
        for version, extra in (("v8", 4), ("v5", 5)):
            if a == extra + n_labels:
                candidates.append(YoloLayout(version, n_labels, b, True))  # type: ignore[arg-type]
            if b == extra + n_labels:
                candidates.append(YoloLayout(version, n_labels, a, False))  # type: ignore[arg-type]
    elif a < b and a >= 5:
        candidates.append(YoloLayout("v8", a - 4, b, True))
    elif b <= a and b >= 6:
        candidates.append(YoloLayout("v5", b - 5, a, False))
    if not candidates:
        raise ValueError(problem)
    # More candidates than attributes is what every real export has.
    return max(candidates, key=lambda lay: (lay.num_boxes > lay.num_attributes, lay.num_boxes))


def _quantised_floor(threshold: float, spec: TensorSpec, activation: str) -> float:
    """The raw value at or above which a score passes ``threshold``."""
    t = threshold
    if activation == "sigmoid":
        t = float(np.log(max(t, 1e-7) / max(1.0 - t, 1e-7)))  # logit: sigmoid is monotonic
    if spec.dtype == "float32" or spec.scale <= 0:
        return t
    return t / spec.scale + spec.zero_point


def decode_yolo(
    raw: np.ndarray, spec: TensorSpec, layout: YoloLayout, threshold: float, iou_threshold: float,
    max_detections: int, input_w: int, input_h: int, activation: str = "none",
) -> list[Detection]:
    """Detections in model-input pixels from one YOLO output (raw, as the interpreter gives it).

    Scores are class probabilities (``activation = "sigmoid"`` when the export left
    logits); YOLOv5 scores are objectness x class probability. NMS is per class.
    """
    table = raw.reshape(raw.shape[-2:])
    rows = table if layout.attributes_first else table.T  # (attributes, N); a view, no copy
    first_class = 5 if layout.version == "v5" else 4
    classes = rows[first_class:first_class + layout.num_classes]
    floor = _quantised_floor(threshold, spec, activation)
    if layout.version == "v8":
        # max along the class axis is a fast pairwise reduction; argmax along it is not,
        # so it runs only on the few candidates that pass.
        best_raw = classes.max(axis=0)
        keep = np.flatnonzero(best_raw >= floor)
        if keep.size == 0:
            return []
        class_ids = np.argmax(classes[:, keep], axis=0)
        scores = dequantize(best_raw[keep], spec)
        if activation == "sigmoid":
            scores = sigmoid(scores)
    else:
        # objectness x class <= objectness: the objectness row alone rules most candidates out
        keep = np.flatnonzero(rows[4] >= floor)
        if keep.size == 0:
            return []
        objectness = dequantize(rows[4, keep], spec)
        cls = dequantize(classes[:, keep], spec)
        if activation == "sigmoid":
            objectness, cls = sigmoid(objectness), sigmoid(cls)
        class_ids = np.argmax(cls, axis=0)
        scores = objectness * cls[class_ids, np.arange(keep.size)]
        passing = scores >= threshold
        keep, scores, class_ids = keep[passing], scores[passing], class_ids[passing]
        if keep.size == 0:
            return []
    boxes = dequantize(rows[:4, keep], spec).T  # (K, 4) cx, cy, w, h
    if _coordinates_normalised(rows, spec):
        boxes = boxes * np.array([input_w, input_h, input_w, input_h], dtype=np.float32)
    half = boxes[:, 2:4] / 2.0
    xyxy = np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)
    chosen = class_aware_nms(xyxy, scores, class_ids, iou_threshold, max_detections)
    return [
        Detection(int(class_ids[i]), float(scores[i]), (float(xyxy[i, 0]), float(xyxy[i, 1]),
                                                        float(xyxy[i, 2]), float(xyxy[i, 3])))
        for i in chosen
    ]


def _coordinates_normalised(rows: np.ndarray, spec: TensorSpec) -> bool:
    """Whether box centres are normalised to the input (over all candidates, not just kept ones)."""
    top = dequantize(np.asarray([rows[:2].max()]), spec)[0]
    return bool(top <= _NORMALISED_LIMIT)
