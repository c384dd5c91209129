"""MQTT 5 will delay: a network blip shorter than the delay does not flap the status."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from edge_agent.envelope import EnvelopeFactory
from edge_agent.mqtt import MqttSettings
from edge_agent.publishers import create_publisher
from edge_agent.publishers.mqtt import MqttPublisher

pytestmark = pytest.mark.integration


def test_blip_shorter_than_will_delay_gives_no_offline(mqtt_broker, collector_factory, unique_id, tmp_path: Path):
    root = f"edge/v1/{unique_id}"
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"{root}/status")
    pub = create_publisher("mqtt", config={"broker": mqtt_broker.url, "keepalive": 5, "will_delay": 4,
                                           "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
                           envelope=EnvelopeFactory(unique_id, tmp_path), state_dir=tmp_path)
    assert isinstance(pub, MqttPublisher)
    pub.start()
    try:
        assert col.wait(lambda: [s["state"] for s in col.json("status")] == ["online"], 10)
        # Drop the TCP connection under paho (no DISCONNECT): the broker sees a lost client.
        sock = pub.link._client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        # paho reconnects well within the will delay and sends a new birth.
        assert col.wait(lambda: len(col.json("status")) >= 2, 5), col.json("status")
        assert pub.link.stats.reconnects >= 1
        time.sleep(5)  # past the will delay
        assert [s["state"] for s in col.json("status")] == ["online", "online"]
    finally:
        pub.stop(timeout=2)
    assert col.wait(lambda: col.json("status")[-1]["state"] == "offline", 5)
