"""Cameras as they are in the field, with real processes: ffmpeg as a single-client HTTP camera
with a non-standard Content-Type, ffmpeg (and commands that fail) behind ``exec:``, and the
Pi camera without Picamera2.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import SourceSection
from edge_agent.sources import Frame, Source, create_source
from tests import tflite_builders as tb
from tests.integration.agent_helpers import events, run_agent
from tests.integration.mjpeg import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")]

DEADLINE_S = 30.0  # only bounds a hang
FFMPEG = "ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc=size=64x48:rate=10"
EXEC_FFMPEG = f"exec:{FFMPEG} -f mjpeg -"


def make_source(uri: str, **settings: Any) -> Source:
    """A source with short timeouts (ffmpeg tests pass a longer read_timeout_s: a loaded CPU starts it slowly)."""
    return create_source(SourceSection(uri=uri, **{"read_timeout_s": 1.0, "reconnect_min_s": 0.05,
                                                   "reconnect_max_s": 0.2, **settings}))


class Capture:
    """``read()`` in a loop on its own thread, as the agent's capture thread runs it."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.frames = 0
        self.shapes: set[tuple[int, ...]] = set()
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capture:
        self.source.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while (item := self.source.read()) is not None:
                assert isinstance(item, Frame)
                self.shapes.add(tuple(item.image.shape))
                self.frames += 1
        except BaseException as exc:  # reported by wait_for: a capture thread must never die
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
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {DEADLINE_S} s; state {self.source.state()}")

    def __exit__(self, *exc: object) -> None:
        self.source.stop()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), f"read() did not return after stop(); {self.source.state()}"
        assert self.crash is None, f"capture thread died: {self.crash!r}"


@pytest.fixture
def single_client_camera() -> Iterator[str]:
    """ffmpeg serving multipart JPEG as ``application/octet-stream`` to one client, then exiting."""
    port = free_port()
    proc = subprocess.Popen([*FFMPEG.split(), "-f", "mpjpeg", "-listen", "1", f"http://127.0.0.1:{port}/cam"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                             check=False).stdout.strip() == "":
            assert proc.poll() is None and time.monotonic() < deadline, "ffmpeg did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/cam"
    finally:
        proc.kill()
        proc.wait()


def test_single_client_camera_with_octet_stream_is_read_on_its_one_connection(single_client_camera: str) -> None:
    with Capture(make_source(single_client_camera, read_timeout_s=5.0)) as capture:
        state = capture.wait_for(lambda s: capture.frames >= 5, "five frames")
    assert (state["mode"], state["framing"], state["errors"], state["reconnects"]) == ("mjpeg", "multipart", 0, 0)
    assert capture.shapes == {(48, 64, 3)}


@pytest.fixture
def colours_model(tmp_path: Path) -> Path:
    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.image_classifier("float32"))
    return model


@pytest.mark.parametrize("kind", ["single-client http", "exec"])
def test_agent_infers_from_field_cameras(kind: str, request: pytest.FixtureRequest, colours_model: Path,
                                         tmp_path: Path) -> None:
    """Before: "0 in, 0 inferred … no inferences" and nothing on stderr for the single-client camera."""
    source = request.getfixturevalue("single_client_camera") if kind != "exec" else EXEC_FFMPEG
    code, messages, stderr = run_agent("--bundle", colours_model, "--source", source, "--events", "every",
                                       "--max-frames", "5", "--state-dir", tmp_path / "state", timeout=60)
    assert code == 0, stderr
    assert len(events(messages, "evt/classification")) == 5
    assert "WARNING" not in stderr and "5 inferred" in stderr


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="needs gst-launch-1.0")
def test_exec_gstreamer_recipe() -> None:
    pipeline = "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=10/1 ! videoconvert ! jpegenc"
    with Capture(make_source(f"exec:gst-launch-1.0 -q {pipeline} ! fdsink fd=1", read_timeout_s=5.0)) as capture:
        state = capture.wait_for(lambda s: capture.frames >= 5, "five frames")
    assert (state["framing"], state["errors"], capture.shapes) == ("jpeg", 0, {(48, 64, 3)})
    with Capture(make_source(f"exec:gst-launch-1.0 {pipeline} ! fdsink fd=1", read_timeout_s=5.0)) as capture:
        state = capture.wait_for(lambda s: s["errors"] >= 1, "the error of a gst-launch-1.0 without -q")
    assert "gst-launch-1.0 -q" in state["last_error"]  # its progress lines on stdout are not MJPEG


