"""Decoder and task rules the mutation run (``make mutate``) found untested: rounding of published
values, activations at their clip bounds, score shapes, IoU and NMS at exact bounds, YOLO layout
names and thresholds, SSD anchors and box decoding, keyword spotting bounds."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.model.manifest import BoxDecoding, Manifest, SsdAnchors, TensorSpec
from edge_agent.preprocess import ImageTransform, normalize_image, quantize, resize_image
from edge_agent.sources.base import AudioWindow, Frame
from edge_agent.tasks import base as base_mod
from edge_agent.tasks import create_task
from edge_agent.tasks.audio import AudioTask, KeywordSpotter
from edge_agent.tasks.base import (
    ClassScore,
    _check_input_size,
    default_labels,
    get_scores,
    score_shape,
    sigmoid,
    softmax,
    top_classes,
)
from edge_agent.tasks.classify import ClassifyTask
from edge_agent.tasks.detect import (
    Detection,
    boxes_to_source,
    class_aware_nms,
    decode_postprocess,
    iou,
    nms,
    to_xyxy,
)
from edge_agent.tasks.ssd import _scale, decode_boxes, decode_scores, generate_anchors
from edge_agent.tasks.yolo import YoloLayout, _quantised_floor, decode_yolo, yolo_layout

SHA = "0" * 64
# Ties that NumPy's default (quick)sort puts out of order: what kind="stable" is for.
TIES = [2, 1, 1, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 1, 2, 2, 1]
STABLE_ORDER = sorted(range(len(TIES)), key=lambda i: -TIES[i])


def spec(shape: list[int], dtype: str = "float32", scale: float = 0.0, zero_point: int = 0,
         name: str = "") -> TensorSpec:
    return TensorSpec(name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zero_point)  # type: ignore[arg-type]


def manifest(task: str, preprocess: dict[str, Any], output: dict[str, Any], outputs: list[TensorSpec],
             inputs: list[TensorSpec]) -> Manifest:
    return Manifest.model_validate({
        "name": "t", "version": "1", "task": task, "model": {"sha256": SHA, "size_bytes": 1},
        "inputs": [s.model_dump() for s in inputs], "outputs": [s.model_dump() for s in outputs],
        "preprocess": preprocess, "output": output,
    })


def _frame(image: np.ndarray) -> Frame:
    return Frame(index=0, ts=0.0, image=image, capture_s=0.0)


def _close(got: np.ndarray, want: list[Any]) -> bool:
    return bool(np.allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=1e-6,
                            atol=1e-7))


# --------------------------------------------------------------------------- base: scores


def test_published_scores_are_rounded_to_four_places() -> None:
    assert ClassScore("a", 0.123456).as_dict() == {"label": "a", "score": 0.1235}
    det = Detection(2, 0.987654, (1.26, 2.34, 3.35, 4.44), ((5.55, 6.66),))
    assert det.as_dict(["x", "y", "z"]) == {"label": "z", "score": 0.9877, "box": [1.3, 2.3, 3.4, 4.4],
                                            "keypoints": [[5.5, 6.7]]}
    assert "keypoints" not in Detection(0, 0.5, (0, 0, 1, 1)).as_dict([])


def test_softmax_is_per_row() -> None:
    rows = np.array([[1.0, 2.0], [3.0, 5.0]])
    out = softmax(rows)
    expected = np.exp(rows) / np.exp(rows).sum(axis=1, keepdims=True)
    assert np.allclose(out, expected) and np.allclose(out.sum(axis=1), 1.0)


def test_sigmoid_is_clipped_at_80_and_float32() -> None:
    out = sigmoid(np.array([-1000.0, -80.0, 0.0, 80.0, 1000.0]))
    assert out.dtype == np.float32
    low, high = np.float32(1.0 / (1.0 + math.exp(80.0))), np.float32(1.0 / (1.0 + math.exp(-80.0)))
    assert out.tolist() == [low, low, 0.5, high, high]
    assert out[0] > 0.0  # clipped, not underflowed to zero


def test_get_scores_shapes() -> None:
    assert get_scores(np.array(0.25, dtype=np.float32), spec([])).tolist() == [0.25]  # a scalar output
    frames = np.array([[[0.2, 0.4], [0.6, 0.8], [1.0, 0.0]]], dtype=np.float32)  # [1, 3 frames, 2 classes]
    assert get_scores(frames, spec([1, 3, 2])).tolist() == pytest.approx([0.6, 0.4])
    one_class = np.array([[[0.2], [0.4], [0.9]]], dtype=np.float32)  # [1, 3 frames, 1 class]
    assert get_scores(one_class, spec([1, 3, 1])).tolist() == pytest.approx([0.5])


@pytest.mark.parametrize(("shape", "classes"), [
    ([1, 10], 10), ([10], 10), ([1, 5, 10], 10), ([1, 1, 1, 10], 10), ([1, 1, 5, 10], 10), ([2, 10], 10),
    ([1], 1), ([1, 1], 1),
])
def test_score_shape_accepts(shape: list[int], classes: int) -> None:
    assert score_shape(spec(shape), 0, "x") == classes
    assert score_shape(spec(shape), classes, "x") == classes


@pytest.mark.parametrize("shape", [[], [1, 2, 5, 10], [1, 2, 10, 3, 4], [1, 0]])
def test_score_shape_refuses(shape: list[int]) -> None:
    with pytest.raises(ValueError) as info:
        score_shape(spec(shape), 0, "audio classification")
    assert str(info.value) == (f"output 0 has shape {shape}; audio classification expects [1, classes] "
                               "or [1, frames, classes]")


def test_score_shape_names_the_tensor_and_the_label_mismatch() -> None:
    with pytest.raises(ValueError) as info:
        score_shape(spec([1, 2, 5, 10], name="logits"), 0, "x")
    assert str(info.value).startswith("output 'logits' has shape [1, 2, 5, 10]; ")
    with pytest.raises(ValueError) as info:
        score_shape(spec([1, 10]), 3, "x")
    assert str(info.value) == ("output 0 has shape [1, 10] (10 classes) but 3 labels are given; fix the labels "
                               "(one per class) or the model")


def test_top_classes_edges() -> None:
    assert top_classes(np.array([0.7]), ["only"], 5, 0.5) == [ClassScore("only", pytest.approx(0.7))]
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.5], dtype=np.float32)
    assert [c.label for c in top_classes(scores, list("abcde"), 2, 0.0)] == ["b", "d"]
    assert [c.label for c in top_classes(scores, list("abcde"), 3, 0.0)] == ["b", "d", "e"]
    ties = np.array(TIES, dtype=np.float32) / 4
    labels = [str(i) for i in range(len(TIES))]
    assert [c.label for c in top_classes(ties, labels, len(TIES), 0.0)] == [str(i) for i in STABLE_ORDER]


def test_default_labels_number_the_classes() -> None:
    assert default_labels([], 3) == ["0", "1", "2"]
    assert default_labels(["a"], 3) == ["a"]


def test_input_size_check() -> None:
    _check_input_size((10, 10, 3), spec([1, 10, 10, 3]))
    _check_input_size((16000,), spec([16000]))  # a 1-D input has no batch dimension
    _check_input_size((5,), spec([2, 5]))  # one batch row is fed
    with pytest.raises(ValueError) as info:
        _check_input_size((20, 20, 3), spec([1, 10, 10, 3]))
    assert str(info.value) == ("the preprocessing gives 20x20x3 values but the model input is [1, 10, 10, 3]; fix "
                               "the preprocess section (size, channels, window) to match the model")


# --------------------------------------------------------------------------- base: tasks


def _classify(pre: dict[str, Any], in_spec: TensorSpec, output: dict[str, Any] | None = None) -> Any:
    m = manifest("classify", {"kind": "image", **pre}, output or {}, [spec([1, 3])], [in_spec])
    return create_task(m, ["r", "g", "b"], [in_spec], [spec([1, 3])])


def test_task_keeps_its_manifest_labels_and_settings() -> None:
    in_spec = spec([1, 4, 4, 3])
    task = _classify({"width": 4, "height": 4}, in_spec, {"activation": "softmax", "top_k": 3,
                                                          "score_threshold": 0.1})
    assert task.manifest.name == "t" and task.labels == ["r", "g", "b"] and task.activation == "softmax"
    task.configure(top_k=1)
    assert (task.top_k, task.threshold) == (1, 0.1)
    task.configure()
    assert (task.top_k, task.threshold) == (1, 0.1)
    result = task.decode([np.array([[1.0, 3.0, 2.0]], dtype=np.float32)], _frame(np.zeros((4, 4, 3), np.uint8)), None)
    assert result is not None and [c["label"] for c in result.body["classes"]] == ["g"]


def test_image_and_audio_tasks_refuse_the_other_kind() -> None:
    image = _classify({"width": 4, "height": 4}, spec([1, 4, 4, 3]))
    with pytest.raises(TypeError, match=r"^image task got audio$"):
        image.prepare(AudioWindow(index=0, ts=0.0, t_start_s=0.0, samples=np.zeros(10, np.float32), capture_s=0.0))
    audio_in = spec([1, 1600])
    m = manifest("audio_classify", {"kind": "audio", "feature": "waveform", "window_s": 0.1},
                 {}, [spec([1, 2])], [audio_in])
    audio = create_task(m, ["up", "down"], [audio_in], [spec([1, 2])])
    with pytest.raises(TypeError, match=r"^audio task got an image$"):
        audio.prepare(_frame(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(TypeError, match=r"^image task needs an image preprocess spec$"):
        ClassifyTask(m, ["up", "down"], [audio_in], [spec([1, 2])])
    with pytest.raises(TypeError, match=r"^audio task needs an audio preprocess spec$"):
        AudioTask(image.manifest, ["r", "g", "b"], [spec([1, 4, 4, 3])], [spec([1, 3])])


@pytest.mark.parametrize(("pre", "in_spec"), [
    ({"width": 8, "height": 6, "mean": [127.5], "std": [127.5]}, spec([1, 6, 8, 3], "int8", 1 / 128, 0)),
    ({"width": 8, "height": 6, "mean": [10.0, 20.0, 30.0], "std": [2.0, 3.0, 4.0]}, spec([1, 6, 8, 3])),
    ({"width": 8, "height": 6, "color": "gray", "channels": 1}, spec([1, 6, 8, 1], "uint8", 1.0, 0)),
])
def test_numpy_lookup_fallback_matches_the_float_path(monkeypatch, pre: dict[str, Any], in_spec: TensorSpec) -> None:
    """OpenCV's LUT is skipped when it refuses a table; the NumPy lookup must give the same tensor."""
    task = _classify(pre, in_spec)
    frame = np.random.default_rng(3).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    fast, _ = task.prepare(_frame(frame))

    def refuse(*args: Any) -> Any:
        raise cv2.error("LUT refused")

    monkeypatch.setattr(base_mod.cv2, "LUT", refuse)
    slow, _ = task.prepare(_frame(frame))
    resized, _ = resize_image(frame, task.preprocess_spec)
    expected = quantize(normalize_image(resized, task.preprocess_spec), in_spec).reshape(in_spec.shape)
    assert slow.dtype == fast.dtype == expected.dtype
    assert np.array_equal(slow, expected) and np.array_equal(fast, expected)


