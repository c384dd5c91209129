"""The MQTT publisher without a broker: starts anyway, queues durably, never blocks, validates kinds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.envelope import EnvelopeFactory
from edge_agent.publishers import create_publisher
from edge_agent.publishers.mqtt import MqttPublisher, homeassistant_discovery


def _publisher(tmp_path: Path, **kw) -> MqttPublisher:
    pub = create_publisher("mqtt", config={"broker": "mqtt://127.0.0.1:1", "reconnect_max_s": 1},
                           envelope=EnvelopeFactory("dev1", tmp_path), state_dir=tmp_path, **kw)
    assert isinstance(pub, MqttPublisher)
    return pub


def test_starts_and_queues_while_broker_is_down(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    t0 = time.monotonic()
    for i in range(200):
        pub.publish("evt/classification", pub.envelope.wrap({"n": i}))
    pub.publish("health", {"fps_inferred": 1.0})  # wrapped by the publisher
    assert time.monotonic() - t0 < 2.0
    assert not pub.connected
    stats = pub.stats()
    assert stats["outbox"]["depth"] == 201 and stats["connected"] is False
    t1 = time.monotonic()
    pub.stop(timeout=0.5)
    assert time.monotonic() - t1 < 5.0
    # Still queued on disk for the next start.
    again = _publisher(tmp_path)
    assert again.outbox.depth == 201
    again.outbox.close()


def test_oversize_message_refused_and_counted(tmp_path: Path) -> None:
    pub = _publisher(tmp_path, outbox={"max_message_bytes": 2048})
    pub.publish("evt/snapshot", {"data": "x" * 5000})
    assert pub.stats()["outbox"]["refused_oversize"] == 1 and pub.outbox.depth == 0
    pub.outbox.close()


@pytest.mark.parametrize("kind", ["", "evt/+", "evt/#", "/abs", "random", "cmd/ping"])
def test_invalid_kinds_raise(tmp_path: Path, kind: str) -> None:
    pub = _publisher(tmp_path)
    with pytest.raises(ValueError):
        pub.publish(kind, {})
    pub.outbox.close()


def test_homeassistant_discovery_binds_availability() -> None:
    configs = homeassistant_discovery("cam-01", "edge/v1/cam-01")
    topics = [t for t, _ in configs]
    assert all(t.startswith("homeassistant/sensor/cam-01/") and t.endswith("/config") for t in topics)
    for _, config in configs:
        assert config["availability"][0]["topic"] == "edge/v1/cam-01/status"
        assert config["state_topic"] == "edge/v1/cam-01/health"
