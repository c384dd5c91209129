"""Source interface and helpers shared by the backends.

A source yields :class:`Frame` (images, OpenCV BGR or grey uint8) or
:class:`AudioWindow` (mono float32 at the model's rate, already cut into the
model's sliding windows). ``read()`` returns the next item or None at the end
of the stream; live sources retry (with jittered exponential backoff) inside
``read()`` until stopped, and report their state via ``state()``.
"""

from __future__ import annotations

import contextlib
import logging
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
    """One image from a video-like source."""

    index: int
    ts: float  # wall-clock capture time (time.time())
    image: np.ndarray
    capture_s: float  # time spent reading/decoding it


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
        if state != self._state:
            log.info("source %s: %s%s", self.type_name, state, f" ({error})" if error else "")
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


class ReconnectingSource(Source):
    """A live video source that reconnects with backoff after any failure.

    Subclasses implement ``_connect`` (raise SourceError on failure), ``_grab``
    (an image; None or SourceError with the reason when the connection failed)
    and ``_disconnect``. Failures never escape ``read()``: they are counted in
    ``state()`` (``errors``, ``last_error``, ``reconnects``) and retried.
    """

    live = True

    def __init__(self, reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0) -> None:
        super().__init__()
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._connected = False
        self._index = 0

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _grab(self) -> np.ndarray | None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    def read(self) -> Item | None:
        while not self._stop.is_set():
            if not self._connected:
                try:
                    self._connect()
                except SourceError as exc:
                    self._set_state("reconnecting", str(exc))
                    self._stop.wait(self._backoff.next_delay())
                    continue
                self._connected = True
                self._connected_since = time.time()
                self._set_state("connected")
            start = time.perf_counter()
            reason = "stream interrupted"
            try:
                image = self._grab()
            except SourceError as exc:
                image, reason = None, str(exc)
            if image is None:
                self._disconnect()
                self._connected = False
                self._reconnects += 1
                self._set_state("reconnecting", reason)
                self._stop.wait(self._backoff.next_delay())
                continue
            self._backoff.reset()
            frame = Frame(self._index, time.time(), image, time.perf_counter() - start)
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        if self._connected:
            self._disconnect()
            self._connected = False
        self._set_state("stopped")
