"""One agent per state directory: the real ``edge-agent run`` holds a lock on it for its life.

A second agent on the same directory is refused with one line and exit code 2 and leaves the
first one's pid file alone, so ``install-model`` still signals the first; a SIGKILLed agent leaves
no stale lock; ``install-model``, ``rollback`` and ``models`` are never blocked by it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import install as store_install
from edge_agent.store import pidfile as store_pidfile
from edge_agent.store.probation import read_probation
from tests.fixtures_ssh import BundleSet
from tests.integration import test_agent_service
from tests.integration.agent_helpers import agent_env
from tests.integration.mjpeg import MjpegServer
from tests.integration.test_agent_service import Agent
from tests.unit.agent.test_sdnotify import HANG

pytestmark = pytest.mark.integration
ROUNDS = 8  # races of two agents started at once
# the installed store and the camera of test_agent_service, as fixtures here too
state = test_agent_service.state
stream = test_agent_service.stream


def _start(state: Path, stream: MjpegServer, *extra: str) -> Agent:
    return Agent("--state-dir", str(state), "--source", stream.url, "--events", "every", *extra, env=agent_env())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=120, env=agent_env(), check=False)


def _pid_in_file(state: Path) -> int | None:
    try:
        return int((state / store_pidfile.PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_exit(agent: Agent) -> tuple[int, str]:
    code = agent.proc.wait(timeout=HANG)
    return code, agent.close()


def _assert_refused(code: int, err: str, state: Path, winner: int) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edge-agent: error: another edge-agent"), err
    assert f"(pid {winner})" in lines[0] and str(state) in lines[0], err


def _install_signals(state: Path, agent: Agent, bundle: Path) -> None:
    """``install-model`` signals ``agent``, which then runs the new model."""
    proc = _cli("install-model", str(bundle), "--state-dir", str(state), "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["agent_signalled"] is True, answer
    _wait_version(agent, answer["active"]["version"])


def _wait_version(agent: Agent, version: str) -> None:
    def running(payload: dict[str, Any]) -> bool:
        return payload.get("model", {}).get("version") == version

    agent.wait(lambda: any(running(p) for _, p in agent.topic("/status")))


def test_second_agent_is_refused_and_install_still_signals_the_first(
        state: Path, stream: MjpegServer, test_bundles: BundleSet) -> None:
    first = _start(state, stream)
    try:
        first.wait(lambda: _pid_in_file(state) == first.proc.pid and len(first.topic("/evt/classification")) >= 3)
        # a second agent that would stop by itself after a second: before the lock it ran, and its
        # clean stop removed the pid file it had written over the first one's
        second = _start(state, stream, "--duration", "1")
        code, err = _wait_exit(second)
        _assert_refused(code, err, state, first.proc.pid)
        assert _pid_in_file(state) == first.proc.pid
        _install_signals(state, first, test_bundles.good_v2)
        assert first.proc.poll() is None
    finally:
        first.close()


def test_two_agents_started_at_once_one_wins(state: Path, stream: MjpegServer, test_bundles: BundleSet) -> None:
    for round_ in range(ROUNDS):
        _race(state, stream, test_bundles.good_v2 if round_ == ROUNDS - 1 else None)
    probation = read_probation(state)
    assert probation is None or probation.crashes == 0  # no refused start counted as a crash


def _race(state: Path, stream: MjpegServer, install: Path | None) -> None:
    """Start two agents at once: one runs, the other is refused; then stop the winner."""
    pair = [_start(state, stream), _start(state, stream)]
    try:
        deadline = time.monotonic() + HANG
        while all(a.proc.poll() is None for a in pair) and time.monotonic() < deadline:
            time.sleep(0.05)
        losers = [a for a in pair if a.proc.poll() is not None]
        assert len(losers) == 1, [a.close() for a in pair]
        (winner,) = (a for a in pair if a.proc.poll() is None)
        code, err = _wait_exit(losers[0])
        _assert_refused(code, err, state, winner.proc.pid)
        winner.wait(lambda: _pid_in_file(state) == winner.proc.pid and len(winner.topic("/evt/classification")) >= 3)
        if install is not None:
            _install_signals(state, winner, install)
        winner.proc.send_signal(signal.SIGTERM)
        assert winner.proc.wait(timeout=HANG) == 0, winner.close()
        assert _pid_in_file(state) is None  # the clean stop removed its own pid file
    finally:
        for agent in pair:
            agent.close()


def test_killed_agent_leaves_no_stale_lock_and_store_commands_run_beside_the_agent(
        state: Path, stream: MjpegServer, test_bundles: BundleSet) -> None:
    store_install.install_model(test_bundles.good_v2, state)  # v1 is now `previous`
    killed = _start(state, stream)
    try:
        killed.wait(lambda: _pid_in_file(state) == killed.proc.pid)
        killed.proc.send_signal(signal.SIGKILL)
        assert killed.proc.wait(timeout=HANG) == -signal.SIGKILL
    finally:
        killed.close()
    assert _pid_in_file(state) == killed.proc.pid  # stale pid file; the kernel dropped the lock
    agent = _start(state, stream)
    try:
        agent.wait(lambda: _pid_in_file(state) == agent.proc.pid and len(agent.topic("/evt/classification")) >= 3)
        listing = _cli("models", "--state-dir", str(state), "--json")
        assert listing.returncode == 0, listing.stderr
        status = json.loads(listing.stdout)
        assert status["agent_pid"] == agent.proc.pid, status
        back = _cli("rollback", "--state-dir", str(state), "--json")
        assert back.returncode == 0, back.stderr
        answer = json.loads(back.stdout)
        assert answer["agent_signalled"] is True, answer
        _wait_version(agent, answer["active"]["version"])
        _install_signals(state, agent, test_bundles.good_v2)
        assert agent.proc.poll() is None
    finally:
        agent.close()
