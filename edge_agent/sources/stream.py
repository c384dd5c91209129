"""Network streams: HTTP(S) MJPEG (multipart/x-mixed-replace) and JPEG snapshot URLs
read natively, RTSP and other URLs through OpenCV/FFmpeg. Reconnects with backoff.

The native MJPEG reader keeps timeouts under our control (a vanished server
never blocks the capture thread longer than ``read_timeout_s``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, import_cv2

log = logging.getLogger(__name__)

MAX_PART_BYTES = 16 * 1024 * 1024
MAX_HEADER_LINES = 64


def parse_boundary(content_type: str) -> bytes | None:
    """Boundary of a multipart content type (without the leading ``--``)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        return None
    return match.group(1).strip().removeprefix("--").encode("latin-1")


def read_mjpeg_part(stream: Any, boundary: bytes) -> bytes | None:
    """Read the next JPEG part from a multipart stream (None at end of stream).

    Raises:
        SourceError: malformed part (oversize or too many headers).
    """
    marker = b"--" + boundary
    # Skip to the boundary line.
    for _ in range(MAX_HEADER_LINES):
        line = stream.readline(MAX_PART_BYTES)
        if not line:
            return None
        if line.strip().startswith(marker):
            break
    else:
        raise SourceError("MJPEG stream: boundary not found")
    length: int | None = None
    for _ in range(MAX_HEADER_LINES):
        line = stream.readline(8192)
        if not line:
            return None
        if not line.strip():
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError as exc:
                raise SourceError("MJPEG stream: bad Content-Length") from exc
    else:
        raise SourceError("MJPEG stream: too many part headers")
    if length is not None:
        if length > MAX_PART_BYTES:
            raise SourceError(f"MJPEG stream: part of {length} bytes is too large")
        data: bytes = stream.read(length)
        return data if len(data) == length else None
    # No length: read up to the JPEG end-of-image marker.
    chunks = bytearray()
    while len(chunks) < MAX_PART_BYTES:
        line = stream.readline(65536)
        if not line:
            return None
        chunks += line
        end = chunks.rfind(b"\xff\xd9")
        if end >= 0:
            return bytes(chunks[: end + 2])
    raise SourceError("MJPEG stream: part too large")


class StreamSource(ReconnectingSource):
    type_name = "stream"

    def __init__(
        self, url: str, read_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
    ) -> None:
        super().__init__(reconnect_min_s, reconnect_max_s)
        self._url = url
        self._timeout = read_timeout_s
        self._mode = "opencv" if not url.lower().startswith(("http://", "https://")) else "http"
        self._response: Any = None
        self._boundary: bytes | None = None
        self._cap: Any = None

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["url"] = re.sub(r"//[^@/]*@", "//***@", self._url)  # never report credentials
        state["mode"] = self._mode
        return state

    def _connect(self) -> None:
        if self._mode != "opencv":
            try:
                response = urllib.request.urlopen(self._url, timeout=self._timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise SourceError(f"cannot open {self._url}: {getattr(exc, 'reason', exc)}") from exc
            content_type = response.headers.get("Content-Type", "")
            if "multipart" in content_type.lower():
                self._boundary = parse_boundary(content_type)
                if self._boundary is None:
                    response.close()
                    raise SourceError(f"{self._url}: multipart stream without a boundary")
                self._response, self._mode = response, "mjpeg"
                return
            if content_type.lower().startswith("image/"):
                self._response, self._mode = response, "snapshot"
                return
            response.close()
            self._mode = "opencv"
        self._connect_opencv()

    def _connect_opencv(self) -> None:
        cv2 = import_cv2()

        ms = int(self._timeout * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open stream {self._url}")
        self._cap = cap

    def _decode(self, data: bytes | None) -> np.ndarray | None:
        cv2 = import_cv2()

        if not data:
            return None
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self._set_state(self._state, "undecodable JPEG part")
        return image

    def _grab(self) -> np.ndarray | None:
        try:
            if self._mode == "mjpeg":
                assert self._boundary is not None
                return self._decode(read_mjpeg_part(self._response, self._boundary))
            if self._mode == "snapshot":
                if self._response is None:
                    self._response = urllib.request.urlopen(self._url, timeout=self._timeout)
                data = self._response.read(MAX_PART_BYTES)
                self._response.close()
                self._response = None
                return self._decode(data)
            ok, image = self._cap.read()
            return image if ok and image is not None else None
        except (TimeoutError, OSError, urllib.error.URLError, SourceError, ValueError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            return None

    def _disconnect(self) -> None:
        if self._response is not None:
            with contextlib.suppress(OSError):
                self._response.close()
            self._response = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._mode in ("mjpeg", "snapshot"):
            self._mode = "http"