def test_exec_ffmpeg_gives_frames_and_close_kills_its_process_group() -> None:
    # A shell whose background child shares the command's process group: close() must end both.
    with Capture(make_source(f"exec:sh -c 'sleep 300 & exec {FFMPEG} -f mjpeg -'", read_timeout_s=5.0)) as capture:
        state = capture.wait_for(lambda s: capture.frames >= 5, "five frames")
        group = state["pid"]
        assert len(live_members(group)) == 2  # ffmpeg and its background sleep
    assert (state["framing"], state["errors"], capture.shapes) == ("jpeg", 0, {(48, 64, 3)})
    assert capture.source.state()["pid"] is None
    assert live_members(group) == []  # killed (what is left is a zombie until its new parent reaps it)


def live_members(group: int) -> list[int]:
    """Processes of a process group that are not zombies, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_exiting_command_is_restarted_with_its_stderr_in_last_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    command = "exec:sh -c 'echo starting >&2; echo \"camera busy: $0\" >&2; exit 3' cam0"
    with Capture(make_source(command)) as capture:
        state = capture.wait_for(lambda s: s["reconnects"] >= 4, "four restarts")
    assert capture.frames == 0 and state["state"] == "reconnecting" and state["errors"] >= 4
    assert state["last_error"] == "exec: the command exited with status 3; its stderr: starting | camera busy: cam0"
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and "exited with status 3" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # rate-limited: one line, not one per restart


def test_command_that_ends_after_a_few_frames_keeps_giving_frames(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    command = f"exec:{FFMPEG} -frames:v 3 -f mjpeg -"
    with Capture(make_source(command, read_timeout_s=5.0)) as capture:
        state = capture.wait_for(lambda s: s["reconnects"] >= 3 and capture.frames >= 9, "nine frames, three restarts")
    assert state["last_error"] == "exec: the command exited with status 0"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in messages if "reconnecting (exec: the command exited" in m]) == 1, messages
    assert len([m for m in messages if "frames again after" in m]) == 1, messages


@pytest.mark.parametrize(("script", "reason", "settings"), [
    ("sleep 300", "exec: no output for 3 s", {}),  # the first bytes may take the stall deadline
    ("printf '\\377\\330'; sleep 300", "exec: no output for 1 s", {"stall_timeout_s": 10.0}),
    ("echo hello; sleep 300", "starts with neither a boundary line nor a JPEG start marker", {}),
    ("printf '\\377\\330'; head -c 300000 /dev/zero; sleep 300",
     "part too large: no end marker in 65536 bytes", {"max_part_bytes": 65536}),
    ("printf '\\377\\330'; while sleep 0.1; do printf x; done",
     "MJPEG: no complete frame within 1 s", {"stall_timeout_s": 1.0}),
])
def test_command_output_is_bounded_like_a_stream(script: str, reason: str, settings: dict[str, Any]) -> None:
    with Capture(make_source(f"exec:sh -c {shlex.quote(script)}", **settings)) as capture:
        state = capture.wait_for(lambda s: reason in (s["last_error"] or "") and s["reconnects"] >= 1,
                                 f"a restart for {reason!r}")
    assert capture.frames == 0 and state["state"] in ("reconnecting", "stalled")


def test_missing_command_and_missing_picamera2_are_one_clear_line(colours_model: Path, tmp_path: Path) -> None:
    assert "picamera2" not in sys.modules
    for source, expected in [("exec:no-such-camera-tool -o -", "'no-such-camera-tool' not found"),
                             ("picamera2", 'or use --source "exec:rpicam-vid -t 0 --codec mjpeg -o -"')]:
        code, messages, stderr = run_agent("--bundle", colours_model, "--source", source,
                                           "--state-dir", tmp_path / "state")
        lines = stderr.strip().splitlines()
        assert code != 0 and len(lines) == 1 and expected in lines[0], stderr
        assert not events(messages, "evt/classification")
