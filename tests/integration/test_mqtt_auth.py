"""Username/password: a refused CONNACK is never treated as connected; the password comes from a file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_agent.mqtt import MqttLink, MqttSettings
from tests.fixtures_mqtt import Mosquitto, free_port, plain_config

pytestmark = pytest.mark.integration


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
        assert not link.wait_connected(2.5)
        assert link.stats.refused >= 1 and link.stats.connects == 0
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
        assert link.wait_connected(5)
        assert link.stats.refused == 0
    finally:
        link.stop()
