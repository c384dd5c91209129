"""Source interface and helpers shared by the backends.

A source yields :class:`Frame` (images, OpenCV BGR or grey uint8) or
:class:`AudioWindow` (mono float32 at the model's rate, already cut into the
model's sliding windows). ``read()`` returns the next item or None at the end
of the stream; live sources retry (with jittered exponential backoff) inside
``read()`` until stopped, and report their state via ``state()``: a connected
stream that delivers no complete frame within its stall deadline is "stalled".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.util.backoff import Backoff

log = logging.getLogger(__name__)

WARNING_INTERVAL_S = 60.0  # one WARNING per source and interval for repeating failures


class SourceStallError(SourceError):
    """A live source is connected but no complete frame arrived in time (silent or trickling)."""


class WarningLimiter:
    """At most one WARNING per ``interval_s``, the next one counting those left out.

    A hostile or broken peer can fail a source many times a second; the journal
    gets one line a minute, not thousands.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = WARNING_INTERVAL_S) -> None:
        self._log, self._interval = logger, interval_s
        self._next = -math.inf
        self._left_out = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        if self._left_out:
            message += " (and %d more since the last warning)"
            args = (*args, self._left_out)
        self._log.warning(message, *args)
        self._next, self._left_out = now + self._interval, 0


def import_cv2() -> Any:
    """OpenCV, with its own console logging (and FFmpeg's) limited to nothing but errors.

    Without this a file OpenCV cannot open prints a ``[ WARN:0@…] global cap.cpp…``
    line (and FFmpeg a ``[mov,mp4,… @ 0x…] moov atom not found`` line) on stderr
    before the agent's own one-line error. ``OPENCV_LOG_LEVEL`` and
    ``OPENCV_FFMPEG_LOGLEVEL`` in the environment still win, for debugging a
    camera or codec.
    """
    # Read by OpenCV when its FFmpeg backend first opens something, so setting it
    # here works even when cv2 itself was imported earlier. -8 is AV_LOG_QUIET.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    if not os.environ.get("OPENCV_LOG_LEVEL"):
        with contextlib.suppress(AttributeError):  # OpenCV builds without the logging module
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from a video-like source, and where it came from (published with its results)."""

    index: int
    ts: float  # wall-clock capture time (time.time())
    image: np.ndarray
    capture_s: float  # time spent reading/decoding it
    file: str | None = None  # image folder: the image's file name
    position_ms: float | None = None  # video file: the frame's time on the video's own timeline
    position_frame: int | None = None  # video file: the frame's index in the file (restarts on --loop)

    @property
    def timeline_s(self) -> float:
        """Seconds on the source's own clock: the position in a video file, else the capture time."""
        return self.position_ms / 1000.0 if self.position_ms is not None else self.ts

    def origin(self) -> dict[str, Any]:
        """The fields that say where the frame came from, for its results (none for live sources)."""
        fields: dict[str, Any] = {}
        if self.file is not None:
            fields["file"] = self.file
        if self.position_ms is not None:
            fields["position_ms"] = self.position_ms
            fields["position_frame"] = self.position_frame
        return fields


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """One model-sized window of audio."""

    index: int
    ts: float
    t_start_s: float  # position of the window start in the stream
    samples: np.ndarray
    capture_s: float


Item = Frame | AudioWindow


class Source(ABC):
    """A capture backend: ``start()``, ``read()`` (the hot method), ``stop()``."""

    kind: str = "video"  # "video" | "audio"
    type_name: str = ""
    live: bool = False

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._state = "idle"
        self._reconnects = 0
        self._errors = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._warnings = WarningLimiter(log)

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open the device/file; raise SourceError when it cannot be used at all."""

    @abstractmethod
    def read(self) -> Item | None:
        """Next item, or None when the stream ended (or the source was stopped)."""

    def stop(self) -> None:
        """Ask a blocked ``read()`` to return; called from any thread."""
        self._stop.set()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device; called by the thread that reads."""

    def state(self) -> dict[str, Any]:
        """State for the health payload."""
        return {
            "type": self.type_name,
            "state": self._state,
            "live": self.live,
            "reconnects": self._reconnects,
            "errors": self._errors,
            "last_error": self._last_error,
        }

    def _set_state(self, state: str, error: str | None = None) -> None:
        """Change the reported state; an error is counted, kept and logged (rate-limited WARNING)."""
        if error is not None:
            self._warnings.warn("source %s: %s (%s)", self.type_name, state, error)
        elif state != self._state:
            log.info("source %s: %s", self.type_name, state)
        self._state = state
        if error is not None:
            self._errors += 1
            self._last_error = error