# --------------------------------------------------------------------------- detect


def test_to_xyxy_copies_nothing_for_float32_and_names_bad_formats() -> None:
    boxes = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    assert np.shares_memory(to_xyxy(boxes, "xyxy"), boxes)
    assert to_xyxy(np.array([[1, 2, 3, 4]], dtype=np.int64), "xyxy").dtype == np.float32
    with pytest.raises(ValueError) as info:
        to_xyxy(boxes, "xywh")
    assert str(info.value) == "unknown box format 'xywh'"


def test_iou_of_asymmetric_boxes() -> None:
    box = np.array([0.0, 0.0, 4.0, 2.0])
    others = np.array([[2.0, 1.0, 6.0, 5.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 4.0, 2.0], [1.0, -1.0, 3.0, 3.0]])
    # intersections 2x1, none, all, 2x2; areas 8 | 16, 1, 8, 8
    assert iou(box, others).tolist() == pytest.approx([2 / 22, 0.0, 1.0, 4 / 12])
    flat = np.array([1.0, 1.0, 1.0, 1.0])
    assert iou(flat, np.array([[1.0, 1.0, 1.0, 1.0]])).tolist() == [0.0]  # empty union: 0, not NaN or 1


def test_nms_keeps_a_box_at_exactly_the_threshold() -> None:
    boxes = np.array([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0]])  # IoU 1/3
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 1 / 3, 10).tolist() == [0, 1]
    assert nms(boxes, scores, 0.3, 10).tolist() == [0]
    assert nms(boxes, scores, 1 / 3, 10).dtype == np.int64
    far = np.array([[10.0 * i, 0.0, 10.0 * i + 1, 1.0] for i in range(len(TIES))])
    assert nms(far, np.array(TIES, dtype=np.float64), 0.5, 100).tolist() == STABLE_ORDER  # ties keep output order


def test_class_aware_nms_empty_and_far_apart_classes() -> None:
    empty = class_aware_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5, 10)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    boxes = np.array([[-5.0, -5.0, 5.0, 5.0], [-5.0, -5.0, 5.0, 5.0], [-5.0, -5.0, 5.0, 5.0]])
    kept = class_aware_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]), 0.5, 10)
    assert kept.tolist() == [0, 1, 2]  # the same box in three classes never suppresses itself


def test_postprocess_without_a_count_is_empty() -> None:
    assert decode_postprocess(np.zeros((1, 2, 4)), np.zeros((1, 2)), np.ones((1, 2)), np.zeros(0), 0.1, 5) == []
    dets = decode_postprocess(np.array([[[0.1, 0.2, 0.3, 0.4]]]), np.array([[2.0]]), np.array([[0.9]]),
                              np.array([1.0]), 0.5, 5)
    assert dets == [Detection(2, pytest.approx(0.9), (pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.4),
                                                      pytest.approx(0.3)))]


def test_boxes_and_keypoints_to_source_scale_each_axis() -> None:
    transform = ImageTransform(0.5, 0.25, 0.0, 0.0, 1000, 1000)
    det = Detection(1, 0.5, (0.1, 0.2, 0.3, 0.4), ((0.5, 0.6),))
    out = boxes_to_source([det], transform, 100, 200, normalized=True)
    assert out[0].box == pytest.approx((20.0, 160.0, 60.0, 320.0))
    assert out[0].keypoints == (pytest.approx((100.0, 480.0)),)
    assert (out[0].class_id, out[0].score) == (1, 0.5)


# --------------------------------------------------------------------------- YOLO


def test_yolo_layout_descriptions() -> None:
    assert YoloLayout("v8", 80, 8400, True).describe() == (
        "YOLOv8/YOLO11 layout [1, 84, 8400]: 4 box values + 80 classes, 8400 candidates")
    assert YoloLayout("v5", 80, 25200, False).describe() == (
        "YOLOv5 layout [1, 25200, 85]: 4 box values + objectness + 80 classes, 25200 candidates")


