"""Video file through OpenCV: every frame in order; optional looping for demos."""

from __future__ import annotations

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
                ok, image = self._cap.read()
                if not ok or image is None:
                    self._set_state("ended")
                    return None
        frame = Frame(self._index, time.time(), image, time.perf_counter() - start)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
