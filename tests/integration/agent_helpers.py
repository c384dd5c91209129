"""Running the real ``edge-agent`` command in a child process and reading its JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    env.pop("NOTIFY_SOCKET", None)
    return env


def parse_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_agent(*args: str | Path, timeout: float = 60, stdin: bytes | None = None,
              command: str = "run") -> tuple[int, list[dict[str, Any]], str]:
    """Run ``python -m edge_agent COMMAND ARGS``; returns (exit code, JSON lines, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", command, *map(str, args)],
        input=stdin, capture_output=True, timeout=timeout, env=agent_env(), cwd=str(ROOT), check=False,
    )
    out = proc.stdout.decode()
    messages = parse_lines(out) if command == "run" else []
    return proc.returncode, messages, proc.stderr.decode()


def events(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in messages if m["topic"].endswith("/" + kind)]


class LiveAgent:
    """A running agent whose stdout lines are collected by a reader thread."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=agent_env(), cwd=str(ROOT),
        )
        self.messages: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.messages.append(json.loads(line))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                 start: int = 0) -> int:
        """Index of the first message from ``start`` matching ``predicate``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(start, len(self.messages)):
                if predicate(self.messages[i]):
                    return i
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no matching message within {timeout} s; last: {self.messages[-3:]}")

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read().decode()
        return code
