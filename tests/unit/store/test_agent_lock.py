"""The agent's lock on its state directory (real flocks, real tmpfs mounts for a full or
read-only disk): one holder at a time, the pid file only while held, never fatal for storage."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.store import agent_lock
from edge_agent.store.agent_lock import LOCK_FILE, claim_state_dir
from edge_agent.store.pidfile import PID_FILE
from tests.fixtures_disk import tmpfs


@pytest.fixture(autouse=True)
def _short_pid_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # here the holder is this very process, whose pid a refusal never names: do not wait for another
    monkeypatch.setattr(agent_lock, "PID_WAIT_S", 0.0)


def _pid(state: Path) -> int:
    return int((state / PID_FILE).read_text().split()[0])


def test_one_holder_at_a_time_and_the_pid_file_only_while_held(tmp_path: Path) -> None:
    lock = claim_state_dir(tmp_path)
    assert lock.held and _pid(tmp_path) == os.getpid()
    with pytest.raises(ConfigError, match=r"^another edge-agent is already running on state directory .*"
                                          r"give this agent its own --state-dir$"):
        claim_state_dir(tmp_path)  # another open file description: flock refuses it as it would another process
    assert _pid(tmp_path) == os.getpid()
    lock.release()
    lock.release()  # idempotent
    assert not (tmp_path / PID_FILE).exists() and (tmp_path / LOCK_FILE).exists()
    again = claim_state_dir(tmp_path)  # the lock file left behind is no stale lock
    assert again.held
    again.release()


def test_release_leaves_a_pid_file_that_is_not_ours(tmp_path: Path) -> None:
    lock = claim_state_dir(tmp_path)
    (tmp_path / PID_FILE).write_text("1\n")
    lock.release()
    assert (tmp_path / PID_FILE).read_text() == "1\n"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for 8 inodes (the test fills them), remounted read-only by some tests."""
    path = tmp_path / "disk"
    path.mkdir()
    with tmpfs(path, "1m", "nr_inodes=8"):
        yield path


def _fill_inodes(directory: Path) -> int:
    """Create empty files until the filesystem has no inode left; returns how many."""
    for n in range(100):
        try:
            (directory / f"ballast-{n}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return n
    raise AssertionError("the filesystem never filled")


def _read_only(directory: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True, capture_output=True, timeout=30)


def test_full_disk_existing_lock_file_still_locks(disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    claim_state_dir(disk).release()  # the lock file a first run left
    assert _fill_inodes(disk) > 0
    with caplog.at_level(logging.WARNING):
        lock = claim_state_dir(disk)
    assert lock.held
    assert "cannot write the pid file" in caplog.text  # no inode for it: installs ask for a restart
    with pytest.raises(ConfigError, match="already running"):
        claim_state_dir(disk)
    lock.release()


def test_full_disk_without_a_lock_file_runs_unlocked_with_a_warning(disk: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    _fill_inodes(disk)
    with caplog.at_level(logging.WARNING):
        lock = claim_state_dir(disk)
    assert not lock.held and not (disk / LOCK_FILE).exists()
    assert f"cannot create the lock file {disk / LOCK_FILE}" in caplog.text
    assert "running without the one-agent-per-state-directory lock" in caplog.text
    lock.release()


def test_read_only_state_dir_locks_an_existing_lock_file(disk: Path) -> None:
    claim_state_dir(disk).release()
    _read_only(disk)
    lock = claim_state_dir(disk)  # O_RDWR fails with EROFS; a read-only descriptor takes the flock
    assert lock.held
    with pytest.raises(ConfigError, match="already running"):
        claim_state_dir(disk)
    lock.release()
    claim_state_dir(disk).release()


def test_read_only_state_dir_without_a_lock_file_runs_unlocked(disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    _read_only(disk)
    with caplog.at_level(logging.WARNING):
        lock = claim_state_dir(disk)
    assert not lock.held and "Read-only file system" in caplog.text
    lock.release()
