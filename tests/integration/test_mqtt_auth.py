"""Username/password: a refused CONNACK is never treated as connected; the password comes from a file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from deploy.broker import Mosquitto, free_port, plain_config
from edge_agent.messaging.link import MqttLink, MqttSettings

pytestmark = pytest.mark.integration

HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run


def _wait(predicate, timeout: float = HANG) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def auth_broker(tmp_path: Path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "dev1", "right-password"], check=True,
                   capture_output=True)
    port = free_port()
    conf = plain_config(tmp_path, port).replace("allow_anonymous true", "allow_anonymous false")
    broker = Mosquitto(tmp_path, conf + f"password_file {passwd}\n", port)
    broker.start()
    yield broker
    broker.stop()


def _link(url: str, password_file: Path, protocol: str = "5") -> MqttLink:
    settings = MqttSettings(broker=url, username="dev1", password_file=password_file, protocol=protocol,  # type: ignore[arg-type]
                            keepalive=5, reconnect_min_s=1, reconnect_max_s=1)
    return MqttLink(settings, "dev1")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_password_is_refused_not_connected(auth_broker, tmp_path: Path, protocol: str):
    (tmp_path / "wrong").write_text("nope\n")
    link = _link(auth_broker.url, tmp_path / "wrong", protocol)
    link.start()
    try:
        # The broker's answer (a refusing CONNACK) is the event; then nothing counts as connected.
        assert _wait(lambda: link.stats.refused >= 1), "no CONNACK refusal"
        assert link.stats.connects == 0 and not link.connected
        assert link.stats.last_refusal
    finally:
        link.stop()


def test_password_from_credentials_directory(auth_broker, tmp_path: Path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("right-password\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    link = _link(auth_broker.url, Path("mqtt-password"))
    link.start()
    try:
        assert link.wait_connected(HANG)
        assert link.stats.refused == 0
    finally:
        link.stop()


def test_v5_puback_failure_is_not_a_delivery(tmp_path: Path, monkeypatch, collector_factory):
    """PUBACK 0x87 (not authorized) keeps the row and retries it; it is never counted as delivered."""
    from edge_agent.messaging.envelope import EnvelopeFactory
    from edge_agent.messaging.publishers.mqtt import MqttPublisher

    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.2)
    acl = tmp_path / "acl"
    acl.write_text("user dev9\ntopic write edge/v1/dev9/status\ntopic write edge/v1/dev9/evt/ok\n"
                   "topic read edge/v1/dev9/cmd/#\ntopic read edge/v1/dev9/config/desired\n"
                   "user watcher\ntopic read edge/v1/#\n")
    port = free_port()
    broker = Mosquitto(tmp_path, plain_config(tmp_path, port) + f"acl_file {acl}\n", port)
    broker.start()
    try:
        col = collector_factory(MqttSettings(broker=broker.url, username="watcher"), "edge/v1/dev9/#")
        pub = MqttPublisher({"broker": broker.url, "username": "dev9", "keepalive": 5},
                            envelope=EnvelopeFactory("dev9", tmp_path / "state"), state_dir=tmp_path / "state")
        pub.outbox.max_attempts = 3
        pub.start()
        pub.publish("evt/denied", {"n": 1})
        pub.publish("evt/ok", {"n": 2})
        assert col.wait(lambda: bool(col.on("evt/ok")), HANG)
        assert _wait(lambda: pub.outbox.counters.undeliverable >= 1 and pub.outbox.counters.delivered >= 1)
        c = pub.outbox.counters
        assert c.delivered == 1 and c.broker_failures == 3 and c.undeliverable == 1
        assert not col.on("evt/denied")
        pub.stop(2)
    finally:
        broker.stop()