@pytest.mark.parametrize(("shape", "labels", "message"), [
    ([1, 4, 100], 0, "output 0 has shape [1, 4, 100]; the yolo format expects [1, 4 + C, N] (YOLOv8/11) or "
                     "[1, N, 5 + C] (YOLOv5)"),
    ([2, 84, 100], 0, "output 0 has shape [2, 84, 100]; the yolo format expects [1, 4 + C, N] (YOLOv8/11) or "
                      "[1, N, 5 + C] (YOLOv5)"),
    ([1, 1, 84, 100], 0, "output 0 has shape [1, 1, 84, 100]; the yolo format expects [1, 4 + C, N] (YOLOv8/11) "
                         "or [1, N, 5 + C] (YOLOv5)"),
    ([1, 100, 5], 0, "output 0 has shape [1, 100, 5]; the yolo format expects [1, 4 + C, N] (YOLOv8/11) or "
                     "[1, N, 5 + C] (YOLOv5)"),
])
def test_yolo_layout_refusals(shape: list[int], labels: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        yolo_layout(shape, labels)
    assert str(info.value) == message


@pytest.mark.parametrize(("shape", "version", "classes", "boxes", "first"), [
    ([84, 8400], "v8", 80, 8400, True),  # 2-D, no batch
    ([1, 5, 6], "v8", 1, 6, True),  # the smallest YOLOv8 table
    ([1, 6, 6], "v5", 1, 6, False),  # square: attributes last
    ([1, 7, 6], "v5", 1, 7, False),
])
def test_yolo_layout_without_labels(shape: list[int], version: str, classes: int, boxes: int, first: bool) -> None:
    layout = yolo_layout(shape, 0)
    assert (layout.version, layout.num_classes, layout.num_boxes, layout.attributes_first) == (
        version, classes, boxes, first)


def test_yolo_layout_prefers_more_candidates_than_attributes() -> None:
    # [1, 9, 9] with 5 labels: v8 [4 + 5, N=9] both ways; the tie keeps attributes first
    assert yolo_layout([1, 9, 9], 5).attributes_first is True
    layout = yolo_layout([1, 9, 30], 4)  # 9 = 4 + 5 (v8, 30 boxes) or 5 + 4 (v5, 30 boxes)
    assert layout.num_boxes == 30


def test_quantised_floor() -> None:
    assert _quantised_floor(0.5, spec([1]), "none") == 0.5
    assert _quantised_floor(0.5, spec([1]), "sigmoid") == pytest.approx(0.0)
    assert _quantised_floor(0.8, spec([1]), "sigmoid") == pytest.approx(math.log(4.0))
    assert _quantised_floor(0.0, spec([1]), "sigmoid") == pytest.approx(math.log(1e-7))
    assert _quantised_floor(1.0, spec([1]), "sigmoid") == pytest.approx(-math.log(1e-7))
    assert _quantised_floor(0.5, spec([1], "int8", 0.25, -10), "none") == pytest.approx(-8.0)
    assert _quantised_floor(0.5, spec([1], "int8", 0.0, -10), "none") == 0.5  # no scale: raw values


def _v8_table(scores: list[float], boxes: list[list[float]]) -> np.ndarray:
    """[1, 4 + 1, N] with one class."""
    table = np.array([[b[i] for b in boxes] for i in range(4)] + [scores], dtype=np.float32)
    return table[None]


def test_yolo_v8_threshold_is_inclusive_and_boxes_scale_from_normalised() -> None:
    raw = _v8_table([0.5, 0.49], [[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]])
    layout = yolo_layout([1, 5, 2], 1)
    dets = decode_yolo(raw, spec([1, 5, 2]), layout, 0.5, 0.5, 10, 100, 50)
    assert len(dets) == 1 and dets[0].score == 0.5
    assert dets[0].box == pytest.approx((40.0, 15.0, 60.0, 35.0))


def test_yolo_v5_objectness_times_class_with_sigmoid_logits() -> None:
    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    # [1, N=2, 5 + 2]: cx, cy, w, h, objectness, class 0, class 1 (logits), pixel boxes
    raw = np.array([[[20, 20, 10, 10, logit(0.8), logit(0.25), logit(0.75)],
                     [60, 60, 10, 10, logit(0.5), logit(0.9), logit(0.1)]]], dtype=np.float32)
    layout = yolo_layout([1, 2, 7], 2)
    dets = decode_yolo(raw, spec([1, 2, 7]), layout, 0.45, 0.5, 10, 100, 100, "sigmoid")
    assert [(d.class_id, round(d.score, 4)) for d in dets] == [(1, 0.6), (0, 0.45)]
    assert dets[0].box == pytest.approx((15.0, 15.0, 25.0, 25.0))
    assert decode_yolo(raw, spec([1, 2, 7]), layout, 0.61, 0.5, 10, 100, 100, "sigmoid") == []


def test_yolo_v5_int8_dequantises_objectness_and_classes() -> None:
    s = spec([1, 1, 7], "int8", 0.01, 0)
    raw = np.array([[[50, 50, 20, 20, 90, 80, 10]]], dtype=np.int8)  # pixel boxes: 0.5 → normalised? no: scale
    layout = yolo_layout([1, 1, 7], 2)
    dets = decode_yolo(raw, s, layout, 0.5, 0.5, 10, 100, 100)
    assert [(d.class_id, round(d.score, 3)) for d in dets] == [(0, 0.72)]
    assert dets[0].box == pytest.approx((40.0, 40.0, 60.0, 60.0))  # 0.5, 0.5, 0.2, 0.2 normalised


# --------------------------------------------------------------------------- SSD


def test_scale_interpolates_between_min_and_max() -> None:
    assert _scale(0.2, 0.8, 0, 1) == pytest.approx(0.5)
    assert _scale(0.2, 0.8, 1, 4) == pytest.approx(0.4)
    assert _scale(0.2, 0.8, 3, 4) == pytest.approx(0.8)


def test_anchors_from_feature_maps_without_strides() -> None:
    opts = SsdAnchors(num_layers=2, min_scale=0.2, max_scale=0.6, input_size_width=8, input_size_height=8,
                      feature_map_width=[2, 1], feature_map_height=[1, 1], aspect_ratios=[1.0, 4.0])
    anchors = generate_anchors(opts)
    assert anchors.dtype == np.float32 and anchors.shape == (6, 4)
    # layer 0: scale 0.2, cells (0.25, 0.5) and (0.75, 0.5); ratio 4: w = 0.4, h = 0.1
    assert _close(anchors[:4], [[0.25, 0.5, 0.2, 0.2], [0.25, 0.5, 0.4, 0.1],
                                [0.75, 0.5, 0.2, 0.2], [0.75, 0.5, 0.4, 0.1]])
    # layer 1: scale 0.6
    assert _close(anchors[4:], [[0.5, 0.5, 0.6, 0.6], [0.5, 0.5, 1.2, 0.3]])


def test_lowest_layer_reduced_and_interpolated_scales() -> None:
    opts = SsdAnchors(num_layers=2, min_scale=0.3, max_scale=0.6, input_size_width=4, input_size_height=4,
                      strides=[4, 4], aspect_ratios=[1.0], reduce_boxes_in_lowest_layer=True,
                      interpolated_scale_aspect_ratio=1.0)
    anchors = generate_anchors(opts)
    # one cell; layer 0 reduced: (0.1, 1), (0.3, 2), (0.3, 0.5); layer 1 (same stride): 0.6 and, being the last
    # layer, the interpolated sqrt(0.6 * 1.0)
    w = [0.1, 0.3 * math.sqrt(2), 0.3 * math.sqrt(0.5), 0.6, math.sqrt(0.6)]
    h = [0.1, 0.3 / math.sqrt(2), 0.3 / math.sqrt(0.5), 0.6, math.sqrt(0.6)]
    assert anchors[:, 2].tolist() == pytest.approx(w) and anchors[:, 3].tolist() == pytest.approx(h)


def test_anchor_count_bound_is_inclusive(monkeypatch) -> None:
    from edge_agent.tasks import ssd

    opts = SsdAnchors(num_layers=1, min_scale=0.2, max_scale=0.6, input_size_width=4, input_size_height=4,
                      feature_map_width=[3], feature_map_height=[2], aspect_ratios=[1.0, 2.0])
    monkeypatch.setattr(ssd, "MAX_ANCHORS", 3 * 2 * 2)  # 6 cells x 2 ratios
    assert generate_anchors(opts).shape == (12, 4)
    monkeypatch.setattr(ssd, "MAX_ANCHORS", 11)
    with pytest.raises(ValueError) as info:
        generate_anchors(opts)
    assert str(info.value) == "the anchor options give more than 11 anchors; check strides and sizes"


def test_decode_boxes_with_offset_scales_and_keypoints() -> None:
    dec = BoxDecoding(num_coords=10, box_coord_offset=2, keypoint_coord_offset=6, num_keypoints=2,
                      x_scale=2.0, y_scale=4.0, w_scale=2.0, h_scale=4.0)
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], dtype=np.float32)
    # y, x, h, w at offset 2, keypoints (y, x) pairs at 6 and 8
    raw = np.array([[9, 9, 4.0, 2.0, 8.0, 4.0, 4.0, 2.0, -4.0, -2.0]], dtype=np.float32)
    boxes, points = decode_boxes(raw, anchors, dec)
    # cx = 2/2*0.2+0.5 = 0.7, cy = 4/4*0.4+0.5 = 0.9, w = 4/2*0.2 = 0.4, h = 8/4*0.4 = 0.8
    assert boxes.dtype == np.float32 and points.dtype == np.float32
    assert _close(boxes, [[0.5, 0.5, 0.9, 1.3]])
    assert _close(points, [[[0.7, 0.9], [0.3, 0.1]]])
    reverse = BoxDecoding(num_coords=7, num_keypoints=1, keypoint_coord_offset=4, reverse_output_order=True)
    boxes, points = decode_boxes(np.array([[0.1, 0.2, 0.3, 0.4, 0.05, 0.06, 9.0]], dtype=np.float32),
                                 np.array([[0.5, 0.5, 1.0, 1.0]], dtype=np.float32), reverse)
    assert _close(boxes, [[0.45, 0.5, 0.75, 0.9]])  # x, y, w, h order
    assert _close(points, [[[0.55, 0.56]]])


