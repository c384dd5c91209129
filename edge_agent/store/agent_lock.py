"""One agent per state directory: the running agent's lock on ``agent.lock``.

``edge-agent run`` takes an exclusive ``flock`` on ``<state_dir>/agent.lock`` before it touches
anything else there, and holds it for its life. The kernel drops the lock when the process ends
in any way (SIGKILL, the OOM killer, a crash), so no stale lock is ever left behind. A second
agent on the same directory is refused with one line naming the first (:func:`claim_state_dir`)
instead of writing its pid over the first one's, counting the first one's run as a crash of a
model on probation, and removing the pid file at its stop (after which ``install-model`` could
no longer signal the first).

Only the lock's holder writes ``agent.pid`` (right after taking it, before the model is read,
so an install that finds no pid file swapped the links before this agent read them), and it
removes the pid file at its stop only while the file still holds its own pid.

``install-model``, ``rollback`` and ``models`` do not take this lock (installs and rollbacks
serialise on ``store.lock``): they run beside the agent and signal it.

Storage never stops the agent (docs/agent.md): an existing lock file that cannot be opened for
writing (read-only filesystem, another user's file) is locked through a read-only descriptor —
``flock`` needs no write access; a lock file that does not exist and cannot be created (no inode
left on a full disk, a read-only state directory) leaves the agent running unlocked, with a
WARNING, as before this lock existed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.store import pidfile

__all__ = ["LOCK_FILE", "StateDirLock", "claim_state_dir"]

log = logging.getLogger(__name__)

LOCK_FILE = "agent.lock"
PID_WAIT_S = 2.0  # how long a refused agent waits for the holder's pid file, to name it


class StateDirLock:
    """This agent's hold on its state directory; :meth:`release` at a clean stop."""

    def __init__(self, state_dir: Path, fd: int | None) -> None:
        self.state_dir = state_dir
        self._fd = fd

    @property
    def held(self) -> bool:
        """False when the agent runs unlocked (the lock file could not be created)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the pid file if it is still ours, then drop the lock (idempotent)."""
        pidfile.remove_pid_file(self.state_dir)
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def claim_state_dir(state_dir: Path) -> StateDirLock:
    """Lock ``state_dir`` for this process and write its pid file.

    Raises:
        ConfigError: another agent holds the lock.
    """
    state_dir = Path(state_dir)
    fd = _open_lock_file(state_dir / LOCK_FILE)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"cannot lock {state_dir / LOCK_FILE}: {exc.strerror or exc}") from exc
            raise ConfigError(_busy_message(state_dir)) from None
    write_pid_file(state_dir)
    return StateDirLock(state_dir, fd)


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of the lock file, created when missing; None when it cannot exist."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        first = exc
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # an existing file locks read-only too
    except OSError:
        log.warning("cannot create the lock file %s (%s): running without the one-agent-per-state-directory "
                    "lock", path, first.strerror or first)
        return None


def _busy_message(state_dir: Path) -> str:
    pid = _holder_pid(state_dir)
    who = f"another edge-agent (pid {pid})" if pid is not None else "another edge-agent"
    return (f"{who} is already running on state directory {state_dir}: stop it, or give this agent "
            f"its own --state-dir")


def _holder_pid(state_dir: Path) -> int | None:
    """The holder's pid; it writes its pid file just after taking the lock, so wait a moment."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        pid = pidfile.read_agent_pid(state_dir)
        if pid == os.getpid():
            pid = None
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.05)


def write_pid_file(state_dir: Path) -> None:
    """Let ``edge-agent install-model`` find (and SIGHUP) this agent; without it (a full disk)
    the agent runs on and an install asks for a restart instead."""
    try:
        pidfile.write_pid_file(state_dir)
    except OSError as exc:
        log.warning("cannot write the pid file in %s (%s): installs cannot signal this agent",
                    state_dir, exc.strerror or exc)

