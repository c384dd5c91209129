"""sd_notify over a fake NOTIFY_SOCKET, and the progress-gated watchdog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import Notifier, ProgressGate, Watchdog, watchdog_interval_s


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects datagrams with arrival times."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for t, m in list(self.messages) if t >= since for line in m.splitlines()]

    def wait_for(self, prefix: str, timeout: float = 10.0, since: float = 0.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines(since):
                if line.startswith(prefix):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify.sock")
    address = path if request.param == "path" else f"@edge-test-{uuid.uuid4().hex}"
    server = FakeSystemd(address)
    yield server
    server.close()


def test_messages_reach_the_socket(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier(fake_systemd.address)
    assert notifier.enabled
    assert notifier.ready("model digits 1.0 loaded")
    assert notifier.status("fps 9.8, broker\nconnected")
    assert notifier.watchdog()
    assert notifier.stopping()
    fake_systemd.wait_for("STOPPING=1")
    assert fake_systemd.lines() == [
        "READY=1", "STATUS=model digits 1.0 loaded", "STATUS=fps 9.8, broker connected",
        "WATCHDOG=1", "STOPPING=1",
    ]
    notifier.close()


def test_disabled_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready()
    assert not Watchdog(notifier, lambda: True, 0.01).start()
    assert not Notifier("relative/path").enabled


def test_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "nobody-listens")).watchdog()


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval_s() is None


def test_progress_gate() -> None:
    count = [0]
    alive = [True]
    gate = ProgressGate(lambda: count[0], lambda: alive[0])
    assert gate()  # first tick: grace
    assert not gate()  # no progress
    count[0] += 1
    assert gate()
    count[0] += 1
    alive[0] = False
    assert not gate()  # MQTT thread dead


def test_watchdog_pings_only_on_progress(fake_systemd: FakeSystemd) -> None:
    count = [0]
    stalled = threading.Event()
    stop = threading.Event()

    def work() -> None:
        while not stop.wait(0.005):
            if not stalled.is_set():
                count[0] += 1

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    notifier = Notifier(fake_systemd.address)
    dog = Watchdog(notifier, ProgressGate(lambda: count[0]), interval_s=0.05)
    assert dog.start()
    time.sleep(0.4)
    assert fake_systemd.lines().count("WATCHDOG=1") >= 4
    stalled.set()
    time.sleep(0.12)
    mark = time.monotonic()
    time.sleep(0.4)
    assert "WATCHDOG=1" not in fake_systemd.lines(since=mark)
    assert dog.missed >= 4
    stalled.clear()
    fake_systemd.wait_for("WATCHDOG=1", timeout=2, since=time.monotonic())
    stop.set()
    dog.stop()


# A small process shaped like the agent: real interpreter, READY after the model
# is loaded, STATUS with fps, watchdog gated on inference progress, STOPPING on SIGTERM.
_AGENT_LIKE = r"""
import signal, sys, threading, time
import numpy as np
from edge_agent.bundle import read_bundle
from edge_agent.runtimes import create_runtime
from edge_agent.sdnotify import Notifier, ProgressGate, Watchdog

bundle = read_bundle(sys.argv[1])
runtime = create_runtime("litert", bundle.model_bytes)
x = np.zeros(runtime.inputs[0].shape, dtype=runtime.inputs[0].dtype)
notifier = Notifier()
stop, stalled = threading.Event(), threading.Event()
count = [0]
signal.signal(signal.SIGUSR1, lambda *a: stalled.set())
signal.signal(signal.SIGUSR2, lambda *a: stalled.clear())
signal.signal(signal.SIGTERM, lambda *a: stop.set())
dog = Watchdog(notifier, ProgressGate(lambda: count[0]))
notifier.ready(f"model {bundle.manifest.name} loaded")
dog.start()
t0 = time.monotonic()
while not stop.is_set():
    if stalled.is_set():
        time.sleep(0.01)
        continue
    runtime.infer(x)
    count[0] += 1
    if count[0] % 200 == 0:
        notifier.status(f"fps {count[0] / (time.monotonic() - t0):.1f}, broker disconnected")
    time.sleep(0.002)
notifier.stopping("flushing outbox")
dog.stop()
"""


def test_agent_like_process(fake_systemd: FakeSystemd, tmp_path: Path, test_bundles) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "agent_like.py"
    script.write_text(_AGENT_LIKE)
    env = {**os.environ, "NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, str(script), str(test_bundles.good)], env=env)
    try:
        fake_systemd.wait_for("READY=1", timeout=20)
        fake_systemd.wait_for("STATUS=fps", timeout=10)
        mark = time.monotonic()
        time.sleep(0.6)
        assert fake_systemd.lines(since=mark).count("WATCHDOG=1") >= 3
        proc.send_signal(signal.SIGUSR1)  # inference stalls
        time.sleep(0.25)
        mark = time.monotonic()
        time.sleep(0.6)
        assert "WATCHDOG=1" not in fake_systemd.lines(since=mark)
        proc.send_signal(signal.SIGUSR2)
        fake_systemd.wait_for("WATCHDOG=1", timeout=2, since=time.monotonic())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        fake_systemd.wait_for("STOPPING=1", timeout=2)
    finally:
        proc.kill()
        proc.wait()
