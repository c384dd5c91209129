"""Network streams: HTTP(S) MJPEG (multipart/x-mixed-replace) and JPEG snapshot URLs
read natively, RTSP and other URLs through OpenCV/FFmpeg. Reconnects with backoff.

Everything a server sends is bounded: a silent server is dropped after
``read_timeout_s``; one that trickles (its answer, a part or a snapshot) is
"stalled" after ``stall_timeout_s``; parts (``max_part_bytes``), images
(``max_image_pixels``, read from the header before decoding), header lines and
header counts have limits. The scan for a part's end marker is linear in its size.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, SourceStallError, import_cv2
from edge_agent.sources.imagesize import DEFAULT_MAX_PIXELS, check_image_size

log = logging.getLogger(__name__)

MAX_PART_BYTES = 8 * 1024 * 1024  # default of source.max_part_bytes: the memory a server can make us hold
MAX_HEADER_LINES = 64  # part headers (and blank lines between parts)
MAX_LINE_BYTES = 8192  # one boundary or part header line
MAX_PREAMBLE_BYTES = 64 * 1024  # data a server may send before its first boundary line
STALL_FACTOR = 3.0  # default stall deadline: this many read timeouts
READ_CHUNK = 64 * 1024
MAX_REASON_CHARS = 200  # of a library error's text quoted in last_error

_EOI = b"\xff\xd9"


def parse_boundary(content_type: str) -> bytes | None:
    """Boundary of a multipart content type (without the leading ``--``)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        return None
    boundary = match.group(1).strip().lstrip("-")
    return boundary.encode("latin-1") if boundary else None


class MjpegReader:
    """Splits a multipart/x-mixed-replace body into its parts, bounded in bytes and time.

    ``stream`` needs ``read1`` (an ``http.client.HTTPResponse`` or ``io.BytesIO``).
    Each limit raises :class:`SourceError` with a one-line reason; a part that does
    not complete within ``stall_s`` raises :class:`SourceStallError`. ``scanned`` counts
    the bytes examined for end markers: each byte once, plus one per read.
    """

    def __init__(self, stream: Any, boundary: bytes, stall_s: float | None = None,
                 max_part_bytes: int = MAX_PART_BYTES) -> None:
        self._stream = stream
        self._boundary = boundary.lstrip(b"-")
        self._stall_s = stall_s
        self._max_part = max_part_bytes
        self._deadline = math.inf
        self._buffer = bytearray()
        self._after_part = False  # past the preamble: only blank lines may precede a boundary
        self.scanned = 0

    def read_part(self) -> bytes | None:
        """The next part's body, or None when the server ended the stream between parts."""
        if self._stall_s is not None:
            self._deadline = time.monotonic() + self._stall_s
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
            raise SourceStallError(f"MJPEG: no complete frame within {self._stall_s:g} s (server trickles or stalls)")
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
                if length > self._max_part:
                    raise SourceError(
                        f"MJPEG: part too large: {length} bytes, over the {self._max_part}-byte limit "
                        "(source.max_part_bytes)"
                    )
        raise SourceError(f"MJPEG: more than {MAX_HEADER_LINES} part headers")

    def _read_to_end_of_image(self) -> bytes:
        """A part without Content-Length: up to the JPEG end-of-image marker.

        Each search covers only the bytes not searched yet, plus one for a marker
        split across two reads: linear in the part's size, however it arrives.
        """
        start = 0
        while True:
            limit = min(len(self._buffer), self._max_part)
            end = self._buffer.find(_EOI, start, limit)
            self.scanned += limit - start
            if end >= 0:
                part = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 2]
                return part
            if limit >= self._max_part:
                raise SourceError(
                    f"MJPEG: part too large: no end marker in {self._max_part} bytes without Content-Length "
                    "(source.max_part_bytes)"
                )
            start = max(0, limit - 1)  # the marker may straddle two reads
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


class _Watch:
    """Shuts down the sockets of one HTTP exchange if it outlives its deadline.

    urllib's timeout bounds each read, not the whole answer: a server sending a
    byte every few seconds holds ``urlopen`` (headers) or a snapshot body forever.
    """

    def __init__(self, sockets: list[socket.socket] | None = None) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = list(sockets or [])
        self.fired = False

    def renewed(self) -> _Watch:
        """A new, unfired watch over the same sockets (a connection used for another exchange)."""
        with self._lock:
            return _Watch(self._sockets)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched_opener(track: Callable[[socket.socket], None]) -> urllib.request.OpenerDirector:
    """An opener like ``urlopen``'s whose connections hand their socket to ``track`` once open.

    (For HTTPS that is after the TLS handshake, which only the per-read timeout bounds.)
    """

    class Http(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            track(self.sock)

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            track(self.sock)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Https, req, context=ssl.create_default_context())

    return urllib.request.build_opener(HttpHandler, HttpsHandler)


