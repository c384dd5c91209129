"""Pipeline statistics: counters, rates and per-stage latency percentiles.

The hot loop only appends to bounded deques and bumps integers (both cheap and
safe under the GIL); :meth:`PipelineStats.snapshot` is pure: it reads copies
and computes figures without changing any state, so any thread may call it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

import numpy as np

STAGES = ("capture", "preprocess", "invoke", "decode", "publish")
MODEL_STAGES = ("preprocess", "invoke", "decode")
LATENCY_WINDOW = 1024
RATE_WINDOW_S = 5.0
MAX_RESULT_LABELS = 1000  # distinct labels counted by name; more are counted under OTHER_LABEL
OTHER_LABEL = "_other"
STALE_INTERVALS = 3.0  # a rate drops to 0 after this many of its recent intervals without an event
MIN_STALE_S = 1.0


class LatencyFigures(TypedDict):
    """Percentiles (ms) of one stage's recent durations (None before the first one) and its count."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    n: int


class StatsSnapshot(TypedDict):
    """:meth:`PipelineStats.snapshot`: the pipeline's counters, rates and latencies."""

    fps_in: float
    fps_inferred: float
    frames_in: int
    frames_inferred: int
    frames_dropped: int
    frames_skipped: int
    frames_skipped_motion: int
    results_published: int
    errors: int
    queue_depth: int
    latency_ms: dict[str, LatencyFigures]
    run_s: float
    mean_fps_inferred: float


class LatencyWindow:
    """The last ``size`` durations (seconds) of one stage."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total_s = 0.0
        self.observer: Callable[[float], None] | None = None  # e.g. a metrics histogram, fed every duration

    def add(self, seconds: float) -> None:
        self._values.append(seconds)
        self.count += 1
        self.total_s += seconds
        observer = self.observer
        if observer is not None:
            observer(seconds)

    def forget(self) -> None:
        """Drop the recent durations (percentiles restart); lifetime count and total stay."""
        self._values.clear()

    def snapshot(self) -> LatencyFigures:
        values = np.fromiter(tuple(self._values), dtype=np.float64)
        if values.size == 0:
            return {"p50": None, "p95": None, "p99": None, "mean": None, "n": self.count}
        p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000.0
        return {
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
            "mean": round(float(values.mean() * 1000.0), 3),
            "n": self.count,
        }


class RateMeter:
    """Events per second over the last few seconds, from event timestamps.

    0 once the events have stopped (none for ``STALE_INTERVALS`` of their recent
    intervals, and at least ``MIN_STALE_S``): a camera that is reconnecting delivers
    nothing, whatever it delivered a moment ago.
    """

    def __init__(self, size: int = 2048) -> None:
        self._times: deque[float] = deque(maxlen=size)

    def mark(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float, window_s: float = RATE_WINDOW_S) -> float:
        times = [t for t in tuple(self._times) if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        interval = (times[-1] - times[0]) / (len(times) - 1)
        if now - times[-1] > max(STALE_INTERVALS * interval, MIN_STALE_S):
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return round((len(times) - 1) / span, 2) if span > 0 else 0.0


class PipelineStats:
    """All counters of one pipeline run."""

    def __init__(self, stages: Iterable[str] = STAGES) -> None:
        self.started = time.monotonic()
        self.stages = {name: LatencyWindow() for name in stages}
        self.frames_in = 0
        self.frames_inferred = 0
        self.frames_dropped = 0
        self.frames_skipped = 0  # over the live fps cap
        self.frames_skipped_motion = 0  # still scene (motion gating)
        self.results_published = 0
        self.results_by_label: dict[str, int] = {}  # published results per label (see result_labels)
        self.errors = 0
        self.queue_depth = 0
        self.first_inferred: float | None = None
        self.last_inferred: float | None = None
        self._in_rate = RateMeter()
        self._inferred_rate = RateMeter()

    def record_in(self, now: float) -> None:
        self.frames_in += 1
        self._in_rate.mark(now)

    def record_inferred(self, now: float) -> None:
        if self.first_inferred is None:
            self.first_inferred = now
        self.last_inferred = now
        self.frames_inferred += 1
        self._inferred_rate.mark(now)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage].add(seconds)

    def record_published(self, event_type: str, body: Mapping[str, Any]) -> None:
        """Count one published result, and each of its labels (:func:`result_labels`)."""
        self.results_published += 1
        counts = self.results_by_label
        for label in result_labels(event_type, body):
            key = label if label in counts or len(counts) < MAX_RESULT_LABELS else OTHER_LABEL
            counts[key] = counts.get(key, 0) + 1

    def forget_model_latency(self) -> None:
        """After a model swap: percentiles of model-dependent stages describe the new model only."""
        for name in MODEL_STAGES:
            if name in self.stages:
                self.stages[name].forget()

    def snapshot(self, now: float | None = None) -> StatsSnapshot:
        """Current figures as plain JSON-ready values; does not modify state."""
        now = time.monotonic() if now is None else now
        return {
            "fps_in": self._in_rate.rate(now),
            "fps_inferred": self._inferred_rate.rate(now),
            "frames_in": self.frames_in,
            "frames_inferred": self.frames_inferred,
            "frames_dropped": self.frames_dropped,
            "frames_skipped": self.frames_skipped,
            "frames_skipped_motion": self.frames_skipped_motion,
            "results_published": self.results_published,
            "errors": self.errors,
            "queue_depth": self.queue_depth,
            "latency_ms": {name: window.snapshot() for name, window in self.stages.items()},
            "run_s": round(now - self.started, 3),
            "mean_fps_inferred": self.mean_fps(),
        }

    def mean_fps(self) -> float:
        """Inferences per second from the first to the last inference (steady state)."""
        if self.first_inferred is None or self.last_inferred is None or self.frames_inferred < 2:
            return 0.0
        span = self.last_inferred - self.first_inferred
        return round((self.frames_inferred - 1) / span, 2) if span > 0 else 0.0

    def summary(self, now: float | None = None) -> str:
        """One line for stderr at the end of a run."""
        snap = self.snapshot(now)
        invoke = snap["latency_ms"].get("invoke")
        if invoke is None or invoke["p50"] is None:
            latency = "no inferences"
        else:
            latency = f"invoke p50 {invoke['p50']} ms p95 {invoke['p95']} ms"
        still = f"{self.frames_skipped_motion} skipped (no motion), " if self.frames_skipped_motion else ""
        return (
            f"{self.frames_in} in, {self.frames_inferred} inferred, {self.frames_dropped} dropped, {still}"
            f"{self.results_published} published in {snap['run_s']:.1f} s "
            f"({snap['mean_fps_inferred']:.1f} fps); {latency}"
        )


def result_labels(event_type: str, body: Mapping[str, Any]) -> list[str]:
    """The labels a published result reports: every detection's label; an audio event's word (or
    every class of a window event); a classification's top class. Nothing above the threshold: none."""
    detections = body.get("detections")
    if isinstance(detections, list):
        return [str(d.get("label")) for d in detections if isinstance(d, dict)]
    label = body.get("label")
    if label is not None:
        return [str(label)]
    classes = body.get("classes")
    if not isinstance(classes, list) or not classes:
        return []
    chosen = classes if event_type == "audio" else classes[:1]
    return [str(c.get("label")) for c in chosen if isinstance(c, dict)]
