"""Run ``tests.mqtt_driver`` (the publisher in its own process) and read what it published."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.fixtures_mqtt import agent_env

REPO = Path(__file__).resolve().parents[2]


class Driver:
    def __init__(self, broker: str, device_id: str, state_dir: Path, *extra: str, rate: float = 20.0,
                 count: int = 0) -> None:
        self.seqs: list[int] = []
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        cmd = [sys.executable, "-m", "tests.mqtt_driver", "--broker", broker, "--device-id", device_id,
               "--state-dir", str(state_dir), "--rate", str(rate), "--count", str(count), *extra]
        self.stderr_path = state_dir.parent / f"driver-{device_id}-{time.monotonic_ns()}.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, cwd=REPO, env=agent_env(),
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if "seq" in item:
                    self.seqs.append(item["seq"])
                else:
                    self.events.append(item)
                self._cond.notify_all()

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.events:
                    if key in item:
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"driver never reported {key!r}; stderr:\n{self.log()}")
                self._cond.wait(min(remaining, 0.2))

    def wait_seqs(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.seqs) < n:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"driver published only {len(self.seqs)} of {n}"
                self._cond.wait(min(remaining, 0.2))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()


def fleet_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.fleet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=agent_env(), check=False)


def fleet_cli_bg(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "deploy.fleet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=agent_env())
