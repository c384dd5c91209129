"""Decoding of classification, detection and audio outputs (plain NumPy, no interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.model.manifest import Manifest, TensorSpec
from edge_agent.preprocess import ImageTransform
from edge_agent.sources.base import AudioWindow, Frame
from edge_agent.tasks import create_task
from edge_agent.tasks.audio import KeywordSpotter, ScoreSmoother
from edge_agent.tasks.base import get_scores, softmax, top_classes
from edge_agent.tasks.detect import (
    Detection,
    boxes_to_source,
    decode_postprocess,
    decode_raw,
    match_postprocess_outputs,
    nms,
    to_xyxy,
)

SHA = "0" * 64


def make_manifest(task: str, preprocess: dict, output: dict, inputs: list[dict], outputs: list[dict]) -> Manifest:
    return Manifest.model_validate({
        "name": "t", "version": "1", "task": task, "model": {"sha256": SHA, "size_bytes": 1},
        "inputs": inputs, "outputs": outputs, "preprocess": preprocess, "output": output,
    })


# --------------------------------------------------------------------------- classification


def test_top_classes_best_first_with_threshold_and_k() -> None:
    scores = np.array([0.1, 0.5, 0.05, 0.35], dtype=np.float32)
    got = top_classes(scores, ["a", "b", "c", "d"], k=3, threshold=0.1)
    assert [(c.label, round(c.score, 2)) for c in got] == [("b", 0.5), ("d", 0.35), ("a", 0.1)]
    assert top_classes(scores, ["a", "b", "c", "d"], k=2, threshold=0.4)[0].label == "b"
    assert len(top_classes(scores, ["a", "b", "c", "d"], k=2, threshold=0.4)) == 1


def test_top_classes_breaks_ties_at_k_by_class_index() -> None:
    # An int8 softmax gives exactly 0.0 for most classes; which of them make the top k must not
    # depend on numpy's partition kernel (x86 and ARM pick differently), so lower index first.
    scores = np.zeros(10, dtype=np.float32)
    scores[7] = 0.9961
    labels = [str(i) for i in range(10)]
    assert [c.label for c in top_classes(scores, labels, k=3, threshold=0.0)] == ["7", "0", "1"]
    scores[[2, 5]] = 0.25
    assert [c.label for c in top_classes(scores, labels, k=4, threshold=0.0)] == ["7", "2", "5", "0"]


def test_top_classes_unknown_label_index_falls_back_to_number() -> None:
    assert top_classes(np.array([0.2, 0.8]), ["only"], k=1, threshold=0.0)[0].label == "1"


def test_get_scores_dequantises_int8_with_interpreter_params() -> None:
    spec = TensorSpec(shape=[1, 3], dtype="int8", scale=1 / 256, zero_point=-128)
    raw = np.array([[-128, 127, 0]], dtype=np.int8)
    np.testing.assert_allclose(get_scores(raw, spec), [0.0, 255 / 256, 0.5], atol=1e-6)


def test_softmax_is_stable_for_large_logits() -> None:
    out = softmax(np.array([1000.0, 1000.0, 0.0]))
    np.testing.assert_allclose(out, [0.5, 0.5, 0.0], atol=1e-6)


def test_classify_task_decodes_and_reports_change_key() -> None:
    m = make_manifest(
        "classify", {"kind": "image", "width": 4, "height": 4, "channels": 1, "color": "gray"},
        {"labels": ["cat", "dog"], "score_threshold": 0.6, "apply_softmax": False},
        [{"shape": [1, 4, 4, 1], "dtype": "float32"}], [{"shape": [1, 2], "dtype": "float32"}],
    )
    task = create_task(m, ["cat", "dog"], m.inputs, m.outputs)
    frame = Frame(7, 0.0, np.full((8, 8), 255, np.uint8), 0.0)
    tensor, ctx = task.prepare(frame)
    assert tensor.shape == (1, 4, 4, 1) and tensor.dtype == np.float32
    result = task.decode([np.array([[0.3, 0.7]], np.float32)], frame, ctx)
    assert result is not None
    assert result.body == {"frame": 7, "classes": [{"label": "dog", "score": 0.7}]}
    assert result.change_key == ("dog",)
    task.configure(threshold=0.9)
    low = task.decode([np.array([[0.3, 0.7]], np.float32)], frame, ctx)
    assert low is not None and low.body["classes"] == [] and low.change_key == (None,)


def test_image_task_quantises_with_input_scale() -> None:
    m = make_manifest(
        "classify", {"kind": "image", "width": 2, "height": 2, "channels": 1, "color": "gray", "std": [255.0]},
        {"labels": ["a"]},
        [{"shape": [1, 2, 2, 1], "dtype": "int8", "scale": 1 / 255, "zero_point": -128}],
        [{"shape": [1, 1], "dtype": "float32"}],
    )
    task = create_task(m, ["a"], m.inputs, m.outputs)
    tensor, _ = task.prepare(Frame(0, 0.0, np.full((2, 2), 255, np.uint8), 0.0))
    assert tensor.dtype == np.int8 and int(tensor.max()) == 127


# --------------------------------------------------------------------------- detection


def test_to_xyxy_formats() -> None:
    b = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(to_xyxy(b, "xyxy"), b)
    np.testing.assert_array_equal(to_xyxy(b, "yxyx"), [[2.0, 1.0, 4.0, 3.0]])
    np.testing.assert_array_equal(to_xyxy(b, "cxcywh"), [[-0.5, 0.0, 2.5, 4.0]])


def test_nms_keeps_best_of_overlapping_and_separate_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, 1).tolist() == [1]
    assert nms(boxes, scores, 0.99, 10).tolist() == [1, 0, 2]


def test_decode_raw_per_class_nms_and_threshold() -> None:
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.01, 0.01, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]])
    # boxes 0/1 overlap (class 0), box 2 overlaps too but is class 1: survives per-class NMS.
    scores = np.array([[[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.2, 0.3]]], dtype=np.float32)
    dets = decode_raw(boxes, scores, "xyxy", threshold=0.5, iou_threshold=0.5, max_detections=10)
    assert [(d.class_id, round(d.score, 2)) for d in dets] == [(0, 0.9), (1, 0.7)]
    assert decode_raw(boxes, scores, "xyxy", 0.95, 0.5, 10) == []


def test_decode_postprocess_uses_count_and_threshold() -> None:
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1]]], dtype=np.float32)
    classes = np.array([[2.0, 0.0, 1.0]], dtype=np.float32)
    scores = np.array([[0.9, 0.4, 0.99]], dtype=np.float32)
    dets = decode_postprocess(boxes, classes, scores, np.array([2.0]), threshold=0.3, max_detections=5)
    assert [(d.class_id, d.box) for d in dets] == [
        (2, (pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.4), pytest.approx(0.3))),
        (0, (0.5, 0.5, pytest.approx(0.9), pytest.approx(0.9))),
    ]


def test_match_postprocess_outputs_by_shape_then_name() -> None:
    boxes = np.zeros((1, 10, 4), np.float32)
    classes = np.ones((1, 10), np.float32)
    scores = np.full((1, 10), 0.5, np.float32)
    count = np.array([3.0], np.float32)
    specs = [TensorSpec(name=n, shape=list(a.shape), dtype="float32") for n, a in
             (("StatefulPartitionedCall:scores", scores), ("detection_boxes", boxes),
              ("num_detections", count), ("detection_classes", classes))]
    # boxes, classes, scores, count
    assert match_postprocess_outputs(specs) == (1, 3, 0, 2)
    unnamed = [TensorSpec(shape=list(a.shape), dtype="float32") for a in (boxes, classes, scores, count)]
    assert match_postprocess_outputs(unnamed) == (0, 1, 2, 3)
    wrong = [*unnamed[:3], TensorSpec(shape=[1, 2], dtype="float32")]
    with pytest.raises(ValueError, match=r"\[1, 10, 4\]"):
        match_postprocess_outputs(wrong)


def test_boxes_to_source_undoes_letterbox() -> None:
    # A 200x100 source letterboxed into 100x100: scale 0.5, 25 px bars top and bottom.
    t = ImageTransform(0.5, 0.5, 0.0, 25.0, 200, 100)
    det = Detection(0, 0.9, (0.25, 0.25, 0.75, 0.75))
    [mapped] = boxes_to_source([det], t, 100, 100, normalized=True)
    assert mapped.box == pytest.approx((50.0, 0.0, 150.0, 100.0))


def test_detect_task_reports_boxes_in_source_pixels() -> None:
    m = make_manifest(
        "detect", {"kind": "image", "width": 10, "height": 10, "channels": 1, "color": "gray"},
        {"labels": ["thing"], "detection_format": "raw_boxes", "box_format": "yxyx", "score_threshold": 0.5},
        [{"shape": [1, 10, 10, 1], "dtype": "float32"}],
        [{"shape": [1, 2, 4], "dtype": "float32"}, {"shape": [1, 2, 1], "dtype": "float32"}],
    )
    task = create_task(m, ["thing"], m.inputs, m.outputs)
    frame = Frame(3, 0.0, np.zeros((50, 100), np.uint8), 0.0)
    _tensor, ctx = task.prepare(frame)
    outputs = [np.array([[[0.2, 0.1, 0.6, 0.5], [0, 0, 0.1, 0.1]]], np.float32),
               np.array([[[0.8], [0.2]]], np.float32)]
    result = task.decode(outputs, frame, ctx)
    assert result is not None
    [det] = result.body["detections"]
    assert det["label"] == "thing" and det["box"] == [10.0, 10.0, 50.0, 30.0]


# --------------------------------------------------------------------------- audio


def test_smoother_averages_last_n() -> None:
    s = ScoreSmoother(2)
    s.update(np.array([1.0, 0.0]))
    np.testing.assert_allclose(s.update(np.array([0.0, 1.0])), [0.5, 0.5])
    np.testing.assert_allclose(s.update(np.array([0.0, 1.0])), [0.0, 1.0])


def _run_spotter(spotter: KeywordSpotter, frames: list[tuple[float, list[float]]]) -> list[tuple[float, int]]:
    events = []
    for t, scores in frames:
        fired = spotter.update(t, np.asarray(scores))
        if fired is not None:
            events.append((t, fired))
    return events


def test_spotter_one_event_per_word_and_rearms_after_silence() -> None:
    silence, yes, no = [0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.05, 0.85]
    timeline = [(0.0, silence), (0.25, yes), (0.5, yes), (0.75, yes), (1.0, yes), (1.25, silence),
                (1.5, silence), (2.0, no), (2.25, no), (2.5, silence), (3.0, yes), (3.25, yes)]
    spotter = KeywordSpotter(threshold=0.5, refractory_s=0.5, background={0})
    assert _run_spotter(spotter, timeline) == [(0.25, 1), (2.0, 2), (3.0, 1)]


def test_spotter_refractory_suppresses_flicker_between_labels() -> None:
    yes, no = [0.0, 0.8, 0.2], [0.0, 0.3, 0.7]
    spotter = KeywordSpotter(threshold=0.5, refractory_s=1.0, background={0})
    assert _run_spotter(spotter, [(0.0, yes), (0.25, no), (0.5, yes), (1.5, no)]) == [(0.0, 1), (1.5, 2)]


def test_spotter_never_reports_background_or_low_scores() -> None:
    spotter = KeywordSpotter(threshold=0.6, refractory_s=0.0, background={0})
    assert _run_spotter(spotter, [(0.0, [0.99, 0.0, 0.01]), (0.5, [0.2, 0.5, 0.3])]) == []


def test_audio_task_events_carry_time_and_classes_without_background() -> None:
    m = make_manifest(
        "audio_classify",
        {"kind": "audio", "sample_rate": 8000, "window_s": 0.5, "hop_s": 0.25, "feature": "waveform", "fmax": 4000.0},
        {"labels": ["_silence_", "yes", "no"], "background_labels": ["_silence_"], "score_threshold": 0.5,
         "smoothing_windows": 1, "refractory_s": 0.0},
        [{"shape": [1, 4000], "dtype": "float32"}], [{"shape": [1, 3], "dtype": "float32"}],
    )
    labels = ["_silence_", "yes", "no"]
    task = create_task(m, labels, m.inputs, m.outputs)
    window = AudioWindow(4, 0.0, 1.25, np.zeros(4000, np.float32), 0.0)
    tensor, ctx = task.prepare(window)
    assert tensor.shape == (1, 4000)
    assert task.decode([np.array([[0.9, 0.05, 0.05]], np.float32)], window, ctx) is None
    result = task.decode([np.array([[0.3, 0.6, 0.1]], np.float32)], window, ctx)
    assert result is not None and result.always
    assert result.body["label"] == "yes" and result.body["t_start_s"] == 1.25
    assert [c["label"] for c in result.body["classes"]] == ["yes", "no"]


@pytest.mark.parametrize(
    ("pre", "tensor"),
    [
        ({"color": "rgb", "mean": [127.5], "std": [127.5]}, {"dtype": "int8", "scale": 0.0078125, "zero_point": 0}),
        ({"color": "bgr", "mean": [10.0, 20.0, 30.0], "std": [50.0, 60.0, 70.0]},
         {"dtype": "uint8", "scale": 0.02, "zero_point": 100}),
        ({"color": "rgb", "mean": [0.0], "std": [255.0]}, {"dtype": "float32"}),
        ({"color": "gray", "channels": 1, "invert": True, "std": [1.0]},
         {"dtype": "int8", "scale": 1.0, "zero_point": -128}),
    ],
)
def test_lookup_table_prepare_is_bit_identical_to_float_path(pre: dict, tensor: dict) -> None:
    from edge_agent.preprocess import fit_to_tensor, preprocess_image, quantize

    channels = pre.get("channels", 3)
    m = make_manifest(
        "classify", {"kind": "image", "width": 24, "height": 20, "resize": "letterbox", **pre}, {"labels": ["a"]},
        [{"shape": [1, 20, 24, channels], **tensor}], [{"shape": [1, 1], "dtype": "float32"}],
    )
    task = create_task(m, ["a"], m.inputs, m.outputs)
    rng = np.random.default_rng(1)
    for shape in ((37, 53, 3), (20, 24, 3), (15, 9)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        fast, transform = task.prepare(Frame(0, 0.0, image, 0.0))
        values, slow_transform = preprocess_image(image, m.preprocess)  # type: ignore[arg-type]
        slow = fit_to_tensor(quantize(values, m.inputs[0]), m.inputs[0].shape)
        assert fast.dtype == slow.dtype and fast.shape == slow.shape
        np.testing.assert_array_equal(fast, slow)
        assert transform == slow_transform
