"""The live preview's HTTP server on 127.0.0.1 with a real board of frames: endpoints, multipart
MJPEG, encoding only while watched, the viewer and connection limits, slow viewers dropped."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import cv2
import numpy as np
import pytest

from edge_agent.agent.latest import LatestFrame
from edge_agent.agent.preview import BOUNDARY, SHORT_REQUESTS, PreviewServer
from edge_agent.sources.base import Frame
from edge_agent.tasks.base import Result

BGR = (200, 40, 30)  # a blue frame


def _post(board: LatestFrame, index: int, image: np.ndarray | None = None) -> None:
    image = np.full((120, 160, 3), BGR, np.uint8) if image is None else image
    board.post(Frame(index, time.time(), image, 0.0), Result("classification",
                                                             {"frame": index, "classes": [{"label": "blue",
                                                                                           "score": 0.9}]}))


@pytest.fixture
def preview() -> Iterator[tuple[PreviewServer, LatestFrame]]:
    board = LatestFrame()
    server = PreviewServer(board, "127.0.0.1", 0, lambda: {"health": {"frames_inferred": 3}}, title="cam<1>",
                           max_clients=2, max_fps=60, client_timeout_s=1.0)
    server.start()
    yield server, board
    server.stop()


def _get(server: PreviewServer, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()
    finally:
        conn.close()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout  # bounds a hang only
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Stream:
    """A raw client of /stream.mjpg that reads parts only when asked."""

    def __init__(self, server: PreviewServer) -> None:
        self.sock = socket.create_connection(server.address, timeout=30)
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        self.file: BinaryIO = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().strip()):
            key, _, value = line.decode().partition(":")
            self.headers[key.lower()] = value.strip()

    def part(self) -> tuple[dict[str, str], bytes]:
        assert self.file.readline() == b"--" + BOUNDARY.encode() + b"\r\n"
        headers: dict[str, str] = {}
        while (line := self.file.readline().strip()):
            key, _, value = line.decode().partition(":")
            headers[key.lower()] = value.strip()
        body = self.file.read(int(headers["content-length"]))
        assert self.file.read(2) == b"\r\n"
        return headers, body

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_page_results_snapshot_and_unknown_paths(preview: tuple[PreviewServer, LatestFrame]) -> None:
    server, board = preview
    status, ctype, page = _get(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b'src="/stream.mjpg"' in page and b"/results.json" in page and b"cam&lt;1&gt;" in page
    status, ctype, body = _get(server, "/results.json")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"latest": None, "health": {"frames_inferred": 3},
                                "preview": {"viewers": 0, "max_clients": 2, "frames_encoded": 0,
                                            "clients_refused": 0}}
    assert _get(server, "/snapshot.jpg")[0] == 404  # no frame yet
    _post(board, 7)
    status, ctype, jpeg = _get(server, "/snapshot.jpg")
    assert status == 200 and ctype == "image/jpeg"
    image = _decode(jpeg)
    assert image.shape == (120, 160, 3)
    assert np.abs(image[100, 80].astype(int) - BGR).max() < 12  # the frame, away from the label
    assert np.abs(image[5, 5].astype(int) - BGR).max() > 60  # the label drawn in the corner
    latest = json.loads(_get(server, "/results.json")[2])["latest"]
    assert latest["frame"] == 7 and latest["event_type"] == "classification"
    assert latest["result"]["classes"][0] == {"label": "blue", "score": 0.9}
    assert _get(server, "/nothing")[0] == 404
    assert _get(server, "/", method="POST")[0] == 501


def test_frames_are_encoded_only_while_someone_watches(preview: tuple[PreviewServer, LatestFrame]) -> None:
    server, board = preview
    for i in range(20):
        _post(board, i)
    assert server.encoder.frames_encoded == 0  # nobody watched
    stream = Stream(server)
    assert stream.status == 200
    assert stream.headers["content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    seen = []
    for i in range(20, 23):
        _post(board, i)
        headers, jpeg = stream.part()
        assert headers["content-type"] == "image/jpeg"
        assert _decode(jpeg).shape == (120, 160, 3)
        seen.append(jpeg)
    assert server.viewers == 1 and server.encoder.frames_encoded >= 1
    stream.close()
    index = 23
    while server.viewers:  # the server notices the viewer left at its next write
        _post(board, index)
        index += 1
        time.sleep(0.02)
        assert index < 3000, "the viewer that left was never noticed"
    encoded = server.encoder.frames_encoded
    for i in range(30):
        _post(board, index + i)
    time.sleep(0.2)
    assert server.encoder.frames_encoded == encoded
    assert json.loads(_get(server, "/results.json")[2])["preview"]["frames_encoded"] == encoded


def test_viewers_beyond_max_clients_get_503(preview: tuple[PreviewServer, LatestFrame]) -> None:
    server, board = preview
    _post(board, 1)
    streams = [Stream(server), Stream(server)]
    for stream in streams:
        assert stream.status == 200 and stream.part()[1][:2] == b"\xff\xd8"
    status, _, body = _get(server, "/stream.mjpg")
    assert status == 503 and b"max_clients=2" in body
    assert server.counters()["clients_refused"] == 1
    assert _get(server, "/results.json")[0] == 200  # short requests still served
    streams[0].close()
    index = 2
    while server.viewers > 1:
        _post(board, index)
        index += 1
        time.sleep(0.02)
    again = Stream(server)
    assert again.status == 200
    again.close()
    streams[1].close()


def test_connections_beyond_the_cap_get_503_at_once(preview: tuple[PreviewServer, LatestFrame]) -> None:
    server, _ = preview
    idle = [socket.create_connection(server.address, timeout=30) for _ in range(2 + SHORT_REQUESTS)]
    try:
        _wait(lambda: server._server._open == len(idle), "the idle connections to be accepted")
        status, _, body = _get(server, "/results.json")
        assert status == 503 and body == b"too many connections to the preview\n"
    finally:
        for sock in idle:
            sock.close()
    # idle clients are dropped after client_timeout_s; then requests are served again
    _wait(lambda: server._server._open == 0, "idle connections to time out")
    assert _get(server, "/results.json")[0] == 200


def test_a_viewer_that_stops_reading_is_dropped_and_never_holds_up_posting(
        preview: tuple[PreviewServer, LatestFrame]) -> None:
    server, board = preview
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # large JPEGs: the socket buffer fills
    _post(board, 0, noise)
    stream = Stream(server)  # reads its headers, then nothing more
    posted = 0
    try:
        while server.viewers:
            _post(board, posted, noise)  # returns at once however full the viewer's socket is
            posted += 1
            time.sleep(0.01)
            assert posted < 20000, "the viewer that stopped reading was never dropped"
    finally:
        stream.close()
    assert server.viewers == 0
    assert server.encoder.frames_encoded < posted  # frames it could not take were skipped, not queued


def test_a_busy_port_is_one_clear_error(preview: tuple[PreviewServer, LatestFrame]) -> None:
    from edge_agent.errors import ConfigError

    server, board = preview
    host, port = server.address
    with pytest.raises(ConfigError, match=rf"cannot serve the preview on 127.0.0.1:{port}: .*--preview HOST:PORT"):
        PreviewServer(board, host, port, dict)


