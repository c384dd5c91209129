"""Video file through OpenCV: every frame in order; optional looping for demos.

Each frame carries its position in the file (milliseconds on the video's own
timeline and the frame's index), which its results publish and motion gating
uses as its clock.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, Item, Source, import_cv2


class VideoFileSource(Source):
    type_name = "video"
    live = False

    def __init__(self, path: str, loop: bool = False) -> None:
        super().__init__()
        self._path = Path(path)
        self._loop = loop
        self._cap: Any = None
        self._index = 0
        self._in_file = 0  # index of the next frame in the file (restarts when looping)
        self._last_ms = -math.inf

    def _open(self) -> Any:
        cv2 = import_cv2()

        cap = cv2.VideoCapture(str(self._path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video file {self._path} (not a video, or an unsupported codec)")
        return cap

    def start(self) -> None:
        if not self._path.is_file():
            raise SourceError(f"video file {self._path} not found")
        try:
            with self._path.open("rb"):
                pass
        except OSError as exc:
            raise SourceError(f"cannot read video file {self._path}: {exc.strerror or exc}") from exc
        self._cap = self._open()
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"video file {self._path} has no readable frames")
        self._first: Any = first
        self._set_state("reading")

    def read(self) -> Item | None:
        if self._stop.is_set() or self._cap is None:
            return None
        start = time.perf_counter()
        if self._first is not None:
            image, self._first = self._first, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                if not self._loop:
                    self._set_state("ended")
                    return None
                self._cap.release()
                self._cap = self._open()
                self._in_file, self._last_ms = 0, -math.inf
                ok, image = self._cap.read()
                if not ok or image is None:
                    self._set_state("ended")
                    return None
        position = self._position_ms()
        frame = Frame(self._index, time.time(), image, time.perf_counter() - start,
                      position_ms=position, position_frame=self._in_file if position is not None else None)
        self._index += 1
        self._in_file += 1
        return frame

    def _position_ms(self) -> float | None:
        """The time of the frame just read on the video's timeline (ms, to the microsecond).

        The container's timestamp when it has one that moves forward; otherwise the
        frame's index over the declared frame rate; None when neither is known.
        """
        cv2 = import_cv2()
        position = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        if not math.isfinite(position) or position < 0 or (self._in_file and position <= self._last_ms):
            fps = float(self._cap.get(cv2.CAP_PROP_FPS))
            if not math.isfinite(fps) or fps <= 0:
                return None
            position = self._in_file * 1000.0 / fps
        self._last_ms = position
        return round(position, 3)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
