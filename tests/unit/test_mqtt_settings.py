"""MQTT settings: URLs, credentials, validation (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.mqtt import MqttError, MqttLink, MqttSettings, parse_broker_url, read_password


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://h").port == 1883
    addr = parse_broker_url("mqtts://broker.example.org:8884")
    assert (addr.tls, addr.host, addr.port) == (True, "broker.example.org", 8884)
    assert parse_broker_url("ssl://h").tls
    for bad in ("http://h", "mqtt://", "mqtt://u:p@h", "mqtt://h/x", "mqtt://h:99999"):
        with pytest.raises(MqttError):
            parse_broker_url(bad)


def test_password_from_credentials_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_password(Path("mqtt-password")) == "s3cret"
    assert read_password(tmp_path / "mqtt-password") == "s3cret"
    with pytest.raises(MqttError, match="cannot read"):
        read_password(Path("missing"))


def test_from_any_accepts_objects_dicts_and_overrides() -> None:
    class Section:
        broker = "mqtt://h:1"
        keepalive = 7
        protocol = 311
        unknown_field = "ignored"

    s = MqttSettings.from_any(Section(), will_delay=3)
    assert (s.broker, s.keepalive, s.protocol, s.will_delay) == ("mqtt://h:1", 7, "3.1.1", 3)
    assert MqttSettings.from_any({"broker": "mqtt://h", "protocol": "5"}).protocol == "5"
    with pytest.raises(MqttError):
        MqttSettings.from_any({"broker": "mqtt://h", "protocol": "4.0"})
    with pytest.raises(MqttError):
        MqttSettings.from_any({"broker": "mqtt://h", "cert_file": "c.pem"})  # no key, no TLS


def test_link_never_connected_before_start() -> None:
    link = MqttLink(MqttSettings(broker="mqtt://127.0.0.1:1"), "dev")
    assert not link.connected
    link311 = MqttLink(MqttSettings(broker="mqtt://127.0.0.1:1", protocol="3.1.1"), "dev")
    assert not link311.v5
