"""V4L2 camera (``0`` or ``/dev/video0``) through OpenCV, reconnecting when unplugged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, import_cv2


def camera_index(uri: str) -> int | str:
    """``"0"`` → 0; ``/dev/video2`` stays a path (OpenCV opens both)."""
    if re.fullmatch(r"\d+", uri):
        return int(uri)
    return uri


class CameraSource(ReconnectingSource):
    type_name = "camera"

    def __init__(
        self, uri: str, width: int | None = None, height: int | None = None,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
    ) -> None:
        super().__init__(reconnect_min_s, reconnect_max_s)
        self._device = camera_index(uri)
        self._width, self._height = width, height
        self._cap: Any = None

    def start(self) -> None:
        if isinstance(self._device, str) and not Path(self._device).exists():
            raise SourceError(f"camera {self._device} does not exist; list cameras with `v4l2-ctl --list-devices`")

    def _connect(self) -> None:
        cv2 = import_cv2()

        cap = cv2.VideoCapture(self._device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self._device}")
        if self._width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
        if self._height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # freshest frame, not a backlog
        self._cap = cap

    def _grab(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        return image if ok and image is not None else None

    def _disconnect(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
