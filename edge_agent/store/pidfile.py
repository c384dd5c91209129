"""The running agent's pid file in the state directory, and signalling that agent.

The agent writes ``agent.pid`` at start; ``install-model`` and rollbacks send it SIGHUP
so it reloads ``models/current``. Only a live edge-agent process is ever signalled: a pid the
kernel has given to another process since must be ``edge-agent`` by its command line
(``…/edge-agent`` or ``python -m edge_agent``; a path that merely contains "edge", such as a
venv in ``/opt/edge-agent``, is not enough). The process start time is not used: under
qemu-user (pi-check) a process sees its own ``/proc/PID/stat`` faked, with another start time
than the one other processes read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
from pathlib import Path

from edge_agent.util.fs import atomic_write

log = logging.getLogger(__name__)

PID_FILE = "agent.pid"


def write_pid_file(state_dir: Path, pid: int | None = None) -> Path:
    """Called by the agent at start so installs can signal it."""
    path = Path(state_dir) / PID_FILE
    atomic_write(path, f"{pid or os.getpid()}\n".encode())
    return path


def _is_agent(cmdline: bytes) -> bool:
    """``edge-agent …``, ``python …/edge-agent …`` or ``python -m edge_agent …`` (anywhere in
    argv: an emulator such as qemu-binfmt puts its own arguments first)."""
    argv = cmdline.split(b"\0")
    if any(os.path.basename(arg) == b"edge-agent" for arg in argv):
        return True
    return any(a == b"-m" and b.split(b".")[0] == b"edge_agent" for a, b in itertools.pairwise(argv))


def remove_pid_file(state_dir: Path) -> None:
    """Called by the agent at a clean stop; leaves another process's pid file alone."""
    path = Path(state_dir) / PID_FILE
    with contextlib.suppress(OSError):
        if _pid_in_file(path) == os.getpid():
            path.unlink()


def _pid_in_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])  # a second field is ignored
    except (OSError, ValueError, IndexError):
        return None


def read_agent_pid(state_dir: Path) -> int | None:
    """The pid of the running agent, or None when the pid file is missing or stale."""
    pid = _pid_in_file(Path(state_dir) / PID_FILE)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # not running (stale pid file)
    # guard against a recycled pid: only an edge-agent process is ever signalled
    return pid if _is_agent(cmdline) else None


def signal_running_agent(state_dir: Path, signum: int = signal.SIGHUP) -> bool:
    """Tell a running agent to reload its model; False when none runs."""
    pid = read_agent_pid(Path(state_dir))
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError) as exc:
        log.warning("cannot signal agent pid %d: %s", pid, exc)
        return False
    return True
