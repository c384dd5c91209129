"""The running agent's pid file in the state directory, and signalling that agent.

The agent writes ``agent.pid`` at start; ``install-model`` and rollbacks send it SIGHUP
so it reloads ``models/current``. Only a live edge-agent process is ever signalled: the file
holds the pid and the process's start time (``/proc/PID/stat``), so a pid the kernel gave to
another process since is recognised, and the process must be ``edge-agent`` by its command
line (``…/edge-agent`` or ``python -m edge_agent``; a path that merely contains "edge", such as
a venv in ``/opt/edge-agent``, is not enough).
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
    """Called by the agent at start so installs can signal it: ``PID START_TIME``."""
    path = Path(state_dir) / PID_FILE
    pid = pid or os.getpid()
    started = _start_time(pid)
    atomic_write(path, (f"{pid} {started}\n" if started is not None else f"{pid}\n").encode())
    return path


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat.rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_agent(cmdline: bytes) -> bool:
    """``edge-agent …``, ``python …/edge-agent …`` or ``python -m edge_agent …``."""
    argv = cmdline.split(b"\0")[:4]
    if any(os.path.basename(arg) == b"edge-agent" for arg in argv):
        return True
    return any(a == b"-m" and b.split(b".")[0] == b"edge_agent" for a, b in itertools.pairwise(argv))


def remove_pid_file(state_dir: Path) -> None:
    """Called by the agent at a clean stop; leaves another process's pid file alone."""
    path = Path(state_dir) / PID_FILE
    with contextlib.suppress(OSError):
        if read_agent_pid(Path(state_dir)) == os.getpid():
            path.unlink()


def read_agent_pid(state_dir: Path) -> int | None:
    """The pid of the running agent, or None when the pid file is missing or stale."""
    try:
        fields = (state_dir / PID_FILE).read_text().split()
        pid = int(fields[0])
        started = int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # not running (stale pid file)
    # guard against a recycled pid: only the process that wrote the file, an edge-agent
    if started is not None and _start_time(pid) != started:
        return None
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