def test_exponential_box_sizes_are_clipped_at_80() -> None:
    dec = BoxDecoding(apply_exponential_on_box_size=True, w_scale=2.0, h_scale=1.0)
    anchors = np.array([[0.0, 0.0, 1.0, 1.0]] * 3, dtype=np.float32)
    raw = np.array([[0, 0, 2.0, 4.0], [0, 0, 1000.0, 1000.0], [0, 0, -1000.0, -1000.0]], dtype=np.float32)
    boxes, _ = decode_boxes(raw, anchors, dec)
    w = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    h = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    assert w[0] == pytest.approx(math.exp(2.0)) and h[0] == pytest.approx(math.exp(2.0))  # w/2 and h/1
    assert w[1] == pytest.approx(math.exp(80.0), rel=1e-3) and h[1] == pytest.approx(math.exp(80.0), rel=1e-3)
    # abs=0: pytest.approx would otherwise take 0 (no lower clip, exp underflowed) for exp(-80)
    assert w[2] == pytest.approx(math.exp(-80.0), rel=1e-3, abs=0)
    assert h[2] == pytest.approx(math.exp(-80.0), rel=1e-3, abs=0)


def test_decode_scores() -> None:
    raw = np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32)
    plain = decode_scores(raw, BoxDecoding())
    assert np.shares_memory(plain, raw)  # no sigmoid asked for: the raw scores, no copy
    squashed = decode_scores(raw, BoxDecoding(sigmoid_score=True))
    low, high = 1.0 / (1.0 + math.exp(80.0)), 1.0 / (1.0 + math.exp(-80.0))
    assert squashed.dtype == np.float32
    assert _close(squashed, [[low, 0.5, high]]) and squashed[0, 0] > 0.0  # clipped, not underflowed
    assert squashed[0, 0] == np.float32(low)  # clipped at exactly -80
    clipped = decode_scores(raw, BoxDecoding(sigmoid_score=True, score_clipping_thresh=2.0))
    assert _close(clipped, [[1 / (1 + math.e ** 2), 0.5, 1 / (1 + math.e ** -2)]])
    assert decode_scores(np.array([[0.0]], dtype=np.float32), BoxDecoding(), sigmoid_too=True).tolist() == [[0.5]]
    assert decode_scores(np.array([[1, 2]], dtype=np.int8), BoxDecoding()).dtype == np.float32


# --------------------------------------------------------------------------- keyword spotting


def test_spotter_fires_at_exactly_the_threshold_and_measures_refractory_from_the_last_event() -> None:
    spotter = KeywordSpotter(threshold=0.5, refractory_s=1.0, background=set())
    assert spotter.update(10.0, np.array([0.5, 0.2])) == 0
    assert spotter.update(10.5, np.array([0.1, 0.9])) is None  # within 1 s of the event at 10.0
    assert spotter.update(11.0, np.array([0.1, 0.2])) is None  # silence re-arms
    assert spotter.update(11.5, np.array([0.1, 0.9])) == 1  # 1.5 s after the last event
    fresh = KeywordSpotter(threshold=0.5, refractory_s=1.0, background=set())
    assert fresh.update(0.0, np.array([0.2, 0.1])) is None  # below: nothing is active yet
    assert fresh.update(0.1, np.array([0.9, 0.1])) == 0  # label 0 fires on its first appearance


def _audio_task(**output: Any) -> Any:
    in_spec, out_spec = spec([1, 4000]), spec([1, 3])
    m = manifest("audio_classify", {"kind": "audio", "sample_rate": 8000, "window_s": 0.5, "hop_s": 0.25,
                                    "feature": "waveform", "fmax": 4000.0},
                 {"labels": ["_silence_", "yes", "no"], "background_labels": ["_silence_"], "score_threshold": 0.5,
                  "smoothing_windows": 1, "refractory_s": 0.0, **output}, [out_spec], [in_spec])
    return create_task(m, ["_silence_", "yes", "no"], [in_spec], [out_spec])


def _window(index: int, t_start_s: float) -> AudioWindow:
    return AudioWindow(index=index, ts=0.0, t_start_s=t_start_s, samples=np.zeros(4000, np.float32), capture_s=0.0)


def test_keyword_event_body() -> None:
    task = _audio_task(activation="softmax")
    window = _window(7, 1.23456)
    logits = np.log(np.array([[0.1, 0.7, 0.2]], dtype=np.float32))  # softmax gives the scores back
    result = task.decode([logits], window, None)
    assert result is not None and result.event_type == "audio" and result.always
    assert result.change_key == ("yes",)
    assert result.body == {"window": 7, "label": "yes", "t_start_s": 1.235, "t_end_s": 1.735,
                           "classes": [{"label": "yes", "score": 0.7}, {"label": "no", "score": 0.2}]}
    silence = np.log(np.array([[0.9, 0.05, 0.05]], dtype=np.float32))
    assert task.decode([silence], _window(8, 1.5), None) is None  # re-armed
    again = task.decode([logits], _window(9, 2.0), None)  # refractory 0: the word fires again
    assert again is not None and again.body["window"] == 9


def test_window_event_body_lists_every_label_over_the_threshold() -> None:
    task = _audio_task(audio_events="window", activation="sigmoid", top_k=5)
    logits = np.array([[4.0, 1.0, 0.5]], dtype=np.float32)  # sigmoid: 0.98 (background), 0.73, 0.62
    result = task.decode([logits], _window(3, 2.00049), None)
    assert result is not None and result.change_key == ("yes", "no") and result.always
    assert result.body == {"window": 3, "t_start_s": 2.0, "t_end_s": 2.5,
                           "classes": [{"label": "yes", "score": 0.7311}, {"label": "no", "score": 0.6225}]}

    many = [f"l{i}" for i in range(len(TIES))]
    in_spec, out_spec = spec([1, 4000]), spec([1, len(TIES)])
    m = manifest("audio_classify", {"kind": "audio", "sample_rate": 8000, "window_s": 0.5, "feature": "waveform",
                                    "fmax": 4000.0},
                 {"audio_events": "window", "score_threshold": 0.1, "top_k": 100}, [out_spec], [in_spec])
    wide = create_task(m, many, [in_spec], [out_spec])
    tied = wide.decode([np.array([TIES], dtype=np.float32) / 4 + 0.1], _window(0, 0.0), None)
    assert tied is not None
    assert [c["label"] for c in tied.body["classes"]] == [f"l{i}" for i in STABLE_ORDER]  # ties in label order


