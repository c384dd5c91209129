"""The live preview: a small HTTP server on the device with the annotated picture and the
latest results (``edge-agent run --preview``). It only reads what the inference thread posts
(:class:`edge_agent.agent.latest.LatestFrame`); a frame is JPEG-encoded only when someone
asks for it, once however many watch, and a slow viewer skips frames instead of queueing them.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from edge_agent.agent.annotate import annotate
from edge_agent.agent.latest import LatestFrame, Observation
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

BOUNDARY = "edgeagentframe"
SHORT_REQUESTS = 4  # connections beyond max_clients for the page, snapshots and results


class FrameEncoder:
    """The annotated JPEG of an observation, encoded at most once per observation."""

    def __init__(self, quality: int) -> None:
        self._quality = quality
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] | None = None
        self.frames_encoded = 0

    def jpeg(self, obs: Observation) -> bytes:
        with self._lock:
            if self._cached is not None and self._cached[0] == obs.seq:
                return self._cached[1]
            import cv2

            ok, data = cv2.imencode(".jpg", annotate(obs.frame.image, obs.result),
                                    [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            if not ok:
                raise ValueError("the frame cannot be encoded as JPEG")
            self.frames_encoded += 1
            self._cached = (obs.seq, bytes(data.tobytes()))
            return self._cached[1]


class PreviewServer:
    """Serves ``/``, ``/stream.mjpg``, ``/snapshot.jpg`` and ``/results.json``.

    Args:
        board: where the inference thread posts the latest frame and result.
        host, port: where to listen (port 0: any free port, see :attr:`address`).
        status: the agent's figures for ``/results.json`` (model and health).
        title: shown on the page (the device id).
        max_clients: viewers of ``/stream.mjpg`` at once; one more gets 503.
        max_fps: frames per second sent to each viewer at most.
        quality: JPEG quality (1-100).
        client_timeout_s: a client that sends nothing, or takes nothing, this long is dropped.
    """

    def __init__(self, board: LatestFrame, host: str, port: int, status: Callable[[], dict[str, Any]], *,
                 title: str = "edge-agent", max_clients: int = 4, max_fps: float = 10.0, quality: int = 80,
                 client_timeout_s: float = 10.0) -> None:
        self.board, self.status, self.title = board, status, title
        self.client_timeout_s = client_timeout_s
        self.max_clients, self.period_s = max_clients, 1.0 / max_fps
        self.encoder = FrameEncoder(quality)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.viewers = 0
        self.refused = 0
        try:
            self._server = _Server((host, port), _Handler, self, max_connections=max_clients + SHORT_REQUESTS)
        except OSError as exc:
            raise ConfigError(f"cannot serve the preview on {host}:{port}: {exc.strerror or exc}; "
                              "choose another address with --preview HOST:PORT ([preview] listen)") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="preview", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        log.info("live preview on http://%s:%d/", f"[{host}]" if ":" in host else host, port)

    def stop(self) -> None:
        """Stop serving; open streams end within a fraction of a second."""
        self.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def note_refused(self) -> None:
        with self._lock:
            self.refused += 1

    def enter_viewer(self) -> bool:
        with self._lock:
            if self.viewers >= self.max_clients:
                self.refused += 1
                return False
            self.viewers += 1
            return True

    def leave_viewer(self) -> None:
        with self._lock:
            self.viewers -= 1

    def counters(self) -> dict[str, Any]:
        """Viewers now, frames encoded and clients refused since the start."""
        return {"viewers": self.viewers, "max_clients": self.max_clients,
                "frames_encoded": self.encoder.frames_encoded, "clients_refused": self.refused}

    def results(self) -> dict[str, Any]:
        """The body of ``/results.json``: the latest result, the agent's figures, the preview's."""
        obs = self.board.latest
        latest = None
        if obs is not None:
            latest = {"event_type": obs.event_type, "frame": obs.frame.index, "ts_ms": int(obs.ts * 1000),
                      "result": obs.result}
        return {"latest": latest, **self.status(), "preview": self.counters()}

    def page(self) -> bytes:
        return PAGE.replace("{title}", html.escape(self.title)).encode()


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once (more get 503 at once)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], preview: PreviewServer,
                 max_connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.preview = preview
        self._max, self._open, self._count_lock = max_connections, 0, threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            refuse = self._open >= self._max
            if not refuse:
                self._open += 1
        if not refuse:
            super().process_request(request, client_address)
            return
        self.preview.note_refused()
        try:
            request.settimeout(1.0)
            body = b"too many connections to the preview\n"
            request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self._open -= 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edge-agent-preview"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.preview.client_timeout_s)  # for reads and writes alike

    def do_GET(self) -> None:
        routes = {"/": self._page, "/index.html": self._page, "/stream.mjpg": self._stream,
                  "/snapshot.jpg": self._snapshot, "/results.json": self._results}
        route = routes.get(urlsplit(self.path).path)
        if route is None:
            self._send(404, "text/plain", b"not found: try / /stream.mjpg /snapshot.jpg /results.json\n")
            return
        with contextlib.suppress(ConnectionError, TimeoutError):  # the client left or stopped reading
            route()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("preview %s: " + format, self.client_address[0], *args)

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _page(self) -> None:
        self._send(200, "text/html; charset=utf-8", self.server.preview.page())

    def _results(self) -> None:
        body = json.dumps(self.server.preview.results(), default=str).encode()
        self._send(200, "application/json", body)

    def _snapshot(self) -> None:
        obs = self.server.preview.board.latest
        if obs is None:
            self._send(404, "text/plain", b"no frame yet\n")
            return
        self._send(200, "image/jpeg", self.server.preview.encoder.jpeg(obs))

    def _stream(self) -> None:
        preview = self.server.preview
        if not preview.enter_viewer():
            self._send(503, "text/plain", b"too many viewers (preview max_clients=%d)\n" % preview.max_clients)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._send_frames(preview)
        finally:
            preview.leave_viewer()

    def _send_frames(self, preview: PreviewServer) -> None:
        """Each newest frame, at most ``max_fps`` a second: a viewer slower than that gets fewer
        (the socket's own buffer is all that ever waits for it)."""
        seq, next_at = 0, 0.0
        while not preview.stopping.is_set():
            obs = preview.board.wait_newer(seq, 0.5)
            if obs is None:
                continue
            jpeg = preview.encoder.jpeg(obs)
            seq = obs.seq
            self.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                             % (BOUNDARY.encode(), len(jpeg), jpeg))
            next_at = max(next_at + preview.period_s, time.monotonic())
            if preview.stopping.wait(max(0.0, next_at - time.monotonic())):
                break


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - edge-agent preview</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { margin: 0; background: #111; color: #ddd; font: 14px/1.4 system-ui, sans-serif; }
#live { display: block; width: 100%; max-height: 80vh; object-fit: contain; background: #000; }
#results { margin: 0; padding: 6px 10px; white-space: pre-wrap; }
</style></head>
<body>
<img id="live" src="/stream.mjpg" alt="live picture">
<pre id="results">waiting for results...</pre>
<script>
"use strict";
function describe(d) {
  const lines = [];
  const latest = d.latest;
  if (!latest) { lines.push("no result yet"); }
  else {
    const r = latest.result || {};
    if (Array.isArray(r.detections)) {
      lines.push(r.detections.length + " detection(s): " +
                 r.detections.map(x => x.label + " " + Number(x.score).toFixed(2)).join(", "));
    } else if (Array.isArray(r.classes) && r.classes.length) {
      lines.push(r.classes.map(x => x.label + " " + Number(x.score).toFixed(2)).join(", "));
    } else { lines.push("nothing above the threshold"); }
    lines.push("frame " + latest.frame + " at " + new Date(latest.ts_ms).toLocaleTimeString());
  }
  const h = d.health || {};
  if (h.fps_inferred !== undefined) {
    lines.push("fps in " + h.fps_in + ", inferred " + h.fps_inferred + "; frames inferred " + h.frames_inferred);
  }
  if (h.source && h.source.state) { lines.push("source " + h.source.state); }
  if (d.model) { lines.push("model " + d.model.name + " " + d.model.version); }
  return lines.join("\\n");
}
async function poll() {
  try {
    const answer = await fetch("/results.json", {cache: "no-store"});
    document.getElementById("results").textContent = describe(await answer.json());
  } catch (e) {
    document.getElementById("results").textContent = "the agent does not answer (" + e + ")";
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"""
