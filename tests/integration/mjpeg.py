"""A local HTTP MJPEG (multipart/x-mixed-replace) server for the stream tests.

Serves a callable's frames at a fixed rate on 127.0.0.1; ``stop()`` closes the
listening socket *and* every open connection, so clients see the server go away.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frameboundary"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MjpegServer:
    def __init__(self, frame: Callable[[int], np.ndarray], port: int = 0, fps: float = 30.0,
                 with_length: bool = True) -> None:
        self.port = port or free_port()
        self.frame, self.fps, self.with_length = frame, fps, with_length
        self.sent = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._alive = threading.Event()
        self._conns: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer._conns.append(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                try:
                    while outer._alive.is_set():
                        _ok, jpeg = cv2.imencode(".jpg", outer.frame(outer.sent), [cv2.IMWRITE_JPEG_QUALITY, 95])
                        data = jpeg.tobytes()
                        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        if outer.with_length:
                            head += f"Content-Length: {len(data)}\r\n"
                        self.wfile.write(head.encode() + b"\r\n" + data + b"\r\n")
                        self.wfile.flush()
                        outer.sent += 1
                        time.sleep(1.0 / outer.fps)
                except OSError:
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._alive.set()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._alive.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self._conns.clear()
