"""The systemd watchdog of an agent publishing to a real Mosquitto.

``WATCHDOG=1`` must flow while inference makes progress and the MQTT threads
run, also through a broker outage (paho keeps reconnecting), and stop when the
MQTT network thread is gone although inference still makes progress.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.broker import Mosquitto
from tests.integration.agent_helpers import ROOT, agent_env
from tests.integration.test_agent import colour_folder, models  # noqa: F401 - fixtures
from tests.unit.test_sdnotify import FakeSystemd

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 400_000  # the agent pings every 0.2 s while healthy


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    server = FakeSystemd(str(tmp_path / "notify.sock"))
    yield server
    server.close()


def _pings(fake: FakeSystemd, seconds: float) -> int:
    mark = time.monotonic()
    time.sleep(seconds)
    return fake.lines(since=mark).count("WATCHDOG=1")


def test_real_agent_feeds_the_watchdog_with_a_broker_and_through_an_outage(
    mqtt_broker_fn: Mosquitto, fake_systemd: FakeSystemd, models: Path, colour_folder: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {**agent_env(), "NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--bundle", str(models / "colours.tflite"),
         "--source", str(colour_folder), "--loop", "--fps", "30", "--broker", mqtt_broker_fn.url,
         "--keepalive", "5", "--device-id", "wd-1", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        fake_systemd.wait_for("READY=1", timeout=30)
        assert _pings(fake_systemd, 1.0) >= 3
        mqtt_broker_fn.stop()  # a broker outage is no reason for systemd to restart the agent
        time.sleep(0.5)
        assert _pings(fake_systemd, 1.0) >= 3
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        fake_systemd.wait_for("STOPPING=1", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err.decode()


def test_dead_mqtt_network_thread_stops_the_watchdog(
    mqtt_broker_fn: Mosquitto, fake_systemd: FakeSystemd, models: Path, colour_folder: Path,  # noqa: F811
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process, so the test can end paho's network thread; everything else is real."""
    from edge_agent.config import load_config
    from edge_agent.pipeline import Agent
    from edge_agent.publishers.mqtt import MqttPublisher

    monkeypatch.setenv("NOTIFY_SOCKET", fake_systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cli = {"model": {"bundle": models / "colours.tflite"}, "state_dir": tmp_path / "state",
           "device_id": "wd-2", "mqtt": {"broker": mqtt_broker_fn.url, "keepalive": 5},
           "source": {"uri": str(colour_folder), "loop": True, "fps": 30}, "health": {"interval_s": 60}}
    agent = Agent(load_config(None, cli, environ={}))
    agent.start()
    publisher = agent.publisher
    try:
        assert isinstance(publisher, MqttPublisher)
        fake_systemd.wait_for("READY=1", timeout=10)
        deadline = time.monotonic() + 10
        while not publisher.connected:
            assert time.monotonic() < deadline, "agent never connected to the broker"
            time.sleep(0.05)
        assert agent.is_healthy() and publisher.thread_alive()
        assert _pings(fake_systemd, 1.0) >= 3

        # paho's network thread ends (as it does when an exception escapes into it):
        # nothing would ever be published again, so systemd must be allowed to restart us.
        publisher.link._client.loop_stop()
        assert not publisher.link.network_thread_alive
        assert not publisher.thread_alive() and not agent.is_healthy()
        time.sleep(0.3)  # a tick already under way may still ping
        inferred = agent.progress_counter
        assert _pings(fake_systemd, 1.2) == 0
        assert agent.progress_counter > inferred  # inference goes on: it is the MQTT check that gates
    finally:
        agent.request_stop("test over")
        agent.stop(timeout=2)
    assert isinstance(publisher, MqttPublisher) and not publisher.thread_alive()  # a stopped publisher is not alive
