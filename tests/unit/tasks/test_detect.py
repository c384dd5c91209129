"""YOLO and SSD-anchor decoders, output activations and load-time shape checks, against
hand-computed outputs (no interpreter)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.model.manifest import BoxDecoding, Manifest, OutputSpec, SsdAnchors, TensorSpec
from edge_agent.preprocess import ImageTransform, quantize, resize_image
from edge_agent.sources.base import AudioWindow, Frame
from edge_agent.tasks import create_task
from edge_agent.tasks.base import get_scores
from edge_agent.tasks.detect import boxes_to_source, create_decoder
from edge_agent.tasks.formats import recognise_outputs
from edge_agent.tasks.ssd import decode_boxes, decode_scores, generate_anchors
from edge_agent.tasks.yolo import decode_yolo, yolo_layout

SHA = "0" * 64


def spec(shape: list[int], dtype: str = "float32", scale: float = 0.0, zero_point: int = 0,
         name: str = "") -> TensorSpec:
    return TensorSpec(name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zero_point)  # type: ignore[arg-type]


def manifest(task: str, preprocess: dict, output: dict, outputs: list[TensorSpec],
             inputs: list[TensorSpec] | None = None) -> Manifest:
    if inputs is None:
        inputs = [spec([1, preprocess.get("height", 1), preprocess.get("width", 1), 3])]
    return Manifest.model_validate({
        "name": "t", "version": "1", "task": task, "model": {"sha256": SHA, "size_bytes": 1},
        "inputs": [s.model_dump() for s in inputs], "outputs": [s.model_dump() for s in outputs],
        "preprocess": preprocess, "output": output,
    })


# --------------------------------------------------------------------------- YOLO layouts


@pytest.mark.parametrize(("shape", "labels", "version", "classes", "boxes", "first"), [
    ([1, 84, 8400], 0, "v8", 80, 8400, True),
    ([1, 84, 8400], 80, "v8", 80, 8400, True),
    ([1, 8400, 84], 80, "v8", 80, 8400, False),
    ([1, 25200, 85], 0, "v5", 80, 25200, False),
    ([1, 25200, 85], 80, "v5", 80, 25200, False),
    ([1, 6, 64], 2, "v8", 2, 64, True),
    ([1, 64, 7], 2, "v5", 2, 64, False),
])
def test_yolo_layout_from_shape_and_label_count(shape: list[int], labels: int, version: str, classes: int,
                                                boxes: int, first: bool) -> None:
    layout = yolo_layout(shape, labels)
    assert (layout.version, layout.num_classes, layout.num_boxes, layout.attributes_first) == (
        version, classes, boxes, first)


def test_yolo_layout_refuses_a_label_count_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"output 'out' has shape \[1, 84, 8400\].*\[1, 4 \+ 3, N\]"):
        yolo_layout([1, 84, 8400], 3, "out")
    with pytest.raises(ValueError, match="yolo format expects"):
        yolo_layout([1, 896, 16, 1], 0)


def _v8_table(boxes: list[tuple[float, float, float, float]], scores: list[list[float]]) -> np.ndarray:
    """[1, 4 + C, N] from per-box (cx, cy, w, h) and per-box class scores."""
    rows = np.concatenate([np.asarray(boxes, np.float32).T, np.asarray(scores, np.float32).T], axis=0)
    return rows[None]


def test_decode_yolo_v8_normalised_boxes_in_input_pixels() -> None:
    # Box 0: class 1 at 0.9, centre (0.5, 0.25), size 0.2 x 0.1 of a 100 x 50 input.
    raw = _v8_table([(0.5, 0.25, 0.2, 0.1), (0.1, 0.1, 0.05, 0.05), (0.8, 0.8, 0.1, 0.1)],
                    [[0.1, 0.9], [0.2, 0.3], [0.6, 0.1]])
    s = spec(list(raw.shape))
    dets = decode_yolo(raw, s, yolo_layout(s.shape, 2), 0.5, 0.5, 10, input_w=100, input_h=50)
    assert [(d.class_id, round(d.score, 3)) for d in dets] == [(1, 0.9), (0, 0.6)]
    assert dets[0].box == pytest.approx((40.0, 10.0, 60.0, 15.0))
    assert dets[1].box == pytest.approx((75.0, 37.5, 85.0, 42.5))


def test_decode_yolo_v8_pixel_boxes_are_detected_and_kept() -> None:
    raw = _v8_table([(320.0, 160.0, 64.0, 32.0), (5.0, 5.0, 4.0, 4.0)], [[0.95], [0.1]])
    s = spec(list(raw.shape))
    [det] = decode_yolo(raw, s, yolo_layout(s.shape, 1), 0.5, 0.5, 10, input_w=640, input_h=640)
    assert det.box == pytest.approx((288.0, 144.0, 352.0, 176.0))


def test_decode_yolo_v8_int8_matches_float_within_one_step() -> None:
    raw = _v8_table([(0.5, 0.25, 0.2, 0.1), (0.1, 0.1, 0.05, 0.05)], [[0.1, 0.9], [0.2, 0.3]])
    q = spec(list(raw.shape), "int8", scale=1.0 / 255.0, zero_point=-128)
    raw_q = quantize(raw, q)
    [det] = decode_yolo(raw_q, q, yolo_layout(q.shape, 2), 0.5, 0.5, 10, input_w=100, input_h=50)
    assert det.class_id == 1 and det.score == pytest.approx(0.9, abs=1 / 255)
    assert det.box == pytest.approx((40.0, 10.0, 60.0, 15.0), abs=0.5)
    # The threshold is applied on the dequantised score: 0.9 passes 0.89, not 0.91.
    assert decode_yolo(raw_q, q, yolo_layout(q.shape, 2), 0.91, 0.5, 10, 100, 50) == []


def test_decode_yolo_v5_multiplies_objectness_and_class() -> None:
    # [1, N, 5 + C]: cx, cy, w, h, objectness, classes
    raw = np.array([[[0.5, 0.5, 0.5, 0.5, 0.9, 0.2, 0.8],
                     [0.2, 0.2, 0.1, 0.1, 0.4, 0.0, 1.0],   # 0.4 objectness: fails 0.5
                     [0.7, 0.7, 0.2, 0.2, 0.9, 0.5, 0.5]]], np.float32)  # 0.45: fails
    s = spec(list(raw.shape))
    [det] = decode_yolo(raw, s, yolo_layout(s.shape, 2), 0.5, 0.5, 10, input_w=10, input_h=10)
    assert det.class_id == 1 and det.score == pytest.approx(0.72)
    assert det.box == pytest.approx((2.5, 2.5, 7.5, 7.5))


def test_decode_yolo_sigmoid_activation_on_logits() -> None:
    logit = math.log(0.8 / 0.2)
    raw = _v8_table([(0.5, 0.5, 0.2, 0.2), (0.2, 0.2, 0.1, 0.1)], [[logit], [-3.0]])
    s = spec(list(raw.shape))
    [det] = decode_yolo(raw, s, yolo_layout(s.shape, 1), 0.5, 0.5, 10, 10, 10, activation="sigmoid")
    assert det.score == pytest.approx(0.8)


def test_yolo_nms_is_per_class() -> None:
    # Two nearly identical boxes of different classes both survive; a same-class twin does not.
    raw = _v8_table([(0.5, 0.5, 0.4, 0.4), (0.51, 0.5, 0.4, 0.4), (0.52, 0.5, 0.4, 0.4)],
                    [[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]])
    s = spec(list(raw.shape))
    dets = decode_yolo(raw, s, yolo_layout(s.shape, 2), 0.5, 0.5, 10, 100, 100)
    assert [(d.class_id, round(d.score, 2)) for d in dets] == [(0, 0.9), (1, 0.8)]
    assert len(decode_yolo(raw, s, yolo_layout(s.shape, 2), 0.5, 0.5, 1, 100, 100)) == 1


# --------------------------------------------------------------------------- SSD anchors


BLAZEFACE = SsdAnchors(num_layers=4, min_scale=0.1484375, max_scale=0.75, input_size_width=128,
                       input_size_height=128, anchor_offset_x=0.5, anchor_offset_y=0.5, strides=[8, 16, 16, 16],
                       aspect_ratios=[1.0], fixed_anchor_size=True)


def test_blazeface_anchor_options_give_896_anchors_in_mediapipe_order() -> None:
    anchors = generate_anchors(BLAZEFACE)
    assert anchors.shape == (896, 4)
    # 16 x 16 cells x 2 anchors, then the three stride-16 layers merged: 8 x 8 cells x 6 anchors.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1.0, 1.0])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1.0, 1.0])
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8, 1.0, 1.0])
    np.testing.assert_allclose(anchors[512 + 6], [1.5 / 8, 0.5 / 8, 1.0, 1.0])
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1.0, 1.0])


def test_anchor_sizes_scales_aspect_ratios_and_interpolation() -> None:
    opts = SsdAnchors(num_layers=2, min_scale=0.2, max_scale=0.6, input_size_width=32, input_size_height=32,
                      strides=[8, 16], aspect_ratios=[1.0, 2.0])
    anchors = generate_anchors(opts)
    assert anchors.shape == (4 * 4 * 3 + 2 * 2 * 3, 4)
    # layer 0: scale 0.2; ratio 1, ratio 2 (w = s * sqrt 2, h = s / sqrt 2), interpolated sqrt(0.2 * 0.6)
    np.testing.assert_allclose(anchors[:3, 2:], [[0.2, 0.2], [0.2 * math.sqrt(2), 0.2 / math.sqrt(2)],
                                                 [math.sqrt(0.12), math.sqrt(0.12)]], rtol=1e-6)
    np.testing.assert_allclose(anchors[:3, :2], [[0.125, 0.125]] * 3)
    # layer 1: scale 0.6, the last layer interpolates towards 1.0
    np.testing.assert_allclose(anchors[48:51, 2:], [[0.6, 0.6], [0.6 * math.sqrt(2), 0.6 / math.sqrt(2)],
                                                    [math.sqrt(0.6), math.sqrt(0.6)]], rtol=1e-6)
    np.testing.assert_allclose(anchors[48, :2], [0.25, 0.25])


def test_reduce_boxes_in_lowest_layer_and_no_interpolation() -> None:
    opts = SsdAnchors(num_layers=1, min_scale=0.3, max_scale=0.9, input_size_width=16, input_size_height=16,
                      strides=[16], aspect_ratios=[1.0, 2.0, 0.5], reduce_boxes_in_lowest_layer=True,
                      interpolated_scale_aspect_ratio=0.0)
    anchors = generate_anchors(opts)
    scale = 0.6  # one stride: (min + max) / 2
    np.testing.assert_allclose(anchors[:, 2:], [[0.1, 0.1], [scale * math.sqrt(2), scale / math.sqrt(2)],
                                                [scale / math.sqrt(2), scale * math.sqrt(2)]], rtol=1e-6)


def test_anchor_options_are_checked() -> None:
    with pytest.raises(ValueError, match="strides"):
        SsdAnchors.model_validate({"num_layers": 2, "min_scale": 0.1, "max_scale": 0.5, "input_size_width": 8,
                                   "input_size_height": 8, "strides": [8]})
    with pytest.raises(ValueError, match="num_keypoints"):
        BoxDecoding.model_validate({"num_coords": 6, "keypoint_coord_offset": 4, "num_keypoints": 2})


def test_decode_boxes_like_tensors_to_detections() -> None:
    anchors = np.array([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.5]], np.float32)
    dec = BoxDecoding(num_coords=6, keypoint_coord_offset=4, num_keypoints=1, x_scale=10, y_scale=10,
                      w_scale=10, h_scale=10, reverse_output_order=True)
    raw = np.array([[1.0, -2.0, 4.0, 2.0, 0.0, 0.0],    # x, y, w, h, kx, ky
                    [0.0, 0.0, 10.0, 10.0, 2.0, 2.0]], np.float32)
    boxes, points = decode_boxes(raw, anchors, dec)
    # anchor 0: cx = 0.1 + 0.5, cy = -0.2 + 0.5, w = 0.4, h = 0.2
    np.testing.assert_allclose(boxes[0], [0.4, 0.2, 0.8, 0.4], atol=1e-6)
    # anchor 1 (w = h = 0.5): cx 0.25, cy 0.75, w = h = 0.5
    np.testing.assert_allclose(boxes[1], [0.0, 0.5, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(points[:, 0], [[0.5, 0.5], [0.35, 0.85]], atol=1e-6)
    # Without reverse_output_order the order is y, x, h, w (and keypoints y, x).
    plain = BoxDecoding(num_coords=6, keypoint_coord_offset=4, num_keypoints=1, x_scale=10, y_scale=10,
                        w_scale=10, h_scale=10)
    boxes2, points2 = decode_boxes(raw[:, [1, 0, 3, 2, 5, 4]], anchors, plain)
    np.testing.assert_allclose(boxes2, boxes, atol=1e-6)
    np.testing.assert_allclose(points2, points, atol=1e-6)


def test_decode_boxes_exponential_size_and_scores_clipped_sigmoid() -> None:
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    dec = BoxDecoding(w_scale=2.0, h_scale=2.0, apply_exponential_on_box_size=True, sigmoid_score=True,
                      score_clipping_thresh=3.0)
    boxes, _ = decode_boxes(np.array([[0.0, 0.0, 2.0, 0.0]], np.float32), anchors, dec)
    h, w = math.e * 0.4, 0.2  # h = exp(2 / 2) * 0.4, w = exp(0) * 0.2
    np.testing.assert_allclose(boxes[0], [0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2], rtol=1e-6)
    scores = decode_scores(np.array([[0.0, 10.0, -1000.0]], np.float32), dec)
    np.testing.assert_allclose(scores, [[0.5, 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(3))]], rtol=1e-6)


def _ssd_output(dec_coords: int = 6) -> OutputSpec:
    return OutputSpec.model_validate({
        "labels": ["face"], "detection_format": "ssd_anchors", "score_threshold": 0.5, "iou_threshold": 0.3,
        "anchors": {"num_layers": 1, "min_scale": 0.1, "max_scale": 0.5, "input_size_width": 16,
                    "input_size_height": 16, "strides": [8], "fixed_anchor_size": True,
                    "interpolated_scale_aspect_ratio": 0.0},
        "box_decoding": {"num_coords": dec_coords, "keypoint_coord_offset": 4, "num_keypoints": 1,
                         "x_scale": 16, "y_scale": 16, "w_scale": 16, "h_scale": 16, "sigmoid_score": True,
                         "reverse_output_order": True},
    })


def test_ssd_outputs_matched_by_shape_not_order() -> None:
    out = _ssd_output()
    scores_first = [spec([1, 4, 1], name="classificators"), spec([1, 4, 6], name="regressors")]
    decoder = create_decoder(out, 1, scores_first, 16, 16)
    boxes = np.zeros((1, 4, 6), np.float32)
    boxes[0, 3] = [0.0, 0.0, 8.0, 4.0, 1.0, -1.0]  # anchor 3 = cell (1, 1): centre (0.75, 0.75)
    scores = np.array([[[-5.0], [-5.0], [-5.0], [5.0]]], np.float32)
    [det] = decoder.decode([scores, boxes], 0.5)
    assert det.score == pytest.approx(1 / (1 + math.exp(-5)))
    # centre (12, 12) px, w = 8 / 16 * 16 = 8 px, h = 4 px
    assert det.box == pytest.approx((8.0, 10.0, 16.0, 14.0))
    assert len(det.keypoints) == 1 and det.keypoints[0] == pytest.approx((13.0, 11.0))


@pytest.mark.parametrize(("outputs", "message"), [
    ([spec([1, 4, 16]), spec([1, 4, 1])], r"no output of \[\[1, 4, 16\], \[1, 4, 1\]\] has 6 coordinates"),
    ([spec([1, 896, 6]), spec([1, 896, 1])], r"output 0 has shape \[1, 896, 6\]; .*\[1, 4, 6\]"),
    ([spec([1, 4, 6])], r"1 output\(s\)"),
    ([spec([1, 4, 6]), spec([1, 4, 3])], r"has shape \[1, 4, 3\]"),
])
def test_ssd_shape_mismatch_refused_at_load(outputs: list[TensorSpec], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_decoder(_ssd_output(), 1, outputs, 16, 16)


def test_yolo_decoder_refuses_labels_that_do_not_fit() -> None:
    out = OutputSpec(labels=["a", "b", "c"], detection_format="yolo")
    with pytest.raises(ValueError, match=r"\[1, 6, 64\]"):
        create_decoder(out, 3, [spec([1, 6, 64])], 64, 64)
    with pytest.raises(ValueError, match="softmax"):
        create_decoder(OutputSpec(detection_format="yolo", activation="softmax"), 0, [spec([1, 6, 64])], 64, 64)


def test_raw_boxes_refuses_score_columns_that_do_not_fit_labels() -> None:
    out = OutputSpec(labels=["a", "b"], detection_format="raw_boxes")
    with pytest.raises(ValueError, match=r"\[1, 10, 3\] \(3 classes\) but 2 labels"):
        create_decoder(out, 2, [spec([1, 10, 4]), spec([1, 10, 3])], 8, 8)


def test_postprocess_never_publishes_a_label_outside_the_list() -> None:
    m = manifest("detect", {"kind": "image", "width": 10, "height": 10},
                 {"labels": ["cat", "dog"], "detection_format": "tflite_postprocess"},
                 [spec([1, 3, 4]), spec([1, 3]), spec([1, 3]), spec([1])])
    task = create_task(m, ["cat", "dog"], m.inputs, m.outputs)
    frame = Frame(0, 0.0, np.zeros((10, 10, 3), np.uint8), 0.0)
    _, ctx = task.prepare(frame)
    outputs = [np.array([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]]], np.float32),
               np.array([[1.0, 7.0, 0.0]], np.float32), np.array([[0.9, 0.8, 0.7]], np.float32),
               np.array([3.0], np.float32)]
    result = task.decode(outputs, frame, ctx)
    assert result is not None
    assert [d["label"] for d in result.body["detections"]] == ["dog", "cat"]
    assert result.body["detections"][0]["box"] == [0.0, 0.0, 5.0, 5.0]


def test_yolo_task_letterbox_round_trip_to_source_pixels() -> None:
    m = manifest("detect", {"kind": "image", "width": 64, "height": 64, "resize": "letterbox", "pad_value": 114},
                 {"labels": ["square", "circle"], "detection_format": "yolo", "score_threshold": 0.5},
                 [spec([1, 6, 3])])
    task = create_task(m, ["square", "circle"], m.inputs, m.outputs)
    frame = Frame(0, 0.0, np.zeros((64, 128, 3), np.uint8), 0.0)  # scale 0.5, 16 px bars top and bottom
    tensor, ctx = task.prepare(frame)
    assert tensor[0, 0, 0, 0] == pytest.approx(114.0) and tensor[0, 32, 0, 0] == 0.0
    raw = _v8_table([(0.5, 0.5, 0.25, 0.25), (0.1, 0.1, 0.1, 0.1), (0.9, 0.9, 0.1, 0.1)],
                    [[0.1, 0.95], [0.0, 0.0], [0.0, 0.0]])
    result = task.decode([raw], frame, ctx)
    assert result is not None
    [det] = result.body["detections"]
    # input box (24, 24)-(40, 40) -> source: x / 0.5, (y - 16) / 0.5
    assert det["label"] == "circle" and det["box"] == [48.0, 16.0, 80.0, 48.0]


def test_letterbox_pads_with_pad_value_and_centres() -> None:
    from edge_agent.model.manifest import ImagePreprocess

    pre = ImagePreprocess(width=8, height=8, resize="letterbox", pad_value=114, color="bgr")
    image, transform = resize_image(np.full((5, 10, 3), 200, np.uint8), pre)
    # 10 x 5 -> 8 x 4: 4 rows padded, 2 above and 2 below
    assert (image[:2] == 114).all() and (image[6:] == 114).all() and (image[2:6] == 200).all()
    assert transform == ImageTransform(0.8, 0.8, 0.0, 2.0, 10, 5)
    mapped = boxes_to_source([], transform, 8, 8, False)
    assert mapped == []


# --------------------------------------------------------------------------- activations and classes


def test_activation_softmax_sigmoid_and_legacy_apply_softmax() -> None:
    s = spec([1, 3])
    logits = np.array([[0.0, math.log(3.0), -1000.0]], np.float32)
    np.testing.assert_allclose(get_scores(logits, s, "softmax"), [0.25, 0.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(get_scores(logits, s, "sigmoid"), [0.5, 0.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(get_scores(logits, s, "none"), logits[0])
    assert OutputSpec.model_validate({"apply_softmax": True}).activation == "softmax"
    assert OutputSpec.model_validate({"apply_softmax": False, "activation": "sigmoid"}).activation == "sigmoid"
    with pytest.raises(ValueError, match="apply_softmax: conflicts with activation = 'sigmoid'"):
        OutputSpec.model_validate({"apply_softmax": True, "activation": "sigmoid"})


def test_scores_per_frame_are_activated_then_averaged() -> None:
    s = spec([1, 2, 2])
    raw = np.array([[[0.0, 0.0], [math.log(3.0), -math.log(3.0)]]], np.float32)
    # sigmoid per frame: [0.5, 0.5] and [0.75, 0.25]
    np.testing.assert_allclose(get_scores(raw, s, "sigmoid", 2), [0.625, 0.375], atol=1e-6)


def test_classifier_with_wrong_label_count_refused_at_load() -> None:
    m = manifest("classify", {"kind": "image", "width": 4, "height": 4},
                 {"labels": ["a", "b", "c"]}, [spec([1, 5])])
    with pytest.raises(ValueError, match=r"\[1, 5\] \(5 classes\) but 3 labels"):
        create_task(m, ["a", "b", "c"], m.inputs, m.outputs)


def test_classifier_without_labels_uses_class_numbers() -> None:
    m = manifest("classify", {"kind": "image", "width": 4, "height": 4}, {"top_k": 1}, [spec([1, 3])])
    task = create_task(m, [], m.inputs, m.outputs)
    frame = Frame(0, 0.0, np.zeros((4, 4, 3), np.uint8), 0.0)
    _tensor, ctx = task.prepare(frame)
    result = task.decode([np.array([[0.1, 0.7, 0.2]], np.float32)], frame, ctx)
    assert result is not None and result.body["classes"] == [{"label": "1", "score": 0.7}]


def _audio_task(output: dict, n_classes: int = 4):
    pre = {"kind": "audio", "sample_rate": 16000, "window_s": 0.5, "hop_s": 0.5, "feature": "waveform"}
    labels = ["_noise", "robin", "wren", "crow"][:n_classes]
    m = manifest("audio_classify", pre, {"labels": labels, **output}, [spec([1, n_classes])],
                 inputs=[spec([1, 8000])])
    return create_task(m, labels, m.inputs, m.outputs)


def test_window_mode_reports_every_label_above_threshold_per_window() -> None:
    task = _audio_task({"audio_events": "window", "activation": "sigmoid", "score_threshold": 0.5, "top_k": 2,
                        "background_labels": ["_noise"]})
    window = AudioWindow(4, 0.0, 8.0, np.zeros(8000, np.float32), 0.0)
    logit = math.log(0.9 / 0.1)
    result = task.decode([np.array([[5.0, 0.0, logit, 2.0]], np.float32)], window, None)
    assert result is not None and result.event_type == "audio" and result.always
    assert result.body["window"] == 4 and result.body["t_start_s"] == 8.0 and result.body["t_end_s"] == 8.5
    # _noise is background; robin (0.5) passes 0.5; top_k 2 keeps wren (0.9) and crow (0.881)
    assert [c["label"] for c in result.body["classes"]] == ["wren", "crow"]
    assert task.decode([np.array([[5.0, -3.0, -3.0, -3.0]], np.float32)], window, None) is None


def test_keyword_mode_is_still_the_default() -> None:
    task = _audio_task({"score_threshold": 0.5, "background_labels": ["_noise"], "smoothing_windows": 1})
    window = AudioWindow(0, 0.0, 0.0, np.zeros(8000, np.float32), 0.0)
    result = task.decode([np.array([[0.0, 0.0, 0.9, 0.8]], np.float32)], window, None)
    assert result is not None and result.body["label"] == "wren"
    # Same word still active: no second event.
    assert task.decode([np.array([[0.0, 0.0, 0.9, 0.8]], np.float32)], window, None) is None


# --------------------------------------------------------------------------- recognition


@pytest.mark.parametrize(("shapes", "labels", "fmt"), [
    ([[1, 84, 8400]], 0, "yolo"),
    ([[1, 25200, 85]], 80, "yolo"),
    ([[1, 896, 16], [1, 896, 1]], 1, "ssd_anchors"),
    ([[1, 10, 4], [1, 10], [1, 10], [1]], 90, "tflite_postprocess"),
    ([[1, 169, 4], [1, 169, 1]], 1, "raw_boxes"),
    ([[1, 6522]], 6522, None),
    ([[1, 96, 521]], 521, None),
])
def test_recognise_outputs(shapes: list[list[int]], labels: int, fmt: str | None) -> None:
    guess = recognise_outputs([spec(s) for s in shapes], labels)
    assert guess.detection_format == fmt
    assert guess.task == ("detect" if fmt else "classify")


def test_box_wholly_in_the_letterbox_border_is_not_published() -> None:
    m = manifest("detect", {"kind": "image", "width": 64, "height": 64, "resize": "letterbox"},
                 {"labels": ["a"], "detection_format": "yolo", "score_threshold": 0.5}, [spec([1, 5, 2])])
    task = create_task(m, ["a"], m.inputs, m.outputs)
    frame = Frame(0, 0.0, np.zeros((32, 64, 3), np.uint8), 0.0)  # bands: rows 0-15 and 48-63
    _, ctx = task.prepare(frame)
    # box 0 lies in the top band (y 2..10 px), box 1 in the picture
    raw = _v8_table([(0.5, 6 / 64, 0.2, 8 / 64), (0.25, 0.5, 0.2, 0.2)], [[0.9], [0.8]])
    result = task.decode([raw], frame, ctx)
    assert result is not None
    assert [d["score"] for d in result.body["detections"]] == [0.8]


def test_audio_frame_longer_than_the_window_is_refused_by_the_schema() -> None:
    from edge_agent.model.manifest import AudioPreprocess

    with pytest.raises(ValueError, match="frame_length 480 is longer than the window"):
        AudioPreprocess(sample_rate=16000, window_s=0.01, feature="logmel")
    assert AudioPreprocess(sample_rate=16000, window_s=0.01, feature="waveform").window_samples == 160
