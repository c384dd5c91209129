"""The running agent's pid file in the state directory, and signalling that agent.

The agent writes ``agent.pid`` at start; ``install-model`` and rollbacks send it SIGHUP
so it reloads ``models/current``. Only a live edge-agent process is ever signalled.
"""

from __future__ import annotations

import contextlib
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


def remove_pid_file(state_dir: Path) -> None:
    """Called by the agent at a clean stop; leaves another process's pid file alone."""
    path = Path(state_dir) / PID_FILE
    with contextlib.suppress(OSError):
        if read_agent_pid(Path(state_dir)) == os.getpid():
            path.unlink()


def read_agent_pid(state_dir: Path) -> int | None:
    """The pid of the running agent, or None when the pid file is missing or stale."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # not running (stale pid file)
    # guard against a recycled pid: only an edge-agent process is ever signalled
    return pid if b"edge" in cmdline else None


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