class SlidingWindower:
    """Cuts a stream of samples into windows of ``window`` samples every ``hop`` samples."""

    def __init__(self, window: int, hop: int, sample_rate: int) -> None:
        if window <= 0 or hop <= 0:
            raise SourceError("audio window and hop must be positive")
        self.window, self.hop, self.rate = window, hop, sample_rate
        self._buffer = np.zeros(0, dtype=np.float32)
        self._start = 0  # stream position (samples) of _buffer[0]
        self._emitted_end = 0  # end position of the last window emitted
        self._total = 0

    def push(self, samples: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """Add samples; return the complete windows as (t_start_s, samples)."""
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
        self._total += samples.size
        out: list[tuple[float, np.ndarray]] = []
        while self._buffer.size >= self.window:
            out.append((self._start / self.rate, self._buffer[: self.window].copy()))
            self._emitted_end = self._start + self.window
            self._buffer = self._buffer[self.hop :]
            self._start += self.hop
        return out

    def flush(self) -> list[tuple[float, np.ndarray]]:
        """At the end of a stream: one zero-padded window covering unseen tail samples."""
        if self._total == 0 or self._total <= self._emitted_end:
            return []
        tail = np.zeros(self.window, dtype=np.float32)
        tail[: self._buffer.size] = self._buffer[: self.window]
        self._emitted_end = self._total
        return [(self._start / self.rate, tail)]


class StreamResampler:
    """Linear-interpolation resampling of a stream fed in pieces.

    Gives what :func:`edge_agent.preprocess.resample` gives for the whole signal
    (output sample k sits at input position ``k * rate_in / rate_out``,
    ``round(n_in * rate_out / rate_in)`` of them, the last held at the final input
    sample) while holding only the few input samples the next outputs need.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise SourceError(f"cannot resample {rate_in} Hz to {rate_out} Hz")
        self._rate_in, self._rate_out = rate_in, rate_out
        self._step = rate_in / rate_out
        self._tail = np.zeros(0, dtype=np.float32)  # input samples the next outputs may need
        self._tail_start = 0  # stream index of _tail[0]
        self._seen = 0  # input samples pushed
        self.produced = 0  # output samples given

    def _due(self) -> int:
        """Outputs that exist for the input so far (never more than the whole signal will have)."""
        return round(self._seen * self._rate_out / self._rate_in)

    def _emit(self, end: int) -> np.ndarray:
        positions = np.arange(self.produced, end, dtype=np.float64) * self._step
        xp = np.arange(self._tail_start, self._seen, dtype=np.float64)
        out: np.ndarray = np.interp(positions, xp, self._tail).astype(np.float32)
        self.produced = max(self.produced, end)
        keep = min(int(self.produced * self._step), self._seen - 1)  # left neighbour of the next output
        if keep > self._tail_start:
            self._tail = self._tail[keep - self._tail_start :]
            self._tail_start = keep
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The outputs whose input neighbours have now arrived."""
        samples = samples.astype(np.float32, copy=False)
        if self._rate_in == self._rate_out:
            self._seen += samples.size
            self.produced += samples.size
            return samples
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        self._tail = np.concatenate([self._tail, samples])
        self._seen += samples.size
        last = self._seen - 1
        end = min(int(last / self._step) + 1, self._due())
        while end > self.produced and (end - 1) * self._step > last:  # float rounding at the edge
            end -= 1
        return self._emit(max(end, self.produced))

    def flush(self) -> np.ndarray:
        """At the end of the stream: the outputs past the last input sample."""
        if self._rate_in == self._rate_out or self._seen == 0:
            return np.zeros(0, dtype=np.float32)
        return self._emit(max(self._due(), self.produced))


class ReconnectingSource(Source):
    """A live video source that reconnects with backoff after any failure.

    Subclasses implement ``_connect`` (raise SourceError on failure), ``_grab``
    (an image; None or SourceError with the reason when the connection failed)
    and ``_disconnect``. Failures never escape ``read()``: they are counted in
    ``state()`` (``errors``, ``last_error``, ``reconnects``) and retried. A
    :class:`SourceStallError` failure shows as state "stalled" until the next frame,
    and so does a connection without a frame for ``stall_s`` (while ``_grab`` still waits).
    """

    live = True

    def __init__(self, reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
                 stall_s: float | None = None) -> None:
        super().__init__()
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._stall_s = stall_s
        self._progress_at = time.monotonic()  # last connect or frame
        self._frame_at: float | None = None  # last frame
        self._down_since: float | None = None  # first failure since the last frame
        self._recoveries = WarningLimiter(log)
        self._connected = False
        self._index = 0

    def state(self) -> dict[str, Any]:
        state = super().state()
        now = time.monotonic()
        waited = now - self._progress_at
        if self._stall_s is not None and state["state"] == "connected" and waited > self._stall_s:
            state["state"] = "stalled"
            state["last_error"] = f"no complete frame for {waited:.0f} s"
        state["last_frame_age_s"] = None if self._frame_at is None else round(now - self._frame_at, 1)
        return state

    def _recovered(self) -> None:
        """A frame arrived: after failures, say so at WARNING (rate-limited), as the failures were."""
        if self._down_since is not None:
            self._recoveries.warn("source %s: frames again after %.1f s (%d errors so far; last: %s)",
                                  self.type_name, time.monotonic() - self._down_since, self._errors,
                                  self._last_error)
            self._down_since = None

    def _failed(self, exc: SourceError) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._set_state("stalled" if isinstance(exc, SourceStallError) else "reconnecting", str(exc))

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _grab(self) -> np.ndarray | None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    def read(self) -> Item | None:
        if self._state == "idle":
            self._set_state("connecting")
        while not self._stop.is_set():
            if not self._connected:
                try:
                    self._connect()
                except SourceError as exc:
                    self._failed(exc)
                    self._stop.wait(self._backoff.next_delay())
                    continue
                self._connected = True
                self._connected_since = time.time()
                self._progress_at = time.monotonic()
                if self._state != "stalled":  # after a stall, only a frame shows the stream works again
                    self._set_state("connected")
            start = time.perf_counter()
            failure = SourceError("stream interrupted")
            try:
                image = self._grab()
            except SourceError as exc:
                image, failure = None, exc
            if image is None:
                self._disconnect()
                self._connected = False
                if self._stop.is_set():  # stop() cut the read short: not a failure of the source
                    break
                self._reconnects += 1
                self._failed(failure)
                self._stop.wait(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._progress_at = self._frame_at = time.monotonic()
            if self._state != "connected":  # a frame after a stall ends it
                self._set_state("connected")
            self._recovered()
            frame = Frame(self._index, time.time(), image, time.perf_counter() - start)
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        if self._connected:
            self._disconnect()
            self._connected = False
        self._set_state("stopped")