def test_audio_threshold_override_reaches_the_spotter() -> None:
    task = _audio_task()
    task.configure(threshold=0.8, top_k=1)
    assert task.spotter.threshold == 0.8 and task.top_k == 1
    assert task.decode([np.array([[0.1, 0.7, 0.2]], np.float32)], _window(0, 0.0), None) is None
    task.configure(threshold=None)
    assert task.spotter.threshold == 0.8


# --------------------------------------------------------------------------- detection decoders


def _out(**kw: Any) -> Any:
    from edge_agent.model.manifest import OutputSpec

    return OutputSpec.model_validate(kw)


def _decoder_error(output: dict[str, Any], n_labels: int, outputs: list[TensorSpec]) -> str:
    from edge_agent.tasks.detect import create_decoder

    with pytest.raises(ValueError) as info:
        create_decoder(_out(**output), n_labels, outputs, 100, 50)
    return str(info.value)


def test_iou_with_offset_boxes() -> None:
    box = np.array([1.0, 2.0, 5.0, 4.0])  # 4 x 2
    others = np.array([[3.0, 3.0, 7.0, 6.0], [2.0, 0.0, 3.0, 5.0]])  # 4 x 3 (inter 2 x 1), 1 x 5 (inter 1 x 2)
    assert iou(box, others).tolist() == pytest.approx([2 / (8 + 12 - 2), 2 / (8 + 5 - 2)])


def test_unknown_detection_format_lists_the_known_ones() -> None:
    from edge_agent.tasks import detect

    with pytest.raises(ValueError) as info:
        detect.create_decoder(type("S", (), {"detection_format": "bogus"})(), 0, [], 1, 1)  # type: ignore[arg-type]
    assert str(info.value) == ("unknown detection_format 'bogus'; choose one of ['raw_boxes', 'ssd_anchors', "
                               "'tflite_postprocess', 'yolo']")


def test_postprocess_output_checks() -> None:
    where = ("detection_format 'tflite_postprocess' expects 4 outputs: boxes [1, K, 4], classes [1, K], "
             "scores [1, K] and a count [1]")
    assert _decoder_error({"detection_format": "tflite_postprocess"}, 0, [spec([1, 10, 4])]) == (
        f"the model has 1 output(s) [[1, 10, 4]]; {where}")
    four = [spec([1, 10, 4]), spec([1, 10]), spec([1, 9], name="scores"), spec([1])]
    assert _decoder_error({"detection_format": "tflite_postprocess"}, 0, four) == (
        f"output 'scores' has shape [1, 9]; {where} (K = 10)")
    no_box = [spec([1, 10, 5]), spec([1, 10]), spec([1, 10]), spec([1])]
    assert _decoder_error({"detection_format": "tflite_postprocess"}, 0, no_box) == (
        f"outputs [[1, 10, 5], [1, 10], [1, 10], [1]] do not fit: {where}")


def test_postprocess_decoder_scales_boxes_and_drops_unknown_classes() -> None:
    from edge_agent.tasks.detect import create_decoder

    outputs = [spec([1, 3, 4]), spec([1, 3]), spec([1, 3]), spec([1])]
    dec = create_decoder(_out(detection_format="tflite_postprocess", max_detections=2), 2, outputs, 100, 50)
    assert dec.num_classes == 2
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6], [0.0, 0.0, 1.0, 1.0]]], dtype=np.float32)
    classes = np.array([[1.0, 2.0, 0.0]], dtype=np.float32)  # class 2 is not a label
    scores = np.array([[0.9, 0.95, 0.6]], dtype=np.float32)
    dets = dec.decode([boxes, classes, scores, np.array([3.0], dtype=np.float32)], 0.5)
    assert [(d.class_id, round(d.score, 2)) for d in dets] == [(1, 0.9)]  # two kept, the unknown one dropped
    assert dets[0].box == pytest.approx((20.0, 5.0, 40.0, 15.0))  # yxyx → x0, y0, x1, y1 in pixels


def test_raw_boxes_output_checks() -> None:
    where = "detection_format 'raw_boxes' expects boxes [1, N, 4] and scores [1, N, C]"
    assert _decoder_error({"detection_format": "raw_boxes"}, 0, [spec([1, 10, 4])]) == (
        f"the model has 1 output(s) [[1, 10, 4]]; {where}")
    assert _decoder_error({"detection_format": "raw_boxes"}, 0, [spec([1, 10, 5]), spec([1, 10, 3])]) == (
        f"no output of [[1, 10, 5], [1, 10, 3]] has the box shape [1, N, 4]; {where}")
    assert _decoder_error({"detection_format": "raw_boxes"}, 0, [spec([1, 10, 4]), spec([1, 9, 3], name="s")]) == (
        f"output 's' has shape [1, 9, 3]; {where} with N = 10")
    assert _decoder_error({"detection_format": "raw_boxes"}, 0, [spec([1, 10, 4]), spec([1, 10, 3, 2])]) == (
        f"output 1 has shape [1, 10, 3, 2]; {where} with N = 10")
    assert _decoder_error({"detection_format": "raw_boxes"}, 5, [spec([1, 10, 4]), spec([1, 10, 3])]) == (
        "output 1 has shape [1, 10, 3] (3 classes) but 5 labels are given; fix the labels (one per class) or "
        "the model")


@pytest.mark.parametrize(("outputs", "n_labels", "box_i", "classes"), [
    ([spec([1, 10, 4]), spec([1, 10, 3])], 3, 0, 3),
    ([spec([1, 10, 3]), spec([1, 10, 4])], 3, 1, 3),
    ([spec([1, 10, 4]), spec([1, 10])], 0, 0, 1),
    ([spec([1, 10, 4]), spec([1, 10, 4])], 0, 0, 4),  # both end in 4 and no labels: the first is boxes
    ([spec([1, 10, 4]), spec([1, 10, 4])], 4, 0, 4),
])
def test_raw_boxes_finds_the_box_output(outputs: list[TensorSpec], n_labels: int, box_i: int, classes: int) -> None:
    from edge_agent.tasks.detect import create_decoder

    dec = create_decoder(_out(detection_format="raw_boxes"), n_labels, outputs, 100, 50)
    assert (dec.box_i, dec.score_i, dec.num_classes) == (box_i, 1 - box_i, classes)  # type: ignore[attr-defined]


def test_raw_boxes_with_two_four_wide_outputs_picks_scores_by_label_count() -> None:
    from edge_agent.tasks.detect import create_decoder

    # 4 columns each, 3 labels: neither is [1, N, 3], so the first is boxes; with the scores
    # second and [1, N, 3] the pick is by the label count
    dec = create_decoder(_out(detection_format="raw_boxes"), 3, [spec([1, 10, 3]), spec([1, 10, 4])], 100, 50)
    assert dec.box_i == 1  # type: ignore[attr-defined]


def test_raw_boxes_decode_pixel_and_normalised_boxes() -> None:
    from edge_agent.tasks.detect import create_decoder

    dec = create_decoder(_out(detection_format="raw_boxes", box_format="xyxy", activation="none"), 0,
                         [spec([1, 2, 4]), spec([1, 2, 1])], 100, 50)
    scores = np.array([[[0.9], [0.2]]], dtype=np.float32)
    normalised = np.array([[[0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]]], dtype=np.float32)
    assert dec.decode([normalised, scores], 0.5)[0].box == pytest.approx((10.0, 10.0, 30.0, 20.0))
    at_limit = np.array([[[0.1, 0.2, 1.5, 0.4], [0, 0, 1, 1]]], dtype=np.float32)  # 1.5 is still normalised
    assert dec.decode([at_limit, scores], 0.5)[0].box == pytest.approx((10.0, 10.0, 150.0, 20.0))
    pixels = np.array([[[10, 20, 30, 40], [0, 0, 1, 1]]], dtype=np.float32)
    assert dec.decode([pixels, scores], 0.5)[0].box == pytest.approx((10.0, 20.0, 30.0, 40.0))


