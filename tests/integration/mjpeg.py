"""A local HTTP MJPEG (multipart/x-mixed-replace) server for the stream tests.

Serves a callable's frames at a fixed rate on 127.0.0.1; ``stop()`` closes the
listening socket *and* every open connection, so clients see the server go away.
With ``fault`` set, its first ``faulty`` connections misbehave in that way (see
``FAULTS``) and later ones serve good frames, so a test sees the client recover.
Every fault is bounded in bytes and time (``HOLD_S``), even if no client reads.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase

import cv2
import numpy as np

from edge_agent.sources.stream import MAX_PART_BYTES

BOUNDARY = "frameboundary"
HOLD_S = 60.0  # longest a stalling connection is held open (stop() releases it at once)

FAULTS = {
    # Before or in the HTTP response headers.
    "accept-silent": "accept the connection, never answer",
    "http-garbage": "answer with something that is not HTTP",
    "http-many-headers": "more response headers than http.client accepts",
    "no-boundary-param": "multipart Content-Type without a boundary",
    "octet-stream": "multipart parts under Content-Type application/octet-stream (as ffmpeg -f mpjpeg sends)",
    "bare-jpegs": "JPEGs back to back, without boundaries, under Content-Type application/octet-stream",
    # In the multipart body.
    "stall-after-headers": "send the response headers, then nothing",
    "no-boundary-lines": "JPEGs back to back without boundary lines",
    "short-length": "a part whose Content-Length is smaller than its data",
    "long-length": "a part whose Content-Length is larger than its data",
    "negative-length": "Content-Length: -1",
    "text-length": "Content-Length: abc",
    "oversize-length": "a part over MAX_PART_BYTES, with Content-Length",
    "oversize-no-length": "a part over MAX_PART_BYTES without Content-Length or JPEG end marker",
    "many-headers": "a part with 10000 headers",
    "garbage": "a part that is not a JPEG",
    "bomb": "a small JPEG whose header declares 10000x10000 pixels",
    "stall-mid-part": "half a part, then nothing",
    "close-mid-part": "half a part, then close the connection",
    "trickle": "a part at one byte every 0.25 s",
    "trickle-headers": "the HTTP response headers at one byte every 0.25 s",
    "trickle-snapshot": "a JPEG snapshot (image/jpeg) at one byte every 0.25 s",
    "bad-chunk": "chunked transfer encoding: one good part, then a chunk size that is not hex",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def declare_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header claiming another size (the data stays as it is)."""
    data = bytearray(jpeg)
    i = 2
    while data[i + 1] != 0xC0:  # walk the segments to the baseline frame header
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