class StreamSource(ReconnectingSource):
    type_name = "stream"

    def __init__(
        self, url: str, read_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
        stall_timeout_s: float | None = None, max_part_bytes: int = MAX_PART_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        stall_s = stall_timeout_s if stall_timeout_s is not None else STALL_FACTOR * read_timeout_s
        super().__init__(reconnect_min_s, reconnect_max_s, stall_s)
        self._url = url
        try:
            self._password = urllib.parse.urlsplit(url).password
        except ValueError:
            self._password = None
        self._timeout = read_timeout_s
        self._stall = stall_s
        self._max_part, self._max_pixels = max_part_bytes, max_image_pixels
        self._mode = "opencv" if not url.lower().startswith(("http://", "https://")) else "http"
        self._watch = _Watch()
        self._opener = _watched_opener(self._track)
        self._response: Any = None
        self._reader: MjpegReader | None = None
        self._scanned = 0  # by readers of earlier connections
        self._cap: Any = None

    def _track(self, sock: socket.socket) -> None:
        self._watch.track(sock)  # the watch of the exchange under way

    def _safe(self, text: str) -> str:
        """``text`` without the URL's credentials: messages end up in logs and health payloads."""
        return _hide_credentials(text, self._password)

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["url"] = self._safe(self._url)
        state["mode"] = self._mode
        state["bytes_scanned"] = self._scanned + (self._reader.scanned if self._reader else 0)
        return state

    @contextlib.contextmanager
    def _deadline(self, same_connection: bool = False) -> Iterator[None]:
        """Within the block, the HTTP exchange (on a new connection or the open one) must finish in time."""
        self._watch = watch = self._watch.renewed() if same_connection else _Watch()
        timer = threading.Timer(self._stall, watch.fire)
        timer.daemon = True
        timer.start()
        stalled = f"no complete answer within {self._stall:g} s (server trickles or stalls)"
        try:
            yield
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            if watch.fired:
                raise SourceStallError(stalled) from exc
            raise
        finally:
            timer.cancel()
        if watch.fired:  # the answer ended early because its socket was shut down
            raise SourceStallError(stalled)

    def _open(self) -> Any:
        with self._deadline():
            return self._opener.open(self._url, timeout=self._timeout)

    def _connect(self) -> None:
        if self._mode != "opencv":
            try:
                response = self._open()
            except SourceStallError as exc:
                raise SourceStallError(self._safe(f"cannot open {self._url}: {exc}")) from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise SourceError(self._safe(f"cannot open {self._url}: {_describe(exc)}")) from exc
            content_type = response.headers.get("Content-Type", "")
            if "multipart" in content_type.lower():
                boundary = parse_boundary(content_type)
                if boundary is None:
                    response.close()
                    raise SourceError(self._safe(f"{self._url}: multipart stream without a boundary"))
                self._response, self._mode = response, "mjpeg"
                self._reader = MjpegReader(response, boundary, self._stall, self._max_part)
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
        check_image_size(io.BytesIO(data), self._max_pixels, f"frame of {len(data)} bytes")
        cv2 = import_cv2()

        image: np.ndarray | None = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"undecodable image of {len(data)} bytes")
        return image

    def _snapshot(self) -> bytes:
        """One snapshot: its answer and body within the stall deadline, its size within the part limit."""
        with self._deadline(same_connection=self._response is not None):
            if self._response is None:
                self._response = self._opener.open(self._url, timeout=self._timeout)
            data: bytes = self._response.read(self._max_part + 1)
        self._response.close()
        self._response = None
        if len(data) > self._max_part:
            raise SourceError(f"snapshot too large: over the {self._max_part}-byte limit (source.max_part_bytes)")
        return data

    def _grab(self) -> np.ndarray | None:
        try:
            if self._mode == "mjpeg":
                assert self._reader is not None
                data = self._reader.read_part()
                if data is None:
                    raise SourceError("server ended the MJPEG stream")
                return self._decode(data)
            if self._mode == "snapshot":
                return self._decode(self._snapshot())
            ok, image = self._cap.read()
            return image if ok and image is not None else None
        except TimeoutError as exc:
            raise SourceStallError(f"no data from the server for {self._timeout:g} s (read timeout)") from exc
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
            raise SourceError(self._safe(f"connection lost: {_describe(exc)}")) from exc

    def _disconnect(self) -> None:
        if self._response is not None:
            with contextlib.suppress(OSError):
                self._response.close()
            self._response = None
        if self._reader is not None:
            self._scanned += self._reader.scanned
            self._reader = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._mode in ("mjpeg", "snapshot"):
            self._mode = "http"