def test_yolo_decoder_checks_and_decodes() -> None:
    assert _decoder_error({"detection_format": "yolo"}, 0, [spec([1, 6, 10]), spec([1, 6, 10])]) == (
        "the model has 2 outputs [[1, 6, 10], [1, 6, 10]]; detection_format 'yolo' expects one output "
        "[1, 4 + C, N] or [1, N, 5 + C]")
    assert _decoder_error({"detection_format": "yolo", "activation": "softmax"}, 0, [spec([1, 6, 10])]) == (
        "activation 'softmax' does not apply to yolo outputs; use 'sigmoid' for logits or 'none'")
    assert _decoder_error({"detection_format": "yolo"}, 0, [spec([1, 4, 10], name="out0")]).startswith(
        "output 'out0' has shape [1, 4, 10]; ")
    from edge_agent.tasks.detect import create_decoder

    dec = create_decoder(_out(detection_format="yolo", activation="sigmoid", iou_threshold=0.3,
                              max_detections=1), 0, [spec([1, 6, 8])], 100, 50)
    assert dec.num_classes == 2
    raw = np.full((1, 6, 8), -9.0, dtype=np.float32)
    raw[0, :4, :3] = [[0.5, 0.2, 0.8], [0.5, 0.2, 0.8], [0.2, 0.1, 0.1], [0.2, 0.1, 0.1]]
    raw[0, 4:, :3] = [[3.0, 2.0, -5.0], [-5.0, -5.0, 4.0]]  # logits: sigmoid applied
    dets = dec.decode([raw], 0.5)
    assert len(dets) == 1 and dets[0].class_id == 1 and dets[0].score == pytest.approx(1 / (1 + math.exp(-4.0)))


def test_ssd_anchor_decoder_checks_and_decodes() -> None:
    from edge_agent.tasks.detect import create_decoder

    anchors = {"num_layers": 1, "min_scale": 0.5, "max_scale": 0.5, "input_size_width": 2,
               "input_size_height": 2, "feature_map_width": [2], "feature_map_height": [1]}
    base = {"detection_format": "ssd_anchors", "anchors": anchors}
    where = ("detection_format 'ssd_anchors' expects box regressions [1, 2, 4] and scores [1, 2, C] (2 anchors "
             "from [output.anchors], num_coords from [output.box_decoding])")
    assert _decoder_error(base, 0, [spec([1, 2, 4])]) == f"the model has 1 output(s) [[1, 2, 4]]; {where}"
    assert _decoder_error(base, 0, [spec([1, 2, 4]), spec([1, 3, 2], name="sc")]) == (
        f"output 'sc' has shape [1, 3, 2]; {where}")
    assert _decoder_error(base, 0, [spec([1, 2, 5]), spec([1, 2, 3])]) == (
        f"no output of [[1, 2, 5], [1, 2, 3]] has 4 coordinates per anchor; {where}")
    assert _decoder_error(base, 0, [spec([1, 2, 4]), spec([1, 2, 3, 1])]).startswith("output 1 has shape [1, 2, 3, 1]")
    assert _decoder_error({**base, "box_decoding": {"num_boxes": 3}}, 0, [spec([1, 2, 4]), spec([1, 2, 1])]) == (
        "box_decoding.num_boxes is 3 but the anchor options give 2 anchors; fix [output.anchors]")
    assert _decoder_error(base, 3, [spec([1, 2, 4]), spec([1, 2, 2])]).startswith(
        "output 1 has shape [1, 2, 2]; detection_format 'ssd_anchors' expects box regressions [1, 2, 4] and "
        "scores [1, 2, 3]")
    four = create_decoder(_out(**base), 4, [spec([1, 2, 4]), spec([1, 2, 4])], 100, 50)
    assert (four.box_i, four.score_i, four.num_classes) == (0, 1, 4)  # type: ignore[attr-defined]
    swapped = create_decoder(_out(**base), 3, [spec([1, 2, 3]), spec([1, 2, 4])], 100, 50)
    assert swapped.box_i == 1  # type: ignore[attr-defined]
    one = create_decoder(_out(**base), 0, [spec([1, 2, 4]), spec([1, 2])], 100, 50)
    assert one.num_classes == 1
    soft = create_decoder(_out(**base, activation="softmax", iou_threshold=0.5, max_detections=5), 2,
                          [spec([1, 2, 4]), spec([1, 2, 2])], 100, 50)
    raw_boxes = np.zeros((1, 2, 4), dtype=np.float32)  # boxes at the anchors: (0.25, 0.5) and (0.75, 0.5)
    raw_boxes[0, :, 2:] = 1.0  # h, w: the anchor's own 0.5 x 0.5
    logits = np.array([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]], dtype=np.float32)
    dets = soft.decode([raw_boxes, logits], 0.75)
    assert [(d.class_id, round(d.score, 4)) for d in dets] == [(0, 0.8), (1, 0.75)]
    assert dets[0].box == pytest.approx((50.0, 12.5, 100.0, 37.5))  # anchor 2, 0.5 x 0.5 of 100 x 50
    assert dets[1].box == pytest.approx((0.0, 12.5, 50.0, 37.5))
    sig = create_decoder(_out(**base, activation="sigmoid"), 1, [spec([1, 2, 4]), spec([1, 2, 1])], 100, 50)
    got = sig.decode([raw_boxes, np.array([[[0.0], [-9.0]]], dtype=np.float32)], 0.5)
    assert [(d.class_id, d.score) for d in got] == [(0, 0.5)]


def test_detect_task_body_and_change_key() -> None:
    in_spec = spec([1, 50, 100, 3])
    outputs = [spec([1, 3, 4]), spec([1, 3]), spec([1, 3]), spec([1])]
    m = manifest("detect", {"kind": "image", "width": 100, "height": 50},
                 {"detection_format": "tflite_postprocess"}, outputs, [in_spec])
    task = create_task(m, ["cat", "dog"], [in_spec], outputs)
    frame = _frame(np.zeros((50, 100, 3), np.uint8))
    _, transform = task.prepare(frame)
    boxes = np.array([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.5, 0.9], [0.2, 0.2, 0.6, 0.6]]], dtype=np.float32)
    result = task.decode([boxes, np.array([[1.0, 0.0, 0.0]], np.float32), np.array([[0.9, 0.8, 0.7]], np.float32),
                          np.array([3.0], np.float32)], frame, transform)
    assert result is not None and result.event_type == "detection"
    # the flat box (y0 == y1) is dropped; boxes in source pixels
    assert result.body == {"frame": 0, "detections": [
        {"label": "dog", "score": 0.9, "box": [10.0, 5.0, 30.0, 15.0]},
        {"label": "cat", "score": 0.7, "box": [20.0, 10.0, 60.0, 30.0]}]}
    assert result.change_key == ("cat", "dog")
    assert task.labels == ["cat", "dog"]
    unlabelled = create_task(m, [], [in_spec], outputs)
    assert unlabelled.labels == []  # the op's class ids are not a class count


# --------------------------------------------------------------------------- survivors of the second mutation run


def test_softmax_shifts_each_row_by_its_own_maximum() -> None:
    # Shifting by the maximum of the whole array (axis=None) underflows the first row to 0 / 0.
    out = softmax(np.array([[0.0, 1.0], [1000.0, 1001.0]]))
    assert out.ravel().tolist() == pytest.approx([0.268941, 0.731059, 0.268941, 0.731059], abs=1e-6)


def test_top_classes_finds_the_best_of_many() -> None:
    # 300 distinct scores in a scrambled order: argpartition must be asked for the k best (kth = k - 1);
    # NumPy's introselect puts another score first when asked for kth = k - 2.
    scores = ((np.arange(300) * 7919) % 300).astype(np.float32) / 300
    labels = [f"c{i}" for i in range(300)]
    best = int(np.argmax(scores))
    assert top_classes(scores, labels, 1, 0.0) == [ClassScore(f"c{best}", pytest.approx(299 / 300))]
    assert [c.label for c in top_classes(scores, labels, 3, 0.0)] == [
        f"c{i}" for i in np.argsort(-scores, kind="stable")[:3]]


