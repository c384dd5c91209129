"""Network streams: HTTP(S) MJPEG (multipart/x-mixed-replace) and JPEG snapshot URLs
read natively, RTSP and other URLs through OpenCV/FFmpeg. Reconnects with backoff.

Everything a server sends is bounded: a silent server is dropped after
``read_timeout_s``, a trickling one after ``PART_TIMEOUT_FACTOR`` times that, and
parts, header lines, header counts and image sizes have the limits below.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, import_cv2

log = logging.getLogger(__name__)

MAX_PART_BYTES = 16 * 1024 * 1024  # one JPEG part; bounds the memory a server can make us hold
MAX_IMAGE_PIXELS = 7680 * 4320  # 8K UHD; a tiny JPEG declaring more would make OpenCV allocate gigabytes
MAX_HEADER_LINES = 64  # part headers (and blank lines between parts)
MAX_LINE_BYTES = 8192  # one boundary or part header line
MAX_PREAMBLE_BYTES = 64 * 1024  # data a server may send before its first boundary line
PART_TIMEOUT_FACTOR = 3.0  # a whole part must arrive within this many read timeouts
READ_CHUNK = 64 * 1024
MAX_REASON_CHARS = 200  # of a library error's text quoted in last_error

_EOI = b"\xff\xd9"
# JPEG markers without a length field, and the start-of-frame markers holding the image size.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def parse_boundary(content_type: str) -> bytes | None:
    """Boundary of a multipart content type (without the leading ``--``)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        return None
    boundary = match.group(1).strip().lstrip("-")
    return boundary.encode("latin-1") if boundary else None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header; None when ``data`` is not a JPEG.

    Read before decoding, so a part that only *declares* a huge image is refused
    without OpenCV allocating it.
    """
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


class MjpegReader:
    """Splits a multipart/x-mixed-replace body into its parts, bounded in bytes and time.

    ``stream`` needs ``read1`` (an ``http.client.HTTPResponse`` or ``io.BytesIO``).
    Each limit raises :class:`SourceError` with a one-line reason.
    """

    def __init__(self, stream: Any, boundary: bytes, part_timeout_s: float | None = None) -> None:
        self._stream = stream
        self._boundary = boundary.lstrip(b"-")
        self._part_timeout = part_timeout_s
        self._deadline = math.inf
        self._buffer = bytearray()
        self._after_part = False  # past the preamble: only blank lines may precede a boundary

    def read_part(self) -> bytes | None:
        """The next part's body, or None when the server ended the stream between parts."""
        if self._part_timeout is not None:
            self._deadline = time.monotonic() + self._part_timeout
        if not self._skip_to_boundary():
            return None
        length = self._read_headers()
        self._after_part = True
        if length is None:
            return self._read_to_end_of_image()
        while len(self._buffer) < length:
            if not self._fill():
                raise SourceError(
                    f"MJPEG: server closed the stream in the middle of a part ({len(self._buffer)} of {length} bytes)"
                )
        part = bytes(self._buffer[:length])
        del self._buffer[:length]
        return part

    def _fill(self) -> bool:
        """Append what one read returns; False at the end of the stream."""
        if time.monotonic() > self._deadline:
            raise SourceError(f"MJPEG: no complete part within {self._part_timeout:g} s (server too slow)")
        chunk = self._stream.read1(READ_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _read_line(self, limit: int, too_long: str) -> bytes | None:
        """One line with its newline (at most ``limit`` bytes), or None at the end of the stream."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= limit or (end < 0 and len(self._buffer) >= limit):
                raise SourceError(too_long)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            start = len(self._buffer)
            if not self._fill():
                return None

    def _skip_to_boundary(self) -> bool:
        """Consume up to and including the next boundary line; False at the end of the stream."""
        preamble = MAX_PREAMBLE_BYTES
        blank_lines = 0
        while True:
            if self._after_part:
                line = self._read_line(MAX_LINE_BYTES, "MJPEG: expected the boundary after a part, got a long line")
            else:
                line = self._read_line(preamble, f"MJPEG: no boundary line in the first {MAX_PREAMBLE_BYTES} bytes")
            if line is None:
                return False
            core = line.strip()
            if core.startswith(b"--") and core.lstrip(b"-") in (self._boundary, self._boundary + b"--"):
                return core.lstrip(b"-") == self._boundary  # the closing boundary ends the stream
            if not self._after_part:
                preamble -= len(line)
            elif core:
                raise SourceError("MJPEG: expected the boundary after a part, got other data (wrong Content-Length?)")
            else:
                blank_lines += 1
                if blank_lines > MAX_HEADER_LINES:
                    raise SourceError(f"MJPEG: more than {MAX_HEADER_LINES} blank lines between parts")

    def _read_headers(self) -> int | None:
        """Part headers up to the blank line; returns the Content-Length, if any."""
        length: int | None = None
        for _ in range(MAX_HEADER_LINES):
            line = self._read_line(MAX_LINE_BYTES, f"MJPEG: part header line longer than {MAX_LINE_BYTES} bytes")
            if line is None:
                raise SourceError("MJPEG: server closed the stream in the middle of part headers")
            if not line.strip():
                return length
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                text = value.strip()
                if not re.fullmatch(r"[0-9]{1,12}", text):
                    raise SourceError(f"MJPEG: bad Content-Length {text[:20]!r}")
                length = int(text)
                if length > MAX_PART_BYTES:
                    raise SourceError(f"MJPEG: part of {length} bytes is over the {MAX_PART_BYTES}-byte limit")
        raise SourceError(f"MJPEG: more than {MAX_HEADER_LINES} part headers")

    def _read_to_end_of_image(self) -> bytes:
        """A part without Content-Length: up to the JPEG end-of-image marker."""
        start = 0
        while True:
            end = self._buffer.find(_EOI, start)
            if end >= 0 and end + 2 <= MAX_PART_BYTES:
                part = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 2]
                return part
            if end >= 0 or len(self._buffer) >= MAX_PART_BYTES:
                raise SourceError(f"MJPEG: part without Content-Length over the {MAX_PART_BYTES}-byte limit")
            start = max(0, len(self._buffer) - 1)  # the marker may straddle two reads
            if not self._fill():
                raise SourceError("MJPEG: server closed the stream in the middle of a part")


def _describe(exc: BaseException) -> str:
    """One bounded line for a library error (its text may come from the server)."""
    reason = getattr(exc, "reason", None) or exc
    text = " ".join(f"{type(reason).__name__}: {reason}".split())
    return text[:MAX_REASON_CHARS]


def _hide_credentials(text: str, password: str | None) -> str:
    text = re.sub(r"//[^@/\s]*@", "//***@", text)
    return text.replace(password, "***") if password else text


class StreamSource(ReconnectingSource):
    type_name = "stream"

    def __init__(
        self, url: str, read_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
    ) -> None:
        super().__init__(reconnect_min_s, reconnect_max_s)
        self._url = url
        try:
            self._password = urllib.parse.urlsplit(url).password
        except ValueError:
            self._password = None
        self._timeout = read_timeout_s
        self._mode = "opencv" if not url.lower().startswith(("http://", "https://")) else "http"
        self._response: Any = None
        self._reader: MjpegReader | None = None
        self._cap: Any = None

    def _safe(self, text: str) -> str:
        """``text`` without the URL's credentials: messages end up in logs and health payloads."""
        return _hide_credentials(text, self._password)

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["url"] = self._safe(self._url)
        state["mode"] = self._mode
        return state

    def _connect(self) -> None:
        if self._mode != "opencv":
            try:
                response = urllib.request.urlopen(self._url, timeout=self._timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise SourceError(self._safe(f"cannot open {self._url}: {_describe(exc)}")) from exc
            content_type = response.headers.get("Content-Type", "")
            if "multipart" in content_type.lower():
                boundary = parse_boundary(content_type)
                if boundary is None:
                    response.close()
                    raise SourceError(self._safe(f"{self._url}: multipart stream without a boundary"))
                self._response, self._mode = response, "mjpeg"
                self._reader = MjpegReader(response, boundary, PART_TIMEOUT_FACTOR * self._timeout)
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
            raise SourceError(self._safe(f"cannot open stream {self._url}"))
        self._cap = cap

    def _decode(self, data: bytes) -> np.ndarray:
        size = jpeg_size(data)
        if size is None:
            raise SourceError(f"part of {len(data)} bytes is not a JPEG")
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise SourceError(f"JPEG of {size[0]}x{size[1]} is over the {MAX_IMAGE_PIXELS}-pixel limit")
        cv2 = import_cv2()

        image: np.ndarray | None = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"undecodable JPEG part of {len(data)} bytes")
        return image

    def _grab(self) -> np.ndarray | None:
        try:
            if self._mode == "mjpeg":
                assert self._reader is not None
                data = self._reader.read_part()
                if data is None:
                    raise SourceError("server ended the MJPEG stream")
                return self._decode(data)
            if self._mode == "snapshot":
                if self._response is None:
                    self._response = urllib.request.urlopen(self._url, timeout=self._timeout)
                data = self._response.read(MAX_PART_BYTES + 1)
                self._response.close()
                self._response = None
                if len(data) > MAX_PART_BYTES:
                    raise SourceError(f"snapshot over the {MAX_PART_BYTES}-byte limit")
                return self._decode(data)
            ok, image = self._cap.read()
            return image if ok and image is not None else None
        except TimeoutError as exc:
            raise SourceError(f"no data from the server for {self._timeout:g} s (read timeout)") from exc
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            raise SourceError(self._safe(f"connection lost: {_describe(exc)}")) from exc

    def _disconnect(self) -> None:
        if self._response is not None:
            with contextlib.suppress(OSError):
                self._response.close()
            self._response = None
        self._reader = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._mode in ("mjpeg", "snapshot"):
            self._mode = "http"
