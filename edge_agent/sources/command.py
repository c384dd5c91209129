"""``exec:COMMAND``: a command that writes MJPEG on its stdout (``rpicam-vid --codec mjpeg -o -``,
``ffmpeg … -f mjpeg -``, ``gst-launch-1.0 … ! jpegenc ! fdsink``), read with the stream's parser
and limits, restarted with backoff when it exits; the tail of its stderr says why.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource, SourceStallError
from edge_agent.sources.imagesize import DEFAULT_MAX_PIXELS
from edge_agent.sources.mjpeg import MAX_PART_BYTES, MjpegReader, decode_jpeg
from edge_agent.sources.stream import STALL_FACTOR, hide_credentials

PREFIX = "exec:"
POLL_S = 0.2  # a blocked read looks at stop() this often
STDERR_KEEP_BYTES = 4096  # of the command's stderr held in memory
STDERR_REASON_CHARS = 300  # of it quoted in last_error
KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the command's process group
NOT_MJPEG_HINT = "the command must write MJPEG on stdout: rpicam-vid --codec mjpeg, ffmpeg -f mjpeg, gst … jpegenc " \
    "(and gst-launch-1.0 -q)"
EXIT_WAIT_S = 0.2  # for the exit status of a command whose output broke off


def parse_command(uri: str) -> list[str]:
    """The argv of ``exec:COMMAND`` (split as a shell would, but run without one)."""
    text = uri[len(PREFIX):] if uri.lower().startswith(PREFIX) else uri
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise SourceError(f"exec: cannot split the command {text!r}: {exc} (check its quotes)") from exc
    if not argv:
        raise SourceError("exec: no command given; e.g. --source \"exec:rpicam-vid -t 0 --codec mjpeg -o -\"")
    return argv


class PipeReader:
    """``read1`` on a pipe that gives up after ``timeout_s`` of silence and returns b"" once ``stop`` is set.

    The first bytes may take ``first_timeout_s``: a camera command needs a moment to start.
    """

    def __init__(self, fd: int, timeout_s: float, stop: threading.Event, first_timeout_s: float | None = None) -> None:
        self._fd, self._stop = fd, stop
        self._timeout, self._next_timeout = timeout_s, max(timeout_s, first_timeout_s or 0.0)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read1(self, size: int) -> bytes:
        timeout = self._next_timeout
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no output for {timeout:g} s")
            if self._poll.poll(min(POLL_S, remaining) * 1000):
                self._next_timeout = self._timeout
                return os.read(self._fd, size)
        return b""


class StderrTail:
    """Drains a pipe on its own thread, keeping only its last ``STDERR_KEEP_BYTES``."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._drain, name="exec-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self._pipe.fileno(), 4096):
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-STDERR_KEEP_BYTES]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        """The last lines as one bounded line (``a | b | c``), "" when the command said nothing."""
        with self._lock:
            raw = bytes(self._tail)
        lines = [" ".join(line.split()) for line in raw.decode("utf-8", "replace").replace("\r", "\n").split("\n")]
        joined = " | ".join(line for line in lines if line)
        return joined if len(joined) <= STDERR_REASON_CHARS else "…" + joined[-STDERR_REASON_CHARS:]


class CommandSource(ReconnectingSource):
    """Frames from a command's stdout; the command is restarted (with backoff) whenever it exits."""

    type_name = "exec"

    def __init__(
        self, uri: str, read_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
        stall_timeout_s: float | None = None, max_part_bytes: int = MAX_PART_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        stall_s = stall_timeout_s if stall_timeout_s is not None else STALL_FACTOR * read_timeout_s
        super().__init__(reconnect_min_s, reconnect_max_s, stall_s)
        self._argv = parse_command(uri)
        self._shown = hide_credentials(shlex.join(self._argv), None)
        self._timeout, self._stall = read_timeout_s, stall_s
        self._max_part, self._max_pixels = max_part_bytes, max_image_pixels
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: StderrTail | None = None
        self._reader: MjpegReader | None = None

    def start(self) -> None:
        if shutil.which(self._argv[0]) is None:
            raise SourceError(f"exec: command {self._argv[0]!r} not found (not on PATH or not executable)")

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["command"] = self._shown
        state["pid"] = self._proc.pid if self._proc is not None else None
        if self._reader is not None:
            state["framing"] = self._reader.framing
        return state

    def _connect(self) -> None:
        try:
            proc = subprocess.Popen(  # the user's own command, without a shell
                self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: closing kills its children too
            )
        except OSError as exc:
            raise SourceError(f"exec: cannot run {self._argv[0]!r}: {exc.strerror or exc}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        self._proc, self._stderr = proc, StderrTail(proc.stderr)
        pipe = PipeReader(proc.stdout.fileno(), self._timeout, self._stop, first_timeout_s=self._stall)
        self._reader = MjpegReader(pipe, None, self._stall, self._max_part)

    def _grab(self) -> np.ndarray | None:
        assert self._reader is not None
        try:
            data = self._reader.read_part()
            if data is None:
                if self._stop.is_set():
                    return None
                self._exit_reason(KILL_GRACE_S)  # the output ended: give the command time to exit
                raise SourceError("the command closed its output but still runs")
            return decode_jpeg(data, self._max_pixels)
        except TimeoutError as exc:
            raise SourceStallError(self._with_stderr(f"exec: {exc}")) from exc
        except SourceStallError as exc:
            raise SourceStallError(self._with_stderr(f"exec: {exc}")) from exc
        except SourceError as exc:  # the output ended or is not MJPEG: say first whether the command exited
            reason = self._exit_reason(EXIT_WAIT_S) or str(exc)
            if self._reader.framing == "other":
                reason += f" ({NOT_MJPEG_HINT})"
            raise SourceError(self._with_stderr(f"exec: {reason}")) from exc
        except OSError as exc:
            raise SourceError(self._with_stderr(f"exec: reading the command's output failed: {exc}")) from exc

    def _exit_reason(self, wait_s: float) -> str | None:
        """The command's exit status (waited for up to ``wait_s``), or None while it runs."""
        assert self._proc is not None
        try:
            code = self._proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None
        if code < 0:
            return f"the command was killed by signal {-code}"
        return f"the command exited with status {code}"

    def _with_stderr(self, message: str) -> str:
        if self._stderr is None:
            return message
        self._stderr.join(0.5 if self._proc is not None and self._proc.poll() is not None else 0)
        tail = self._stderr.text()
        return f"{message}; its stderr: {tail}" if tail else message

    def _disconnect(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_group(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._stderr is not None:
            self._stderr.join(1.0)
            self._stderr = None
        self._reader = None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, SIGKILL what is left after a grace period, reap the command."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that ignored SIGTERM (or the command itself)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)
