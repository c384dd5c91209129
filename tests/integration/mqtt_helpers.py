"""Run the real ``edge-agent run --broker …`` in a child process; ``edge-fleet`` helpers.

:class:`RealAgent` starts the agent with a real model on a looping folder of real
digit images paced with ``--fps`` and ``--events every``, so it publishes one result
per frame (about ``fps`` results per second) through its durable outbox. With a
broker the agent prints nothing on stdout; its log goes to a file next to the state
directory, its final one-line summary (``… N published …``) to that log.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.agent_helpers import agent_env

REPO = Path(__file__).resolve().parents[2]


class RealAgent:
    def __init__(self, broker: str, device_id: str, state_dir: Path, bundle: Path, source: Path, *extra: str,
                 fps: float = 20.0, health_interval: float = 1.0, keepalive: int = 5, will_delay: int = 1) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "edge_agent", "run", "--bundle", str(bundle), "--source", str(source),
               "--loop", "--fps", str(fps), "--events", "every", "--broker", broker, "--device-id", device_id,
               "--state-dir", str(state_dir), "--health-interval", str(health_interval),
               "--keepalive", str(keepalive), "--will-delay", str(will_delay), *extra]
        self.log_path = state_dir.parent / f"agent-{device_id}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO, env=agent_env())

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM: a clean stop (flush the outbox, publish ``offline``); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def published(self) -> int:
        """Results published, from the summary line printed at a clean stop."""
        found = re.findall(r"(\d+) published in", self.log())
        assert found, f"no summary line in the agent log:\n{self.log()}"
        return int(found[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def outbox_rows(state_dir: Path) -> list[dict[str, Any]]:
    """The rows still queued in an agent's outbox, oldest first: id, topic, seq and the payload.

    Raises FileNotFoundError when there is no database (an empty list would let "the outbox
    was flushed" pass for an outbox that moved or was never written) and sqlite3.Error when
    it holds no outbox table yet. Opened read-only, so looking never creates a database.
    """
    path = state_dir / "outbox.db"
    if not path.is_file():
        raise FileNotFoundError(f"no outbox database at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT id, topic, payload FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()
    out = []
    for rid, topic, payload in rows:
        body = json.loads(bytes(payload))
        out.append({"id": rid, "topic": topic, "seq": body["seq"], "payload": body})
    return out


def connected_with(broker_log: str, client_id: str, protocol: str, keepalive: int) -> bool:
    """Mosquitto logs each CONNECT as ``as <id> (p<protocol>, c<clean>, k<keepalive>…)``. The keepalive
    bounds how late the broker notices a dead client and sends its will: checking what the broker
    was told replaces timing the will with a stopwatch (which a loaded machine fails)."""
    pattern = rf"as {re.escape(client_id)} \(p{protocol}, c\d, k{keepalive}\b"
    return re.search(pattern, broker_log) is not None


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout``; a database not there yet counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(sqlite3.Error, FileNotFoundError):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def fleet_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.fleet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=agent_env(), check=False)


def fleet_cli_bg(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "deploy.fleet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=agent_env())