def test_score_shape_drops_only_the_first_dimension() -> None:
    assert score_shape(spec([2, 5, 10]), 0, "x") == 10  # [batch, frames, classes]: the batch size is not looked at


def _audio_with(labels: list[str], out_spec: TensorSpec, **output: Any) -> Any:
    in_spec = spec([1, 4000])
    m = manifest("audio_classify", {"kind": "audio", "sample_rate": 8000, "window_s": 0.5, "feature": "waveform",
                                    "fmax": 4000.0},
                 {"score_threshold": 0.5, "smoothing_windows": 1, **output}, [out_spec], [in_spec])
    return create_task(m, labels, [in_spec], [out_spec])


def test_audio_task_checks_its_output_against_the_labels() -> None:
    unlabelled = _audio_with([], spec([1, 3]))
    assert (unlabelled.num_classes, unlabelled.labels) == (3, ["0", "1", "2"])
    with pytest.raises(ValueError) as info:
        _audio_with(["a", "b"], spec([1, 3]))
    assert str(info.value) == ("output 0 has shape [1, 3] (3 classes) but 2 labels are given; fix the labels "
                               "(one per class) or the model")
    with pytest.raises(ValueError) as info:
        _audio_with([], spec([1, 2, 3, 4]))
    assert str(info.value) == ("output 0 has shape [1, 2, 3, 4]; audio classification expects [1, classes] "
                               "or [1, frames, classes]")


def test_audio_scores_are_dequantised_and_shaped_by_the_output_spec() -> None:
    # uint8 scores: 128 * (1 / 256) = 0.5 for "b"; read raw, "b" would score 128
    task = _audio_with(["a", "b", "c"], spec([1, 3], "uint8", 1 / 256, 0), audio_events="window")
    result = task.decode([np.array([[10, 128, 64]], dtype=np.uint8)], _window(0, 0.0), None)
    assert result is not None and result.body["classes"] == [{"label": "b", "score": 0.5}]
    # [1, 2 frames, 3 classes] handed over flat: the class count checked at load (3), not the array's shape,
    # splits it into frames, whose mean is published
    framed = _audio_with(["a", "b", "c"], spec([1, 2, 3]), audio_events="window")
    flat = np.array([0.2, 0.6, 0.1, 0.4, 0.8, 0.1], dtype=np.float32)
    result = framed.decode([flat], _window(0, 0.0), None)
    assert result is not None and result.body["classes"] == [{"label": "b", "score": 0.7}]


def test_window_event_times_are_rounded_to_milliseconds() -> None:
    task = _audio_task(audio_events="window")
    result = task.decode([np.array([[0.1, 0.7, 0.2]], np.float32)], _window(1, 1.23456), None)
    assert result is not None and (result.body["t_start_s"], result.body["t_end_s"]) == (1.235, 1.735)


def test_keyword_refractory_counts_from_the_window_start() -> None:
    task = _audio_task(refractory_s=1.0)
    word, silence = np.array([[0.1, 0.8, 0.1]], np.float32), np.array([[0.9, 0.05, 0.05]], np.float32)
    assert task.decode([word], _window(0, 10.0), None) is not None
    assert task.decode([silence], _window(1, 10.25), None) is None  # re-armed
    assert task.decode([word], _window(2, 10.5), None) is None  # 0.5 s after the event: refractory
    assert task.decode([silence], _window(3, 10.75), None) is None
    again = task.decode([word], _window(4, 11.0), None)  # exactly 1 s after: no longer refractory
    assert again is not None and again.body["window"] == 4


def test_keyword_ranking_keeps_tied_labels_in_label_order() -> None:
    labels = [f"l{i}" for i in range(len(TIES))]
    task = _audio_with(labels, spec([1, len(TIES)]), top_k=100)
    result = task.decode([np.array([TIES], dtype=np.float32) / 4 + 0.1], _window(0, 0.0), None)
    assert result is not None and result.body["label"] == "l0"
    assert [c["label"] for c in result.body["classes"]] == [f"l{i}" for i in STABLE_ORDER]


def test_iou_clips_each_axis_at_zero_overlap() -> None:
    box = np.array([0.0, 0.0, 2.0, 2.0])
    others = np.array([
        [3.0, 0.0, 4.0, 2.0],  # apart in x, level in y: no overlap (not a negative one)
        [0.0, 3.0, 2.0, 4.0],  # apart in y
        [1.0, 1.5, 3.0, 3.5],  # overlap 1 x 0.5: a fraction of a unit
    ])
    assert iou(box, others).tolist() == pytest.approx([0.0, 0.0, 0.5 / 7.5])


def test_class_aware_nms_separates_classes_whatever_the_coordinates() -> None:
    # the same box in classes 0 and 1 (as far apart as the largest coordinate, 10): both stay
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [-6.0, -6.0, 4.0, 4.0], [-6.0, -6.0, 4.0, 4.0]], dtype=np.float32)
    kept = class_aware_nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 1]), 0.5, 10)
    assert kept.tolist() == [0, 1]
    # Bug found by the mutation run: class 79 shifted by 79 x (2 x 1e6 + 1) in float32 lost its boxes to
    # rounding (16 units apart at 1.6e8), so its duplicate was never suppressed.
    far = np.array([[10, 10, 20, 20], [10, 10, 20, 20], [1e6, 1e6, 1e6 + 10, 1e6 + 10]], dtype=np.float32)
    for cls in (0, 79):
        kept = class_aware_nms(far, np.array([0.9, 0.8, 0.7], np.float32), np.array([cls, cls, 0]), 0.5, 10)
        assert kept.tolist() == [0, 2]


def test_postprocess_count_ties_and_threshold() -> None:
    n = len(TIES)
    boxes = np.tile(np.array([0.1, 0.2, 0.3, 0.4], np.float32), (1, n, 1))
    classes = np.arange(n, dtype=np.float32)[None]
    scores = np.array([TIES], dtype=np.float32) / 4  # 0.5, 0.25 and 0.0
    dets = decode_postprocess(boxes, classes, scores, n, 0.25, 100)  # a plain int count
    ranked = [i for i in STABLE_ORDER if TIES[i] >= 1]  # a score equal to the threshold is kept
    assert [d.class_id for d in dets] == ranked


def test_decode_raw_keeps_a_score_equal_to_the_threshold() -> None:
    from edge_agent.tasks.detect import decode_raw

    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]], np.float32)
    dets = decode_raw(boxes, np.array([0.5, 0.25], np.float32), "xyxy", 0.5, 0.5, 10)
    assert dets == [Detection(0, 0.5, (0.0, 0.0, 1.0, 1.0))]


def _u8(values: list[Any], scale: float = 1 / 256) -> tuple[np.ndarray, TensorSpec]:
    """uint8 codes of ``values`` (scale 1/256, zero point 0) and their spec."""
    arr = np.asarray(values, dtype=np.float64)
    return np.round(arr / scale).astype(np.uint8), spec(list(arr.shape), "uint8", scale, 0)


def test_postprocess_decoder_dequantises_every_output() -> None:
    from edge_agent.tasks.detect import create_decoder

    b, bs = _u8([[[0.25, 0.5, 0.75, 0.625], [0.0, 0.0, 0.5, 0.5]]])
    c, cs = _u8([[1.0, 0.0]], scale=1.0)
    s, ss = _u8([[0.75, 0.25]])
    n, ns = _u8([2.0], scale=1.0)
    dec = create_decoder(_out(detection_format="tflite_postprocess"), 2, [bs, cs, ss, ns], 100, 50)
    # read raw, the box codes would be 64 x too large and the second score (64) would pass
    assert dec.decode([b, c, s, n], 0.5) == [Detection(1, 0.75, (50.0, 12.5, 62.5, 37.5))]


