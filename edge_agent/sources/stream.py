"""Network streams: HTTP(S) MJPEG and JPEG snapshot URLs read natively, on the one
connection (MJPEG is recognised by its Content-Type or by its first bytes), RTSP and
other URLs through OpenCV/FFmpeg. Reconnects with backoff.

Everything a server sends is bounded: a silent server is dropped after
``read_timeout_s``; one that trickles (its answer, a part or a snapshot) is
"stalled" after ``stall_timeout_s``; parts (``max_part_bytes``), images
(``max_image_pixels``, read from the header before decoding), header lines and
header counts have limits. The scan for a part's end marker is linear in its size.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, SourceStallError, import_cv2
from edge_agent.sources.imagesize import DEFAULT_MAX_PIXELS
from edge_agent.sources.mjpeg import MAX_PART_BYTES, MjpegReader, decode_jpeg, parse_boundary

__all__ = ["MAX_PART_BYTES", "MjpegReader", "StreamSource", "parse_boundary"]

log = logging.getLogger(__name__)

STALL_FACTOR = 3.0  # default stall deadline: this many read timeouts
MAX_REASON_CHARS = 200  # of a library error's text quoted in last_error


def _describe(exc: BaseException) -> str:
    """One bounded line for a library error (its text may come from the server)."""
    reason = getattr(exc, "reason", None) or exc
    text = " ".join(f"{type(reason).__name__}: {reason}".split())
    return text[:MAX_REASON_CHARS]


def hide_credentials(text: str, password: str | None) -> str:
    """``text`` with ``//user:password@`` in URLs (and ``password`` anywhere) replaced by ``***``."""
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
        self._content_type: str | None = None  # of the last HTTP answer

    def _track(self, sock: socket.socket) -> None:
        self._watch.track(sock)  # the watch of the exchange under way

    def _safe(self, text: str) -> str:
        """``text`` without the URL's credentials: messages end up in logs and health payloads."""
        return hide_credentials(text, self._password)

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["url"] = self._safe(self._url)
        state["mode"] = self._mode
        if self._reader is not None:
            state["framing"] = self._reader.framing
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
            if self._use_response(response):
                return
            response.close()
            self._mode = "opencv"
            log.info("%s is not MJPEG (Content-Type %r); opening it with OpenCV",
                     self._safe(self._url), self._content_type)
        self._connect_opencv()

    def _use_response(self, response: Any) -> bool:
        """Read MJPEG (or a snapshot) from this very answer; False when it is neither.

        The framing comes from the Content-Type or, when that says something else
        (many cameras send ``application/octet-stream`` or nothing), from the first
        bytes of the body: a camera that serves one client never sees a second
        connection just for probing.
        """
        content_type = response.headers.get("Content-Type", "")
        self._content_type = content_type[:100]
        lower = content_type.lower()
        if lower.startswith("image/"):
            self._response, self._mode = response, "snapshot"
            return True
        reader = MjpegReader(response, parse_boundary(content_type), self._stall, self._max_part)
        try:
            framing = reader.sniff()
        except TimeoutError as exc:
            response.close()
            raise SourceStallError(f"no data from the server for {self._timeout:g} s (read timeout)") from exc
        except (SourceError, OSError, http.client.HTTPException, ValueError) as exc:
            response.close()
            reason = exc if isinstance(exc, SourceError) else _describe(exc)
            raise SourceError(self._safe(f"{self._url}: {reason}")) from exc
        if framing == "other":
            if "multipart" not in lower:
                return False
            response.close()
            raise SourceError(self._safe(f"{self._url}: multipart stream without a boundary"))
        self._response, self._mode, self._reader = response, "mjpeg", reader
        return True

    def _connect_opencv(self) -> None:
        cv2 = import_cv2()

        ms = int(self._timeout * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            seen = f" (Content-Type {self._content_type!r}, not MJPEG)" if self._content_type is not None else ""
            raise SourceError(self._safe(f"cannot open stream {self._url}{seen}"))
        self._cap = cap

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
                return decode_jpeg(data, self._max_pixels)
            if self._mode == "snapshot":
                return decode_jpeg(self._snapshot(), self._max_pixels)
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
