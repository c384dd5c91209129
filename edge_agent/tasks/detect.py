"""Object detection: ``TFLite_Detection_PostProcess`` outputs, or raw boxes + scores
decoded with NumPy NMS. Boxes are reported in source pixels ``[x0, y0, x1, y1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.manifest import TensorSpec
from edge_agent.preprocess import ImageTransform, dequantize
from edge_agent.sources.base import Item
from edge_agent.tasks.base import ImageTask, Result, label_of


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection; ``box`` is ``(x0, y0, x1, y1)``."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self, labels: list[str]) -> dict[str, Any]:
        return {
            "label": label_of(labels, self.class_id),
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Convert (N, 4) boxes from ``yxyx``, ``xyxy`` or ``cxcywh`` to ``xyxy``."""
    b = boxes.astype(np.float32, copy=False)
    if box_format == "xyxy":
        return b
    if box_format == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if box_format == "cxcywh":
        half_w, half_h = b[:, 2] / 2.0, b[:, 3] / 2.0
        return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)
    raise ValueError(f"unknown box format {box_format!r}")


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (N, 4) xyxy boxes."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    result: np.ndarray = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return result


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_raw(
    boxes: np.ndarray, scores: np.ndarray, box_format: str, threshold: float,
    iou_threshold: float, max_detections: int,
) -> list[Detection]:
    """Decode raw (N, 4) boxes and (N,) or (N, C) scores with per-class NMS.

    Boxes stay in the model's coordinates (normalised or input pixels).
    """
    xyxy = to_xyxy(boxes.reshape(-1, 4), box_format)
    s = scores.reshape(xyxy.shape[0], -1)
    class_ids = np.argmax(s, axis=1)
    best = s[np.arange(s.shape[0]), class_ids]
    mask = best >= threshold
    if not np.any(mask):
        return []
    xyxy, best, class_ids = xyxy[mask], best[mask], class_ids[mask]
    # Per-class NMS in one pass: shift each class to its own region of the plane.
    span = float(np.max(np.abs(xyxy))) * 2.0 + 1.0
    shifted = xyxy + (class_ids.astype(np.float32) * span)[:, None]
    keep = nms(shifted, best, iou_threshold, max_detections)
    return [
        Detection(int(class_ids[i]), float(best[i]), tuple(float(v) for v in xyxy[i]))  # type: ignore[arg-type]
        for i in keep
    ]


def decode_postprocess(
    boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count: np.ndarray | int,
    threshold: float, max_detections: int,
) -> list[Detection]:
    """Decode ``TFLite_Detection_PostProcess`` outputs (boxes are normalised yxyx)."""
    n = int(np.asarray(count).reshape(-1)[0]) if np.asarray(count).size else 0
    b = boxes.reshape(-1, 4)[:n]
    c = classes.reshape(-1)[:n]
    s = scores.reshape(-1)[:n]
    out: list[Detection] = []
    for i in np.argsort(-s, kind="stable"):
        if s[i] < threshold or len(out) >= max_detections:
            break
        y0, x0, y1, x1 = (float(v) for v in b[i])
        # classes come back as float32 holding integers; round before the cast.
        out.append(Detection(round(float(c[i])), float(s[i]), (x0, y0, x1, y1)))
    return out


def split_postprocess_outputs(
    outputs: list[np.ndarray], specs: list[TensorSpec]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Find (boxes, classes, scores, count) among the four post-processing outputs.

    Tensor names are used when they say what they are; else the standard order
    (boxes, classes, scores, count) with shape checks.
    """
    if len(outputs) < 4:
        raise ValueError(f"TFLite_Detection_PostProcess has 4 outputs, the model has {len(outputs)}")
    named: dict[str, int] = {}
    for i, spec in enumerate(specs[: len(outputs)]):
        name = spec.name.lower()
        for key in ("box", "class", "score", "num"):
            if key in name and key not in named:
                named[key] = i
    if len(named) == 4:
        order = [named["box"], named["class"], named["score"], named["num"]]
    else:
        box_i = next((i for i, o in enumerate(outputs) if o.ndim == 3 and o.shape[-1] == 4), 0)
        count_i = next((i for i, o in enumerate(outputs) if o.size == 1), 3)
        rest = [i for i in range(len(outputs)) if i not in (box_i, count_i)][:2]
        order = [box_i, rest[0], rest[1], count_i]
    return outputs[order[0]], outputs[order[1]], outputs[order[2]], outputs[order[3]]


def boxes_to_source(
    detections: list[Detection], transform: ImageTransform, input_w: int, input_h: int,
    normalized: bool,
) -> list[Detection]:
    """Map boxes from model-input coordinates (normalised or pixels) to source pixels."""
    sx, sy = (float(input_w), float(input_h)) if normalized else (1.0, 1.0)
    out = []
    for det in detections:
        x0, y0 = transform.to_source(det.box[0] * sx, det.box[1] * sy)
        x1, y1 = transform.to_source(det.box[2] * sx, det.box[3] * sy)
        out.append(Detection(det.class_id, det.score, (x0, y0, x1, y1)))
    return out


class DetectTask(ImageTask):
    event_type = "detection"

    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        spec = self.manifest.output
        pre = self.preprocess_spec
        if spec.detection_format == "tflite_postprocess":
            boxes, classes, scores, count = split_postprocess_outputs(
                [dequantize(o, s) for o, s in zip(outputs, self.output_specs, strict=False)],
                self.output_specs,
            )
            dets = decode_postprocess(boxes, classes, scores, count, self.threshold, spec.max_detections)
            normalized = True
        else:
            box_i = next((i for i, o in enumerate(outputs) if o.shape[-1] == 4), 0)
            score_i = next(i for i in range(len(outputs)) if i != box_i) if len(outputs) > 1 else 0
            boxes = dequantize(outputs[box_i], self.output_specs[box_i])
            scores = dequantize(outputs[score_i], self.output_specs[score_i])
            if spec.apply_softmax:
                shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
                scores = shifted / shifted.sum(axis=-1, keepdims=True)
            dets = decode_raw(boxes, scores, spec.box_format, self.threshold, spec.iou_threshold,
                              spec.max_detections)
            # Normalised boxes stay within about [0, 1]; pixel boxes are larger.
            normalized = bool(boxes.size == 0 or float(np.max(np.abs(boxes))) <= 1.5)
        dets = boxes_to_source(dets, context, pre.width, pre.height, normalized)
        body = {
            "frame": item.index,
            "detections": [d.as_dict(self.labels) for d in dets],
        }
        key = tuple(sorted(label_of(self.labels, d.class_id) for d in dets))
        return Result(self.event_type, body, key)
