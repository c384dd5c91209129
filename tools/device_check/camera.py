"""An IP camera on the host: multipart MJPEG over HTTP from a video's frames, that can be paused.

Paused, it keeps every connection open and sends nothing, as a camera whose sensor hung
does: the agent sees a stream that stops delivering.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import cv2

BOUNDARY = "frame"


def jpeg_frames(video: Path, limit: int = 200) -> list[bytes]:
    capture = cv2.VideoCapture(str(video))
    frames: list[bytes] = []
    try:
        while len(frames) < limit:
            ok, image = capture.read()
            if not ok:
                break
            encoded, data = cv2.imencode(".jpg", image)
            if encoded:
                frames.append(data.tobytes())
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"no frames in {video}")
    return frames


class Camera:
    """``http://127.0.0.1:PORT/stream.mjpg`` at ``fps``; :meth:`pause` and :meth:`resume`."""

    def __init__(self, frames: list[bytes], fps: float = 10.0) -> None:
        self.frames, self.interval = frames, 1.0 / fps
        self._running = threading.Event()
        self._running.set()
        self._closed = threading.Event()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.serve(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="camera", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> Camera:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._closed.set()
        self._running.set()
        self.server.shutdown()
        self.server.server_close()

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        index = 0
        try:
            while not self._closed.is_set():
                self._running.wait()
                if self._closed.is_set():
                    return
                frame = self.frames[index % len(self.frames)]
                index += 1
                handler.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n"
                                    .encode() + frame + b"\r\n")
                handler.wfile.flush()
                time.sleep(self.interval)
        except OSError:
            return
