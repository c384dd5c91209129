"""Motion gating on real pictures: the detector's background, the gate's hold and interval."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.agent.motion import SMALL_SIZE, MotionDetector, MotionGate, small_grey
from edge_agent.sources.base import Frame

FPS = 10


def scene(width: int = 160, height: int = 120) -> np.ndarray:
    """A still, textured background (what a fixed camera sees)."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (9, 9), 0)


def with_square(image: np.ndarray, x: int, size: int = 24, value: int = 255) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (x, 40), (x + size - 1, 40 + size - 1), (value, value, value), -1)
    return out


def frame(index: int, image: np.ndarray, fps: float = FPS) -> Frame:
    """A video-file frame at ``index`` on the file's own timeline (its wall-clock time is 0)."""
    return Frame(index, 0.0, image, 0.0, position_ms=round(index * 1000.0 / fps, 3), position_frame=index)


def test_small_grey_copy_of_large_colour_and_grey_frames() -> None:
    big = np.zeros((1080, 1920, 3), np.uint8)
    small = small_grey(big)
    assert small.ndim == 2 and small.shape[1] <= SMALL_SIZE[0] and small.shape[0] <= SMALL_SIZE[1]
    assert small.shape == (90, 160)
    assert small_grey(np.zeros((48, 64), np.uint8)).shape == (48, 64)  # never enlarged
    assert small_grey(np.zeros((48, 64, 4), np.uint8)).shape == (48, 64)
    assert small_grey(np.zeros((48, 64, 1), np.uint8)).shape == (48, 64)


def test_still_scene_shows_no_motion_and_a_passing_square_does() -> None:
    detector = MotionDetector(threshold=25, min_area_ratio=0.002)
    background = scene()
    assert [detector.moving(background, i / FPS) for i in range(5)] == [False] * 5
    passing = [detector.moving(with_square(background, 10 + 25 * k), (5 + k) / FPS) for k in range(5)]
    assert passing == [True] * 5
    # Gone again: a square passing by leaves no ghost in the background.
    assert [detector.moving(background, (10 + i) / FPS) for i in range(5)] == [False] * 5


def test_threshold_and_area_decide_what_counts() -> None:
    background = scene()
    faint = background.astype(np.int16)
    faint[40:80, 40:80] += 15  # a 15-level change over 8 % of the picture
    faint_image = np.clip(faint, 0, 255).astype(np.uint8)
    for threshold, expected in ((25, False), (10, True)):
        detector = MotionDetector(threshold=threshold, min_area_ratio=0.002)
        detector.moving(background, 0.0)
        assert detector.moving(faint_image, 0.1) is expected
    tiny = with_square(background, 60, size=3)  # 9 of 19200 pixels: under 0.2 %
    for ratio, expected in ((0.002, False), (0.0001, True)):
        detector = MotionDetector(threshold=25, min_area_ratio=ratio)
        detector.moving(background, 0.0)
        assert detector.moving(tiny, 0.1) is expected


def test_an_object_that_stays_becomes_background() -> None:
    detector = MotionDetector(threshold=25, min_area_ratio=0.002, tau_s=5.0)
    background, parked = scene(), with_square(scene(), 60, size=40, value=0)
    detector.moving(background, 0.0)
    seen = [detector.moving(parked, float(t)) for t in range(1, 31)]  # one frame a second
    assert seen[0] and not seen[-1]
    assert seen == sorted(seen, reverse=True)  # motion until absorbed, then none


def test_gate_infers_bursts_plus_hold_and_every_max_interval() -> None:
    gate = MotionGate(MotionDetector(threshold=25, min_area_ratio=0.002), hold_s=0.5, max_interval_s=3.0)
    background = scene()
    bursts = {20, 21, 22, 23, 24, 60, 61, 62}
    admitted = [i for i in range(100)
                if gate.admit(frame(i, with_square(background, 10 + 25 * (i % 5)) if i in bursts else background))]
    # the first frame; bursts and 0.5 s (5 frames) after; 3 s after the last inference in a still scene
    assert admitted == [0, *range(20, 30), 59, *range(60, 68), 97]


def test_gate_restarts_when_the_timeline_goes_back() -> None:
    gate = MotionGate(MotionDetector(threshold=25, min_area_ratio=0.002), hold_s=0.0, max_interval_s=100.0)
    background = scene()
    first = [gate.admit(frame(i, background)) for i in range(10)]
    again = [gate.admit(frame(i, background)) for i in range(10)]  # a looping file starts over
    assert first == again == [True] + [False] * 9


@pytest.mark.parametrize("fps", [7.0, 29.97])
def test_gate_times_come_from_the_source_not_the_wall_clock(fps: float) -> None:
    gate = MotionGate(MotionDetector(threshold=25, min_area_ratio=0.002), hold_s=0.0, max_interval_s=1.0)
    admitted = [i for i in range(int(fps * 5)) if gate.admit(frame(i, scene(), fps=fps))]
    assert len(admitted) == 5  # 5 s of a still video: one inference per second, however fast it is read
