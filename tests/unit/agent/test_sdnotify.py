"""sd_notify over a fake NOTIFY_SOCKET, and the progress-gated watchdog.

No test here counts pings inside a sleep: windows are bounded by events in the datagram
stream itself (marks the test sends into the socket, or messages of the process under test),
and every wait has a deadline that only bounds a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.agent.sdnotify import Notifier, ProgressGate, Watchdog, watchdog_interval_s

HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run
MARK = "X-TEST-MARK="


def wait_for_true(predicate: Callable[[], bool], timeout: float = HANG, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.01)


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects datagrams in arrival order.

    :meth:`mark` puts a datagram of the test's own into the socket. The kernel queues a Unix
    datagram socket's messages in the order they were sent, so a mark splits the stream
    exactly: whatever the process under test sent before the mark comes before it.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._bind = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self._bind)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._marks = 0
        self._cond = threading.Condition()
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
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def mark(self) -> int:
        """Send a mark into the socket and wait for it; returns its number for ``lines(after=…)``."""
        self._marks += 1
        number = self._marks
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(f"{MARK}{number}".encode(), self._bind)
        with self._cond:
            assert self._cond.wait_for(lambda: f"{MARK}{number}" in self.messages, HANG), "mark never arrived"
        return number

    def lines(self, after: int | None = None, until: int | None = None) -> list[str]:
        """Lines of the messages received, in order, marks left out; only those after mark ``after``
        and before mark ``until`` when given."""
        with self._cond:
            messages = list(self.messages)
        if after is not None:
            messages = messages[messages.index(f"{MARK}{after}") + 1:]
        if until is not None:
            messages = messages[:messages.index(f"{MARK}{until}")]
        return [line for m in messages if not m.startswith(MARK) for line in m.splitlines()]

    def wait_for(self, prefix: str, timeout: float = HANG, after: int | None = None) -> str:
        """The first line starting with ``prefix`` (after mark ``after``), waiting for it."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines(after) if line.startswith(prefix)]
            return bool(found)

        with self._cond:
            ok = self._cond.wait_for(seen, timeout)
        assert ok, f"no {prefix!r} within {timeout} s; got {self.lines()[-40:]}"
        return found[0]

    def wait_count(self, line: str, count: int, after: int, timeout: float = HANG) -> None:
        """Wait until ``line`` was received ``count`` times after mark ``after``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.lines(after).count(line) >= count, timeout)
        assert ok, f"fewer than {count} {line!r} within {timeout} s; got {self.lines(after)[-40:]}"

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
    assert fake_systemd.lines(until=fake_systemd.mark()) == [
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
    stalled, frozen, stop = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        while not stop.wait(0.005):
            if stalled.is_set():
                frozen.set()  # from here on the counter no longer moves
            else:
                count[0] += 1

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    notifier = Notifier(fake_systemd.address)
    dog = Watchdog(notifier, ProgressGate(lambda: count[0]), interval_s=0.05)
    assert dog.start()
    try:
        fake_systemd.wait_count("WATCHDOG=1", 4, after=fake_systemd.mark())
        stalled.set()
        assert frozen.wait(HANG)
        # The first tick that starts after the counter froze may still see progress (from before);
        # a miss counted after a miss that we saw after the freeze starts after it: from then on
        # nothing may ping.
        base = dog.missed
        wait_for_true(lambda: dog.missed >= base + 2, what="two misses")
        quiet_from, pings = fake_systemd.mark(), dog.pings
        wait_for_true(lambda: dog.missed >= base + 6, what="four more misses")
        quiet_to = fake_systemd.mark()
        assert "WATCHDOG=1" not in fake_systemd.lines(after=quiet_from, until=quiet_to)
        assert dog.pings == pings
        stalled.clear()
        fake_systemd.wait_for("WATCHDOG=1", after=fake_systemd.mark())
    finally:
        stop.set()
        dog.stop()


# A small process shaped like the agent: real interpreter, READY after the model
# is loaded, STATUS with fps, watchdog gated on inference progress, STOPPING on SIGTERM.
_AGENT_LIKE = r"""
import signal, sys, threading, time
import numpy as np
from edge_agent.model.bundle import read_bundle
from edge_agent.runtimes import create_runtime
from edge_agent.agent.sdnotify import Notifier, ProgressGate, Watchdog

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
base = reported = None
while not stop.is_set():
    if stalled.is_set():
        # Say how many ticks missed since the stall was seen (the test brackets its checks with these).
        base = dog.missed if base is None else base
        if dog.missed != reported:
            reported = dog.missed
            notifier.status(f"stalled, missed {dog.missed - base}")
        time.sleep(0.01)
        continue
    base = reported = None
    runtime.infer(x)
    count[0] += 1
    if count[0] % 200 == 0:
        notifier.status(f"fps {count[0] / (time.monotonic() - t0):.1f}, broker disconnected")
    time.sleep(0.002)
notifier.stopping("flushing outbox")
dog.stop()
"""


def _first_stalled_line(fake: FakeSystemd, at_least: int) -> int:
    """Index (in ``fake.lines()``) of the first ``STATUS=stalled, missed N`` with N >= ``at_least``."""
    found: list[int] = []

    def seen() -> bool:
        for n, line in enumerate(fake.lines()):
            if line.startswith("STATUS=stalled, missed ") and int(line.rsplit(" ", 1)[1]) >= at_least:
                found.append(n)
                return True
        return False

    wait_for_true(seen, what=f"'stalled, missed {at_least}'")
    return found[0]


def test_agent_like_process(fake_systemd: FakeSystemd, tmp_path: Path, test_bundles) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "agent_like.py"
    script.write_text(_AGENT_LIKE)
    env = {**os.environ, "NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, str(script), str(test_bundles.good)], env=env)
    try:
        fake_systemd.wait_for("READY=1")
        fake_systemd.wait_for("STATUS=fps")
        fake_systemd.wait_count("WATCHDOG=1", 3, after=fake_systemd.mark())
        proc.send_signal(signal.SIGUSR1)  # inference stalls
        # "missed 2" is sent after a tick that started after the stall was seen (see
        # test_watchdog_pings_only_on_progress): from there to "missed 6" no ping may come.
        quiet_from = _first_stalled_line(fake_systemd, 2)
        quiet_to = _first_stalled_line(fake_systemd, 6)
        assert "WATCHDOG=1" not in fake_systemd.lines()[quiet_from:quiet_to]
        proc.send_signal(signal.SIGUSR2)
        fake_systemd.wait_for("WATCHDOG=1", after=fake_systemd.mark())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0
        fake_systemd.wait_for("STOPPING=1")
    finally:
        proc.kill()
        proc.wait()
