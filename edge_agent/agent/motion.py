"""Motion gating: infer only while something moves, for ``hold_s`` after it, and at least every
``max_interval_s`` — so a fixed camera watching a still scene costs little CPU.

As Frigate does, each frame is shrunk to a small grey copy, blurred, and compared with a running
average of the recent frames; the share of pixels that changed says whether something moves.
The clock is the source's own (:attr:`Frame.timeline_s`), never the wall clock of the agent.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_agent.config import MotionSection
from edge_agent.sources.base import Frame

SMALL_SIZE = (160, 96)  # the small copy fits in this (width, height); larger frames are shrunk to it
BLUR_KERNEL = (3, 3)
# The background forgets a frame with this time constant: an object that stops is part of the
# background after a few seconds; one passing by (a fraction of a second per pixel) barely marks it.
BACKGROUND_TAU_S = 5.0
_EPS_S = 1e-6  # times are compared to the microsecond (video positions are rounded to it)


def small_grey(image: np.ndarray) -> np.ndarray:
    """The blurred small grey copy of a BGR, BGRA or grey uint8 image that motion is judged on."""
    height, width = image.shape[:2]
    scale = min(1.0, SMALL_SIZE[0] / width, SMALL_SIZE[1] / height)
    if scale < 1.0:  # shrink first: colour conversion and blur then touch only the small copy
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    result: np.ndarray = cv2.GaussianBlur(image, BLUR_KERNEL, 0)
    return result


class MotionDetector:
    """Frame differencing against a running average background.

    Args:
        threshold: grey-level difference (1-255) at which a pixel counts as changed.
        min_area_ratio: share of the small copy's pixels that must change for motion.
        tau_s: time constant of the background's running average (seconds of source time).
    """

    def __init__(self, threshold: int, min_area_ratio: float, tau_s: float = BACKGROUND_TAU_S) -> None:
        self.threshold, self.min_area_ratio, self.tau_s = threshold, min_area_ratio, tau_s
        self._background: np.ndarray | None = None
        self._last_t = 0.0

    def reset(self) -> None:
        """Forget the background: the next frame becomes it."""
        self._background = None

    def changed_ratio(self, image: np.ndarray, t: float) -> float:
        """Share of pixels that differ from the background by at least ``threshold``; then the
        frame joins the background (weighted by the source time since the previous frame)."""
        small = small_grey(image)
        background = self._background
        if background is None or background.shape != small.shape or t < self._last_t:
            self._background, self._last_t = small.astype(np.float32), t
            return 0.0  # a first frame (or a new size, or time going back) has nothing to differ from
        diff = cv2.absdiff(small, cv2.convertScaleAbs(background))
        ratio = np.count_nonzero(diff >= self.threshold) / diff.size
        alpha = 1.0 - math.exp(-(t - self._last_t) / self.tau_s)
        cv2.accumulateWeighted(small, background, alpha)
        self._last_t = t
        return float(ratio)

    def moving(self, image: np.ndarray, t: float) -> bool:
        return self.changed_ratio(image, t) >= self.min_area_ratio


class MotionGate:
    """Decides per frame whether it is inferred: while moving, ``hold_s`` after the last motion,
    and whenever ``max_interval_s`` passed since the last inferred frame (the first one too).

    Args:
        detector: says whether a frame shows motion.
        hold_s: seconds inference goes on after the last motion.
        max_interval_s: longest source time between two inferred frames.
    """

    def __init__(self, detector: MotionDetector, hold_s: float, max_interval_s: float) -> None:
        self._detector = detector
        self._hold_s, self._max_interval_s = hold_s, max_interval_s
        self._last_t = -math.inf
        self._last_motion = -math.inf
        self._last_run = -math.inf

    @classmethod
    def from_config(cls, section: MotionSection) -> MotionGate:
        return cls(MotionDetector(section.threshold, section.min_area_ratio), section.hold_s,
                   section.max_interval_s)

    def admit(self, frame: Frame) -> bool:
        """True when ``frame`` is to be inferred. Call for every frame, in order (the background
        learns from all of them)."""
        t = frame.timeline_s
        if t < self._last_t:  # a looping file restarted, or the clock stepped back: start afresh
            self._last_motion = self._last_run = -math.inf  # (the detector relearns its background)
        self._last_t = t
        if self._detector.moving(frame.image, t):
            self._last_motion = t
        if t - self._last_motion <= self._hold_s + _EPS_S or t - self._last_run >= self._max_interval_s - _EPS_S:
            self._last_run = t
            return True
        return False
