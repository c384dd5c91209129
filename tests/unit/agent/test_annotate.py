"""Drawing results on frames: boxes with labels for detections, the top class for classification."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_agent.agent.annotate import annotate, to_bgr


def _blank(h: int = 240, w: int = 320) -> np.ndarray:
    return np.full((h, w, 3), 40, np.uint8)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def test_classification_draws_the_top_label_in_the_corner_and_leaves_the_frame_alone() -> None:
    frame = _blank()
    original = frame.copy()
    out = annotate(frame, {"classes": [{"label": "cat", "score": 0.91}, {"label": "dog", "score": 0.05}]})
    assert np.array_equal(frame, original)  # drawn on a copy: the pipeline's frame is shared
    changed = _changed(out, original)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 200
    assert ys.max() < 40 and xs.min() == 0 and xs.max() < 160  # a label box in the top-left corner only


def test_detections_draw_a_box_at_its_source_pixels() -> None:
    frame = _blank()
    out = annotate(frame, {"detections": [{"label": "car", "score": 0.8, "box": [100.0, 120.0, 220.0, 200.0]}]})
    changed = _changed(out, frame)
    # the box outline: its corners and edges changed, the inside and far away untouched
    assert changed[120, 160] and changed[200, 160] and changed[160, 100] and changed[160, 220]
    assert not changed[160, 160] and not changed[230, 10] and not changed[10, 300]
    # the label sits above the box
    assert changed[110, 104:140].any()


def test_an_empty_or_missing_result_draws_nothing() -> None:
    frame = _blank()
    for result in (None, {}, {"classes": []}, {"detections": []}):
        assert np.array_equal(annotate(frame, result), frame)


@pytest.mark.parametrize("result", [
    {"detections": [{"label": "x", "score": 0.5, "box": [1, 2, 3]}]},
    {"detections": [{"label": "x", "score": 0.5, "box": [0, 0, float("nan"), 10]}]},
    {"detections": [{"label": "x", "score": 0.5, "box": "0 0 1 1"}]},
    {"detections": ["not a mapping"]},
    {"classes": [{"label": 7, "score": 0.5}]},
    {"classes": ["cat"]},
])
def test_values_a_task_never_writes_are_skipped(result: dict[str, Any]) -> None:
    frame = _blank()
    assert np.array_equal(annotate(frame, result), frame)


def test_boxes_outside_the_frame_are_clipped_not_an_error() -> None:
    out = annotate(_blank(), {"detections": [{"label": "far", "score": 1.0, "box": [-1e9, -1e9, 1e12, 1e12]}]})
    assert out.shape == (240, 320, 3)


def test_grey_and_bgra_frames_become_bgr() -> None:
    grey = np.full((20, 30), 100, np.uint8)
    assert to_bgr(grey).shape == (20, 30, 3) and int(to_bgr(grey)[5, 5, 0]) == 100
    bgra = np.zeros((20, 30, 4), np.uint8)
    assert to_bgr(bgra).shape == (20, 30, 3)
    out = annotate(grey, {"classes": [{"label": "a", "score": 1.0}]})
    assert out.shape == (20, 30, 3)