def test_raw_boxes_quantised_sigmoid_and_softmax() -> None:
    from edge_agent.tasks.detect import create_decoder

    b, bs = _u8([[[0.25, 0.5, 0.5, 0.75], [0.25, 0.5, 0.5, 0.75]]])
    s, ss = _u8([[[0.75], [0.5]]])
    plain = create_decoder(_out(detection_format="raw_boxes", box_format="xyxy", activation="none",
                                iou_threshold=0.5), 0, [bs, ss], 100, 50)
    # two copies of one box: NMS (iou_threshold) keeps the better one; boxes and scores dequantised
    assert plain.decode([b, s], 0.5) == [Detection(0, 0.75, (25.0, 25.0, 50.0, 37.5))]

    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]], np.float32)
    logits = np.array([[[0.0], [-9.0]]], np.float32)
    sig = create_decoder(_out(detection_format="raw_boxes", box_format="xyxy", activation="sigmoid"), 0,
                         [spec([1, 2, 4]), spec([1, 2, 1])], 100, 50)
    assert [(d.class_id, d.score) for d in sig.decode([boxes, logits], 0.5)] == [(0, 0.5)]

    two = np.log(np.array([[[1.0, 3.0], [4.0, 1.0]]], np.float32))  # per box: 0.25 / 0.75 and 0.8 / 0.2
    soft = create_decoder(_out(detection_format="raw_boxes", box_format="xyxy", activation="softmax"), 0,
                          [spec([1, 2, 4]), spec([1, 2, 2])], 100, 50)
    assert [(d.class_id, round(d.score, 4)) for d in soft.decode([boxes, two], 0.7)] == [(0, 0.8), (1, 0.75)]


def test_raw_boxes_beyond_the_normalised_limit_are_pixels() -> None:
    from edge_agent.tasks.detect import create_decoder

    dec = create_decoder(_out(detection_format="raw_boxes", box_format="xyxy", activation="none"), 0,
                         [spec([1, 1, 4]), spec([1, 1, 1])], 100, 50)
    boxes = np.array([[[0.5, 0.5, 2.0, 1.0]]], np.float32)  # 2.0 > 1.5: input pixels, not scaled
    assert dec.decode([boxes, np.array([[[0.9]]], np.float32)], 0.5)[0].box == (0.5, 0.5, 2.0, 1.0)


def test_raw_boxes_outputs_without_batch_or_with_one_value() -> None:
    from edge_agent.tasks.detect import create_decoder

    bare = create_decoder(_out(detection_format="raw_boxes"), 3, [spec([10, 4]), spec([10, 3])], 100, 50)
    assert (bare.box_i, bare.num_classes) == (0, 3)  # type: ignore[attr-defined]
    single = create_decoder(_out(detection_format="raw_boxes"), 0, [spec([1, 1, 4]), spec([1])], 100, 50)
    assert (single.box_i, single.num_classes) == (0, 1)  # type: ignore[attr-defined]
    where = "detection_format 'raw_boxes' expects boxes [1, N, 4] and scores [1, N, C]"
    assert _decoder_error({"detection_format": "raw_boxes"}, 0, [spec([1, 1, 4]), spec([])]) == (
        f"output 1 has shape []; {where} with N = 1")


def test_ssd_decoder_dequantises_boxes_and_scores() -> None:
    from edge_agent.tasks.detect import create_decoder

    anchors = {"num_layers": 1, "min_scale": 0.5, "max_scale": 0.5, "input_size_width": 2,
               "input_size_height": 2, "feature_map_width": [2], "feature_map_height": [1]}
    b, bs = _u8([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]], scale=1 / 64)
    s, ss = _u8([[[0.25], [0.75]]])
    dec = create_decoder(_out(detection_format="ssd_anchors", anchors=anchors), 1, [bs, ss], 100, 50)
    # anchor 1 (centre 0.75, 0.5; 0.5 x 0.5) passes: raw codes would give 64 x the size and 192 as score
    assert dec.decode([b, s], 0.5) == [Detection(0, 0.75, (50.0, 12.5, 100.0, 37.5), ())]


def _detect_task(output: dict[str, Any], outputs: list[TensorSpec], labels: list[str]) -> Any:
    in_spec = spec([1, 50, 100, 3])
    m = manifest("detect", {"kind": "image", "width": 100, "height": 50}, output, outputs, [in_spec])
    return create_task(m, labels, [in_spec], outputs)


def test_detect_task_drops_classes_beyond_the_labels() -> None:
    anchors = {"num_layers": 1, "min_scale": 0.5, "max_scale": 0.5, "input_size_width": 2,
               "input_size_height": 2, "feature_map_width": [2], "feature_map_height": [1]}
    # the model scores 3 classes (box_decoding.num_classes) but only 2 are labelled: class 2 is never published
    task = _detect_task({"detection_format": "ssd_anchors", "anchors": anchors, "box_decoding": {"num_classes": 3}},
                        [spec([1, 2, 4]), spec([1, 2, 3])], ["a", "b"])
    frame = _frame(np.zeros((50, 100, 3), np.uint8))
    _, transform = task.prepare(frame)
    raw_boxes = np.zeros((1, 2, 4), np.float32)
    raw_boxes[0, :, 2:] = 1.0
    scores = np.array([[[0.1, 0.1, 0.9], [0.8, 0.1, 0.1]]], np.float32)
    result = task.decode([raw_boxes, scores], frame, transform)
    assert result is not None
    assert result.body["detections"] == [{"label": "a", "score": 0.8, "box": [50.0, 12.5, 100.0, 37.5]}]


def test_detect_task_drops_boxes_flat_in_x_and_keeps_tall_ones() -> None:
    outputs = [spec([1, 2, 4]), spec([1, 2]), spec([1, 2]), spec([1])]
    task = _detect_task({"detection_format": "tflite_postprocess"}, outputs, ["cat"])
    frame = _frame(np.zeros((50, 100, 3), np.uint8))
    _, transform = task.prepare(frame)
    # yxyx, normalised: x0 == x1 (flat), then a box whose x1 (20 px) lies left of its y0 (40 px)
    boxes = np.array([[[0.2, 0.5, 0.4, 0.5], [0.8, 0.1, 1.0, 0.2]]], np.float32)
    result = task.decode([boxes, np.zeros((1, 2), np.float32), np.array([[0.9, 0.8]], np.float32),
                          np.array([2.0], np.float32)], frame, transform)
    assert result is not None
    assert result.body["detections"] == [{"label": "cat", "score": 0.8, "box": [10.0, 40.0, 20.0, 50.0]}]


def test_yolo_centres_decide_whether_boxes_are_normalised() -> None:
    layout = yolo_layout([1, 5, 2], 1)
    # centres at most 1.5 (the limit itself included) are normalised, whatever the widths
    at_limit = _v8_table([0.9, 0.1], [[1.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]])
    dets = decode_yolo(at_limit, spec([1, 5, 2]), layout, 0.5, 0.5, 10, 100, 50)
    assert dets[0].box == pytest.approx((140.0, 20.0, 160.0, 30.0))
    wide = _v8_table([0.9, 0.1], [[0.5, 0.5, 2.0, 1.0], [0.5, 0.5, 0.1, 0.1]])
    dets = decode_yolo(wide, spec([1, 5, 2]), layout, 0.5, 0.5, 10, 100, 50)
    assert dets[0].box == pytest.approx((-50.0, 0.0, 150.0, 50.0))


def test_quantised_floor_ignores_the_scale_of_a_float_output() -> None:
    assert _quantised_floor(0.5, spec([1], "float32", 0.25, 3), "none") == 0.5


def test_yolo_v5_objectness_equal_to_the_threshold_passes() -> None:
    raw = np.array([[[20, 20, 10, 10, 0.5, 1.0]]], dtype=np.float32)  # objectness 0.5 x class 1.0
    dets = decode_yolo(raw, spec([1, 1, 6]), yolo_layout([1, 1, 6], 1), 0.5, 0.5, 10, 100, 100)
    assert [(d.class_id, d.score) for d in dets] == [(0, 0.5)]
