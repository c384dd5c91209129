"""Hostile network streams: each fault is bounded, counted in ``state()`` and survived.

The source runs the way the agent's capture thread runs it (``read()`` in a loop on
its own thread) against a real server on 127.0.0.1 whose first connection
misbehaves. Each test checks that the thread never died, that the problem shows
in ``state()`` with its reason, and that the source came back to good frames.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from edge_agent.config import SourceSection
from edge_agent.errors import SourceError
from edge_agent.sources import Frame, Source, create_source
from edge_agent.sources.imagesize import image_size
from edge_agent.sources.stream import MAX_PART_BYTES, MjpegReader
from tests.integration.mjpeg import MjpegServer, declare_size, free_port

DEADLINE_S = 30.0  # only bounds a hang: every wait here normally ends within a few seconds
GREY = 200
SHAPE = (24, 32, 3)


def grey(_index: int) -> np.ndarray:
    return np.full(SHAPE, GREY, np.uint8)


def stream_source(url: str) -> Source:
    return create_source(SourceSection(uri=url, read_timeout_s=1.0, reconnect_min_s=0.05, reconnect_max_s=0.2))


class Capture:
    """``source.read()`` in a loop on its own thread, like the agent's capture thread."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.frames = 0
        self.errors_at_last_frame = 0  # source errors counted before the latest frame
        self.bad_frames: list[tuple[int, ...]] = []  # shapes of frames that are not the server's grey frame
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.source.start()
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self.source.read()) is not None:
                assert isinstance(item, Frame)  # a stream gives images
                image = item.image
                if image.shape != SHAPE or abs(float(image.mean()) - GREY) > 8:
                    self.bad_frames.append(tuple(image.shape))
                self.frames += 1
                self.errors_at_last_frame = self.source.state()["errors"]
        except BaseException as exc:  # the test reports it: a capture thread must never die
            self.crash = exc
        finally:
            self.source.close()

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            state = self.source.state()
            if condition(state):
                return state
            assert self.crash is None, f"capture thread died: {self.crash!r}"
            assert self._thread.is_alive(), "read() returned None while the source was not stopped"
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {DEADLINE_S} s; state {self.source.state()}")

    def stop(self) -> None:
        """Stop the source; its ``read()`` must return even while the server misbehaves."""
        self.source.stop()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), f"read() did not return after stop(); state {self.source.state()}"
        assert self.crash is None, f"capture thread died: {self.crash!r}"


