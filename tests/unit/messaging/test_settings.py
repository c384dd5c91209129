"""MQTT settings: URLs, credentials, validation (no network)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from edge_agent.messaging.link import MqttError, MqttLink, MqttSettings, parse_broker_url, read_password


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


def test_reconnect_delays_are_jittered_floats_within_a_growing_bound() -> None:
    import random

    from edge_agent.util.backoff import jittered_delay

    rng = random.Random(1234)
    low, cap = 1.0, 60.0
    sequences = []
    for _ in range(300):
        delay, seq = low, []
        for _attempt in range(8):
            nxt = jittered_delay(delay, low, cap, rng)
            # Bounded: never below the minimum, never above 3 × previous or the cap.
            assert low <= nxt <= min(cap, 3 * delay) + 1e-9
            seq.append(nxt)
            delay = nxt
        sequences.append(seq)
    firsts = [s[0] for s in sequences]
    # Not rounded to whole seconds: spread continuously over [1, 3).
    assert sum(1 for d in firsts if d != int(d)) == len(firsts)
    assert len({round(d, 3) for d in firsts}) > 200
    assert min(firsts) < 1.3 and max(firsts) > 2.7
    # The bound grows: later attempts reach far beyond the first window, up to the cap.
    lasts = [s[-1] for s in sequences]
    assert max(lasts) > 20 and all(d <= cap for s in sequences for d in s)
    assert sum(lasts) / len(lasts) > 2 * sum(firsts) / len(firsts)


def test_link_hands_paho_float_delays() -> None:
    link = MqttLink(MqttSettings(broker="mqtt://127.0.0.1:1", reconnect_min_s=0.5, reconnect_max_s=7.5), "dev")
    seen = set()
    for _ in range(20):
        link._schedule_backoff()
        low, high = link._client._reconnect_min_delay, link._client._reconnect_max_delay
        assert low == high and isinstance(low, float) and 0.5 <= low <= 7.5
        seen.add(low)
    assert any(d != int(d) for d in seen) and len(seen) > 10


def test_packet_limit_counts_topic_and_header_and_honours_broker_maximum() -> None:
    from edge_agent.messaging.link import PACKET_OVERHEAD

    link = MqttLink(MqttSettings(broker="mqtt://127.0.0.1:1", max_payload_bytes=4096), "dev")
    topic = "edge/v1/dev/evt/x"
    room = 4096 - len(topic) - PACKET_OVERHEAD
    assert link.packet_limit == 4096
    assert link.fits(topic, room) and not link.fits(topic, room + 1)
    # A payload just under the cap does not fit once topic and header are counted.
    assert not link.fits(topic, 4095)
    assert link.publish(topic, b"x" * 4095) is None
    # MQTT 5: a smaller Maximum Packet Size from the CONNACK wins; a larger one does not.
    link._broker_max_packet = 1024
    assert link.packet_limit == 1024 and not link.fits(topic, 1000)
    link._broker_max_packet = 10**6
    assert link.packet_limit == 4096


def test_default_cap_is_clearly_below_the_shipped_broker_limit() -> None:
    import re

    from edge_agent.config import MqttSection

    conf = (resources.files("deploy") / "mosquitto/mosquitto.conf").read_text()  # also on an install
    broker_max = int(re.search(r"^max_packet_size (\d+)", conf, re.M).group(1))
    assert MqttSettings().max_payload_bytes <= broker_max // 2
    assert MqttSection().max_payload_bytes == MqttSettings().max_payload_bytes
    with pytest.raises(ValueError):
        MqttSection(max_payload_bytes=broker_max + 1)
    assert "qos" not in MqttSection.model_fields
    section = MqttSection(command_rate=2, command_burst=3)
    assert (section.command_rate, section.command_burst) == (2, 3)
