"""The systemd watchdog of an agent publishing to a real Mosquitto.

``WATCHDOG=1`` must flow while inference makes progress and the MQTT threads
run, also through a broker outage (paho keeps reconnecting), and stop when the
MQTT network thread is gone although inference still makes progress.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.broker import Mosquitto
from tests.integration.agent_helpers import ROOT, agent_env
from tests.integration.test_agent import colour_folder, models  # noqa: F401 - fixtures
from tests.unit.agent.test_sdnotify import HANG, FakeSystemd, wait_for_true

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 400_000  # the agent pings every 0.2 s while healthy


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    server = FakeSystemd(str(tmp_path / "notify.sock"))
    yield server
    server.close()


def test_real_agent_feeds_the_watchdog_with_a_broker_and_through_an_outage(
    mqtt_broker_fn: Mosquitto, fake_systemd: FakeSystemd, models: Path, colour_folder: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {**agent_env(), "NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--bundle", str(models / "colours.tflite"),
         "--source", str(colour_folder), "--loop", "--fps", "30", "--broker", mqtt_broker_fn.url,
         "--keepalive", "5", "--device-id", "wd-1", "--state-dir", str(tmp_path / "state"),
         "--health-interval", "0.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        fake_systemd.wait_for("READY=1")
        fake_systemd.wait_for("STATUS=", after=fake_systemd.mark())  # health STATUS lines flow
        fake_systemd.wait_count("WATCHDOG=1", 3, after=fake_systemd.mark())
        mqtt_broker_fn.stop()  # a broker outage is no reason for systemd to restart the agent
        # Once the agent itself reports the outage, the pings still come.
        stopped = fake_systemd.mark()
        wait_for_true(lambda: any(line.startswith("STATUS=") and line.endswith("publisher disconnected")
                                  for line in fake_systemd.lines(after=stopped)), what="the outage in STATUS")
        fake_systemd.wait_count("WATCHDOG=1", 3, after=fake_systemd.mark())
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0
        fake_systemd.wait_for("STOPPING=1")
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
    from edge_agent.agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.messaging.publishers.mqtt import MqttPublisher

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
        fake_systemd.wait_for("READY=1")
        wait_for_true(lambda: publisher.connected, what="connection to the broker")
        assert agent.is_healthy() and publisher.thread_alive()
        fake_systemd.wait_count("WATCHDOG=1", 3, after=fake_systemd.mark())

        # paho's network thread ends (as it does when an exception escapes into it):
        # nothing would ever be published again, so systemd must be allowed to restart us.
        publisher.link._client.loop_stop()
        assert not publisher.link.network_thread_alive
        assert not publisher.thread_alive() and not agent.is_healthy()
        # A tick under way may still ping; the one after the next miss we see started after the
        # thread died. From then on nothing may ping (test_sdnotify explains the bracketing).
        dog = agent._watchdog
        base = dog.missed
        wait_for_true(lambda: dog.missed >= base + 2, what="two missed ticks")
        quiet_from, inferred = fake_systemd.mark(), agent.progress_counter
        wait_for_true(lambda: dog.missed >= base + 6, what="four more missed ticks")
        assert "WATCHDOG=1" not in fake_systemd.lines(after=quiet_from, until=fake_systemd.mark())
        # Inference goes on: it is the MQTT check that gates.
        wait_for_true(lambda: agent.progress_counter > inferred, what="inference progress")
    finally:
        agent.request_stop("test over")
        agent.stop(timeout=2)
    assert isinstance(publisher, MqttPublisher) and not publisher.thread_alive()  # a stopped publisher is not alive
