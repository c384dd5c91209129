"""Object detection: one decoder per ``output.detection_format``, chosen and checked at load.

``tflite_postprocess`` and ``raw_boxes`` are decoded here; ``yolo`` in
:mod:`edge_agent.tasks.yolo` and ``ssd_anchors`` in :mod:`edge_agent.tasks.ssd`.
Output tensors are matched to their role by shape, never by their order in the
file. Boxes are reported in source pixels ``[x0, y0, x1, y1]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.model.manifest import Manifest, OutputSpec, TensorSpec
from edge_agent.preprocess import ImageTransform, dequantize
from edge_agent.sources.base import Item
from edge_agent.tasks.base import ImageTask, Result, activate, default_labels, label_of


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection; ``box`` is ``(x0, y0, x1, y1)``."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] = ()

    def as_dict(self, labels: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "label": label_of(labels, self.class_id),
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }
        if self.keypoints:
            body["keypoints"] = [[round(x, 1), round(y, 1)] for x, y in self.keypoints]
        return body


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


def class_aware_nms(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
                    max_out: int) -> np.ndarray:
    """NMS within each class, in one pass: each class is shifted to its own region of the plane."""
    if xyxy.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.max(np.abs(xyxy))) * 2.0 + 1.0
    # float64: in float32 a high class's shift (class x span) can exceed what keeps its boxes apart
    shifted = xyxy + class_ids[:, None] * span
    return nms(shifted, scores, iou_threshold, max_out)


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
    keep = class_aware_nms(xyxy, best, class_ids, iou_threshold, max_detections)
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


def _shape(spec: TensorSpec) -> list[int]:
    return list(spec.shape)


def _squeezed(spec: TensorSpec) -> list[int]:
    """Shape without the batch dimension."""
    return _shape(spec)[1:] if len(spec.shape) > 1 and spec.shape[0] == 1 else _shape(spec)


def match_postprocess_outputs(specs: list[TensorSpec]) -> tuple[int, int, int, int]:
    """Indices of (boxes, classes, scores, count) among ``TFLite_Detection_PostProcess`` outputs.

    Boxes are ``[1, K, 4]`` and the count has one value; classes and scores are both
    ``[1, K]``, told apart by name when the names say so, else in the op's own order.
    """
    where = "detection_format 'tflite_postprocess' expects 4 outputs: boxes [1, K, 4], classes [1, K], " \
            "scores [1, K] and a count [1]"
    if len(specs) != 4:
        raise ValueError(f"the model has {len(specs)} output(s) {[_shape(s) for s in specs]}; {where}")
    boxes = [i for i, s in enumerate(specs) if len(_squeezed(s)) == 2 and _squeezed(s)[-1] == 4]
    count = [i for i, s in enumerate(specs) if int(np.prod(s.shape)) == 1]
    if len(boxes) != 1 or len(count) != 1:
        raise ValueError(f"outputs {[_shape(s) for s in specs]} do not fit: {where}")
    k = _squeezed(specs[boxes[0]])[0]
    rest = [i for i in range(4) if i not in (boxes[0], count[0])]
    for i in rest:
        if _squeezed(specs[i]) != [k]:
            raise ValueError(f"output {specs[i].name or i!r} has shape {_shape(specs[i])}; {where} (K = {k})")
    named = {key: i for i in rest for key in ("class", "score") if key in specs[i].name.lower()}
    if len(named) == 2 and named["class"] != named["score"]:
        return boxes[0], named["class"], named["score"], count[0]
    return boxes[0], rest[0], rest[1], count[0]


def boxes_to_source(
    detections: list[Detection], transform: ImageTransform, input_w: int, input_h: int,
    normalized: bool,
) -> list[Detection]:
    """Map boxes (and keypoints) from model-input coordinates (normalised or pixels) to source pixels."""
    sx, sy = (float(input_w), float(input_h)) if normalized else (1.0, 1.0)
    out = []
    for det in detections:
        x0, y0 = transform.to_source(det.box[0] * sx, det.box[1] * sy)
        x1, y1 = transform.to_source(det.box[2] * sx, det.box[3] * sy)
        points = tuple(transform.to_source(x * sx, y * sy) for x, y in det.keypoints)
        out.append(Detection(det.class_id, det.score, (x0, y0, x1, y1), points))
    return out


class Decoder(ABC):
    """Turns a detector's raw outputs into detections in model-input pixels.

    Built once per model: the constructor checks every output's shape against the
    format and the label count and raises ValueError naming the tensor otherwise.
    """

    num_classes: int = 0

    def __init__(self, spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                 input_h: int) -> None:
        self.spec = spec
        self.outputs = outputs
        self.input_w, self.input_h = input_w, input_h

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], threshold: float) -> list[Detection]:
        """Detections (boxes in model-input pixels), best first."""

    def _to_input_pixels(self, dets: list[Detection]) -> list[Detection]:
        """Detections with boxes normalised to the input, scaled to input pixels."""
        sx, sy = float(self.input_w), float(self.input_h)
        return [Detection(d.class_id, d.score, (d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy))
                for d in dets]


class PostprocessDecoder(Decoder):
    """Outputs of the ``TFLite_Detection_PostProcess`` op: normalised yxyx boxes, class ids, scores."""

    def __init__(self, spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                 input_h: int) -> None:
        super().__init__(spec, n_labels, outputs, input_w, input_h)
        self.order = match_postprocess_outputs(outputs)
        # The op reports class ids, not a score per class: the label list is the class count.
        self.num_classes = n_labels

    def decode(self, outputs: list[np.ndarray], threshold: float) -> list[Detection]:
        b, c, s, n = (dequantize(outputs[i], self.outputs[i]) for i in self.order)
        dets = decode_postprocess(b, c, s, n, threshold, self.spec.max_detections)
        if self.num_classes:  # a class id outside the label list is never published
            dets = [d for d in dets if 0 <= d.class_id < self.num_classes]
        return self._to_input_pixels(dets)


class RawBoxesDecoder(Decoder):
    """Raw boxes ``[1, N, 4]`` (``box_format``) and scores ``[1, N, C]`` (or ``[1, N]``), NMS here."""

    def __init__(self, spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                 input_h: int) -> None:
        super().__init__(spec, n_labels, outputs, input_w, input_h)
        where = "detection_format 'raw_boxes' expects boxes [1, N, 4] and scores [1, N, C]"
        if len(outputs) != 2:
            raise ValueError(f"the model has {len(outputs)} output(s) {[_shape(s) for s in outputs]}; {where}")
        shapes = [_squeezed(s) for s in outputs]
        # Both [N, 4] (four classes): nothing tells them apart, the first is taken for the boxes.
        boxes = [i for i, d in enumerate(shapes) if len(d) == 2 and d[-1] == 4]
        if not boxes:
            raise ValueError(f"no output of {[_shape(s) for s in outputs]} has the box shape [1, N, 4]; {where}")
        self.box_i = boxes[0]
        self.score_i = 1 - self.box_i
        n = shapes[self.box_i][0]
        score_dims = shapes[self.score_i]
        if score_dims[:1] != [n] or len(score_dims) > 2:
            raise ValueError(f"output {outputs[self.score_i].name or self.score_i!r} has shape "
                             f"{_shape(outputs[self.score_i])}; {where} with N = {n}")
        self.num_classes = score_dims[1] if len(score_dims) == 2 else 1
        if n_labels and self.num_classes != n_labels:
            raise ValueError(f"output {outputs[self.score_i].name or self.score_i!r} has shape "
                             f"{_shape(outputs[self.score_i])} ({self.num_classes} classes) but {n_labels} labels "
                             "are given; fix the labels (one per class) or the model")

    def decode(self, outputs: list[np.ndarray], threshold: float) -> list[Detection]:
        boxes = dequantize(outputs[self.box_i], self.outputs[self.box_i])
        scores = activate(dequantize(outputs[self.score_i], self.outputs[self.score_i])
                          .reshape(-1, self.num_classes), self.spec.activation)
        dets = decode_raw(boxes, scores, self.spec.box_format, threshold, self.spec.iou_threshold,
                          self.spec.max_detections)
        # Normalised boxes stay within about [0, 1]; pixel boxes are larger.
        if boxes.size and float(np.max(np.abs(boxes))) > 1.5:
            return dets
        return self._to_input_pixels(dets)


class YoloDecoder(Decoder):
    """Ultralytics YOLOv5 / YOLOv8 / YOLO11 exports (see :mod:`edge_agent.tasks.yolo`)."""

    def __init__(self, spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                 input_h: int) -> None:
        from edge_agent.tasks.yolo import yolo_layout

        super().__init__(spec, n_labels, outputs, input_w, input_h)
        if len(outputs) != 1:
            raise ValueError(f"the model has {len(outputs)} outputs {[_shape(s) for s in outputs]}; detection_format "
                             "'yolo' expects one output [1, 4 + C, N] or [1, N, 5 + C]")
        if spec.activation == "softmax":
            raise ValueError("activation 'softmax' does not apply to yolo outputs; use 'sigmoid' for logits or 'none'")
        self.layout = yolo_layout(_shape(outputs[0]), n_labels, outputs[0].name)
        self.num_classes = self.layout.num_classes

    def decode(self, outputs: list[np.ndarray], threshold: float) -> list[Detection]:
        from edge_agent.tasks.yolo import decode_yolo

        return decode_yolo(outputs[0], self.outputs[0], self.layout, threshold, self.spec.iou_threshold,
                           self.spec.max_detections, self.input_w, self.input_h, self.spec.activation)


class SsdAnchorsDecoder(Decoder):
    """Raw SSD regressions ``[1, N, num_coords]`` and scores ``[1, N, C]`` with generated anchors."""

    def __init__(self, spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                 input_h: int) -> None:
        from edge_agent.model.manifest import BoxDecoding
        from edge_agent.tasks.ssd import generate_anchors

        super().__init__(spec, n_labels, outputs, input_w, input_h)
        assert spec.anchors is not None  # OutputSpec guarantees it for this format
        self.dec = spec.box_decoding or BoxDecoding()
        self.anchors = generate_anchors(spec.anchors)
        n = self.anchors.shape[0]
        coords = self.dec.num_coords
        classes = self.dec.num_classes or n_labels
        where = (f"detection_format 'ssd_anchors' expects box regressions [1, {n}, {coords}] and scores "
                 f"[1, {n}, {classes or 'C'}] ({n} anchors from [output.anchors], num_coords from "
                 "[output.box_decoding])")
        if len(outputs) != 2:
            raise ValueError(f"the model has {len(outputs)} output(s) {[_shape(s) for s in outputs]}; {where}")
        shapes = [_squeezed(s) for s in outputs]
        for i, dims in enumerate(shapes):
            if dims and dims[0] != n:
                raise ValueError(f"output {outputs[i].name or i!r} has shape {_shape(outputs[i])}; {where}")
        # Both [N, num_coords] (as many classes as coordinates): the first is taken for the boxes.
        boxes = [i for i, d in enumerate(shapes) if len(d) == 2 and d[1] == coords]
        if not boxes:
            raise ValueError(f"no output of {[_shape(s) for s in outputs]} has {coords} coordinates per anchor; "
                             f"{where}")
        self.box_i, self.score_i = boxes[0], 1 - boxes[0]
        score_dims = shapes[self.score_i]
        self.num_classes = score_dims[1] if len(score_dims) == 2 else 1
        if len(score_dims) > 2 or (classes and self.num_classes != classes):
            raise ValueError(f"output {outputs[self.score_i].name or self.score_i!r} has shape "
                             f"{_shape(outputs[self.score_i])}; {where}")
        if self.dec.num_boxes is not None and self.dec.num_boxes != n:
            raise ValueError(f"box_decoding.num_boxes is {self.dec.num_boxes} but the anchor options give {n} "
                             "anchors; fix [output.anchors]")

    def decode(self, outputs: list[np.ndarray], threshold: float) -> list[Detection]:
        from edge_agent.tasks.ssd import decode_boxes, decode_scores

        raw_scores = dequantize(outputs[self.score_i], self.outputs[self.score_i]).reshape(-1, self.num_classes)
        scores = decode_scores(raw_scores, self.dec, self.spec.activation == "sigmoid")
        if self.spec.activation == "softmax":
            scores = activate(scores, "softmax")
        class_ids = np.argmax(scores, axis=1)
        best = scores[np.arange(scores.shape[0]), class_ids]
        keep = np.flatnonzero(best >= threshold)
        if keep.size == 0:
            return []
        raw_boxes = dequantize(outputs[self.box_i], self.outputs[self.box_i]).reshape(-1, self.dec.num_coords)
        boxes, points = decode_boxes(raw_boxes[keep], self.anchors[keep], self.dec)
        chosen = class_aware_nms(boxes, best[keep], class_ids[keep], self.spec.iou_threshold,
                                 self.spec.max_detections)
        sx, sy = float(self.input_w), float(self.input_h)
        return [
            Detection(
                int(class_ids[keep[i]]), float(best[keep[i]]),
                (float(boxes[i, 0]) * sx, float(boxes[i, 1]) * sy, float(boxes[i, 2]) * sx, float(boxes[i, 3]) * sy),
                tuple((float(x) * sx, float(y) * sy) for x, y in points[i]),
            )
            for i in chosen
        ]


DecoderFactory = Callable[[OutputSpec, int, list[TensorSpec], int, int], Decoder]

DECODERS: dict[str, DecoderFactory] = {
    "tflite_postprocess": PostprocessDecoder,
    "raw_boxes": RawBoxesDecoder,
    "yolo": YoloDecoder,
    "ssd_anchors": SsdAnchorsDecoder,
}


def create_decoder(spec: OutputSpec, n_labels: int, outputs: list[TensorSpec], input_w: int,
                   input_h: int) -> Decoder:
    """The decoder of ``spec.detection_format``, checked against the model's outputs."""
    try:
        factory = DECODERS[spec.detection_format or ""]
    except KeyError:
        raise ValueError(f"unknown detection_format {spec.detection_format!r}; choose one of "
                         f"{sorted(DECODERS)}") from None
    return factory(spec, n_labels, outputs, input_w, input_h)


class DetectTask(ImageTask):
    event_type = "detection"

    def __init__(self, manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        super().__init__(manifest, labels, inputs, outputs)
        pre = self.preprocess_spec
        self.decoder = create_decoder(manifest.output, len(labels), outputs, pre.width, pre.height)
        self.labels = default_labels(labels, self.decoder.num_classes)

    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        dets = self.decoder.decode(outputs, self.threshold)
        known = len(self.labels)
        dets = [d for d in dets if 0 <= d.class_id < known or not known]
        dets = boxes_to_source(dets, context, self.preprocess_spec.width, self.preprocess_spec.height, False)
        # A box that lay wholly in the letterbox border is clipped flat: nothing of it is in the image.
        dets = [d for d in dets if d.box[2] > d.box[0] and d.box[3] > d.box[1]]
        body = {
            "frame": item.index,
            "detections": [d.as_dict(self.labels) for d in dets],
        }
        key = tuple(sorted(label_of(self.labels, d.class_id) for d in dets))
        return Result(self.event_type, body, key)