@pytest.fixture
def serve() -> Iterator[Callable[..., MjpegServer]]:
    servers: list[MjpegServer] = []

    def start(**kwargs: Any) -> MjpegServer:
        server = MjpegServer(grey, fps=50, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# fault → a piece of the reason the source must report for it
CONNECT_FAULTS = {
    "accept-silent": "timed out",
    "http-garbage": "BadStatusLine",
    "http-many-headers": "more than 100 headers",
}
BODY_FAULTS = {
    "stall-after-headers": "read timeout",
    "no-boundary-lines": "no boundary line",
    "short-length": "undecodable image",
    "long-length": "wrong Content-Length",
    "negative-length": "bad Content-Length '-1'",
    "text-length": "bad Content-Length 'abc'",
    "oversize-length": f"part too large: {MAX_PART_BYTES + 1} bytes",
    "oversize-no-length": "part too large: no end marker",
    "many-headers": "part headers",
    "garbage": "not an image in a known format",
    "bomb": "10000x10000",
    "stall-mid-part": "read timeout",
    "close-mid-part": "middle of a part",
    "trickle": "no complete frame within",
    "bad-chunk": "IncompleteRead",
}


@pytest.mark.parametrize(("fault", "reason"), [*CONNECT_FAULTS.items(), *BODY_FAULTS.items()])
def test_mjpeg_fault_is_reported_and_survived(serve: Callable[..., MjpegServer], fault: str, reason: str) -> None:
    server = serve(fault=fault)
    capture = Capture(stream_source(server.url))
    capture.start()
    try:
        state = capture.wait_for(lambda s: reason in (s["last_error"] or "") and capture.errors_at_last_frame >= 1,
                                 f"good frame after the {fault!r} fault was reported as {reason!r}")
    finally:
        capture.stop()
    assert state["errors"] >= 1 and server.connections >= 2
    if fault in BODY_FAULTS:
        assert state["reconnects"] >= 1  # the broken connection was dropped, not resynchronised silently
    assert "\n" not in state["last_error"] and len(state["last_error"]) < 300
    assert capture.bad_frames == [], "a broken part was delivered as a frame"


@pytest.mark.parametrize(("variant", "framing"), [
    ("no-boundary-param", "multipart"), ("octet-stream", "multipart"), ("bare-jpegs", "jpeg")])
def test_mjpeg_is_recognised_by_its_content_on_the_first_connection(
        serve: Callable[..., MjpegServer], variant: str, framing: str) -> None:
    """A camera whose Content-Type does not say multipart (or names no boundary) is read on the one connection."""
    server = serve(fault=variant, faulty=10**6)
    capture = Capture(stream_source(server.url))
    capture.start()
    try:
        state = capture.wait_for(lambda s: capture.frames >= 5, "five frames")
    finally:
        capture.stop()
    assert (state["mode"], state["framing"], state["errors"], server.connections) == ("mjpeg", framing, 0, 1)
    assert capture.bad_frames == []


def test_mjpeg_fault_on_every_connection_keeps_retrying(serve: Callable[..., MjpegServer]) -> None:
    server = serve(fault="garbage", faulty=10**6)
    capture = Capture(stream_source(server.url))
    capture.start()
    try:
        state = capture.wait_for(lambda s: s["reconnects"] >= 3, "three reconnects")
    finally:
        capture.stop()
    assert capture.frames == 0 and "not an image" in state["last_error"]
    assert state["errors"] >= state["reconnects"]


def test_mjpeg_reader_bounds_on_a_pipe() -> None:
    jpeg = MjpegServer(grey).jpeg(0)
    part = b"--b\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
    # A preamble, an RFC-style "----b" line for a boundary declared as "--b", a part
    # without Content-Length, blank lines between parts, and the closing boundary.
    first = b"preamble\r\n----b\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n\r\n"
    reader = MjpegReader(io.BytesIO(first + part + part + b"--b--\r\n" + part), b"--b")
    assert [reader.read_part() for _ in range(4)] == [jpeg, jpeg, jpeg, None]
    assert image_size(io.BytesIO(jpeg)) == (32, 24)
    assert image_size(io.BytesIO(declare_size(jpeg, 10000, 7))) == (10000, 7)
    with pytest.raises(SourceError, match="no boundary line in the first"):
        MjpegReader(io.BytesIO(b"x" * (1 << 20)), b"b").read_part()


def silent_listener(stop: threading.Event) -> tuple[int, threading.Thread]:
    """A TCP port that accepts connections and never says anything (until ``stop``)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    port = int(server.getsockname()[1])

    def run() -> None:
        held: list[socket.socket] = []
        with server:
            while not stop.is_set() and len(held) < 100:
                try:
                    held.append(server.accept()[0])
                except TimeoutError:
                    continue
            stop.wait(DEADLINE_S)
            for conn in held:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def test_rtsp_that_never_opens_is_reported_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens there
    capture = Capture(stream_source(f"rtsp://admin:s3cret@127.0.0.1:{port}/x"))
    capture.start()
    try:
        state = capture.wait_for(lambda s: s["errors"] >= 3, "three failed opens")
    finally:
        capture.stop()
    assert state["state"] == "reconnecting" and state["reconnects"] == 0 and capture.frames == 0
    assert state["last_error"] == f"cannot open stream rtsp://***@127.0.0.1:{port}/x"
    assert "s3cret" not in repr(state) and "s3cret" not in caplog.text


def test_rtsp_server_that_never_answers_times_out() -> None:
    stop = threading.Event()
    port, listener = silent_listener(stop)
    capture = Capture(stream_source(f"rtsp://127.0.0.1:{port}/x"))
    capture.start()
    try:
        state = capture.wait_for(lambda s: s["errors"] >= 2, "two timed-out opens")
    finally:
        capture.stop()
        stop.set()
        listener.join(DEADLINE_S)
    assert state["state"] == "reconnecting" and "cannot open stream" in state["last_error"]


def limited_source(url: str, **settings: Any) -> Source:
    return create_source(SourceSection(uri=url, **{"read_timeout_s": 1.0, "reconnect_min_s": 0.05,
                                                   "reconnect_max_s": 0.2, **settings}))


def test_part_without_length_or_end_marker_is_refused_after_one_linear_scan(
        serve: Callable[..., MjpegServer], caplog: pytest.LogCaptureFixture) -> None:
    limit = 256 * 1024
    server = serve(fault="oversize-no-length", faulty=10**6)  # 9 MiB of zeros in every part
    capture = Capture(limited_source(server.url, max_part_bytes=limit))
    capture.start()
    try:
        state = capture.wait_for(lambda s: s["reconnects"] >= 3, "three refused parts")
    finally:
        capture.stop()
    assert capture.frames == 0 and state["state"] == "reconnecting"
    assert state["last_error"].startswith(f"MJPEG: part too large: no end marker in {limit} bytes")
    refused = state["errors"]
    # Each byte of a refused part is examined once (plus one byte per read where a marker
    # could straddle two reads): searching the whole buffer after every read would be
    # quadratic, about limit² / (2 x read size) = 2 MiB per part here.
    assert refused * limit <= state["bytes_scanned"] < refused * limit * 1.25
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "part too large" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # rate-limited: one line, not one per part


@pytest.mark.parametrize(("fault", "reason"), [
    ("trickle", "MJPEG: no complete frame within 1 s"),
    ("trickle-headers", "no complete answer within 1 s"),
    ("trickle-snapshot", "no complete answer within 1 s"),
])
def test_trickling_server_is_stalled_then_reconnected(serve: Callable[..., MjpegServer], fault: str,
                                                      reason: str) -> None:
    server = serve(fault=fault)
    capture = Capture(limited_source(server.url, stall_timeout_s=1.0))
    capture.start()
    try:
        # health may first say "no complete frame for 1 s" (a read still blocked past the deadline,
        # seen first on a slow CPU such as pi-check's emulated Pi), then the source's own reason
        stalled = capture.wait_for(lambda s: s["state"] == "stalled" and reason in (s["last_error"] or ""),
                                   f"state 'stalled' with {reason!r}")
        recovered = capture.wait_for(lambda s: s["state"] == "connected" and capture.errors_at_last_frame >= 1,
                                     "good frames after the stall")
    finally:
        capture.stop()
    assert reason in stalled["last_error"] and "trickles or stalls" in stalled["last_error"]
    assert recovered["errors"] >= 1 and server.connections >= 2
    assert capture.bad_frames == []


def test_health_shows_a_stall_while_a_read_still_blocks(serve: Callable[..., MjpegServer]) -> None:
    server = serve(fault="stall-after-headers")
    # The read itself would wait 8 s for a byte; health must not say "connected" meanwhile.
    capture = Capture(limited_source(server.url, read_timeout_s=8.0, stall_timeout_s=1.0))
    capture.start()
    try:
        state = capture.wait_for(lambda s: s["state"] == "stalled", "state 'stalled'")
    finally:
        capture.stop()
    assert state["last_error"].startswith("no complete frame for ") and state["errors"] == 0