class MjpegServer:
    def __init__(self, frame: Callable[[int], np.ndarray], port: int = 0, fps: float = 30.0,
                 with_length: bool = True, fault: str | None = None, faulty: int = 1) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {sorted(FAULTS)}")
        self.port = port or free_port()
        self.frame, self.fps, self.with_length = frame, fps, with_length
        self.fault, self.faulty = fault, faulty
        self.sent = 0
        self.connections = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._alive = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def jpeg(self, index: int) -> bytes:
        _ok, jpeg = cv2.imencode(".jpg", self.frame(index), [cv2.IMWRITE_JPEG_QUALITY, 95])
        return bytes(jpeg.tobytes())

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    index = outer.connections
                    outer.connections += 1
                    outer._conns.append(self.connection)
                fault = outer.fault if index < outer.faulty else None
                try:
                    if fault == "accept-silent":
                        outer._halt.wait(HOLD_S)
                        return
                    if fault == "http-garbage":
                        self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
                        return
                    if fault in ("trickle-headers", "trickle-snapshot"):
                        outer._trickle_answer(self.wfile, fault)
                        return
                    self.send_response(200)
                    if fault == "http-many-headers":
                        for i in range(150):
                            self.send_header(f"X-Pad-{i}", "1")
                    if fault == "bad-chunk":
                        self.send_header("Transfer-Encoding", "chunked")
                    boundary = "" if fault == "no-boundary-param" else f"; boundary={BOUNDARY}"
                    plain = fault in ("octet-stream", "bare-jpegs")
                    self.send_header("Content-Type",
                                     "application/octet-stream" if plain else f"multipart/x-mixed-replace{boundary}")
                    self.end_headers()
                    if fault in (None, "no-boundary-param", "octet-stream", "bare-jpegs") or outer._write_fault(
                            self.wfile, fault):
                        outer._serve_frames(self.wfile, bare=fault == "bare-jpegs")
                except OSError:
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._halt.clear()
        self._alive.set()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _write_part(self, out: BufferedIOBase, data: bytes, length: str | None = "auto", extra: bytes = b"") -> None:
        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n".encode() + extra
        if length == "auto":
            length = str(len(data)) if self.with_length else None
        if length is not None:
            head += f"Content-Length: {length}\r\n".encode()
        out.write(head + b"\r\n" + data + b"\r\n")
        out.flush()

    def _serve_frames(self, out: BufferedIOBase, bare: bool = False) -> None:
        while self._alive.is_set():
            if bare:
                out.write(self.jpeg(self.sent))
                out.flush()
            else:
                self._write_part(out, self.jpeg(self.sent))
            self.sent += 1
            time.sleep(1.0 / self.fps)

    def _write_fault(self, out: BufferedIOBase, fault: str) -> bool:
        """Misbehave in the body; True to go on with good frames on this connection."""
        jpeg = self.jpeg(self.sent)
        half = f"--{BOUNDARY}\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg[: len(jpeg) // 2]
        if fault == "stall-after-headers":
            out.flush()
            self._halt.wait(HOLD_S)
        elif fault == "no-boundary-lines":
            for _ in range((4 << 20) // len(jpeg)):  # 4 MiB at most
                if not self._alive.is_set():
                    break
                out.write(jpeg + b"\r\n")
            out.flush()
            self._halt.wait(HOLD_S)
        elif fault in ("short-length", "long-length", "negative-length", "text-length"):
            length = {"short-length": len(jpeg) - 100, "long-length": len(jpeg) + 100,
                      "negative-length": -1, "text-length": "abc"}[fault]
            self._write_part(out, jpeg, str(length))
            return True
        elif fault == "oversize-length":
            out.write(f"--{BOUNDARY}\r\nContent-Length: {MAX_PART_BYTES + 1}\r\n\r\n".encode())
            self._write_zeros(out, MAX_PART_BYTES + 1)
            return True
        elif fault == "oversize-no-length":
            out.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8".encode("latin-1"))
            self._write_zeros(out, MAX_PART_BYTES + (1 << 20))
            return True
        elif fault == "many-headers":
            self._write_part(out, jpeg, extra=b"".join(b"X-Pad-%d: 1\r\n" % i for i in range(10000)))
            return True
        elif fault == "garbage":
            self._write_part(out, b"<html>this is not a JPEG</html>\r\n" * 50)
            return True
        elif fault == "bomb":
            self._write_part(out, declare_size(jpeg, 10000, 10000))
            return True
        elif fault == "stall-mid-part":
            out.write(half)
            out.flush()
            self._halt.wait(HOLD_S)
        elif fault == "close-mid-part":
            out.write(half)
            out.flush()
        elif fault == "bad-chunk":
            part = f"--{BOUNDARY}\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"
            out.write(b"%x\r\n%s\r\nzz\r\n" % (len(part), part))
            out.flush()
        elif fault == "trickle":
            out.write(f"--{BOUNDARY}\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode())
            out.flush()
            for byte in jpeg:
                if self._halt.wait(0.25):
                    break
                out.write(bytes([byte]))
                out.flush()
        return False

    def _trickle(self, out: BufferedIOBase, data: bytes) -> None:
        for byte in data:
            if self._halt.wait(0.25):
                break
            out.write(bytes([byte]))
            out.flush()

    def _trickle_answer(self, out: BufferedIOBase, fault: str) -> None:
        if fault == "trickle-headers":
            self._trickle(out, b"HTTP/1.0 200 OK\r\n" + b"X-Pad: " + b"x" * 1000 + b"\r\n")
            return
        jpeg = self.jpeg(self.sent)
        out.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
        self._trickle(out, jpeg)

    def _write_zeros(self, out: BufferedIOBase, count: int) -> None:
        chunk = bytes(64 * 1024)
        while count > 0 and self._alive.is_set():
            out.write(chunk[:count])
            count -= len(chunk)
        out.write(b"\r\n")
        out.flush()

    def stop(self) -> None:
        self._alive.clear()
        self._halt.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
