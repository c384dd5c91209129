"""MQTT 5 will delay: a network blip shorter than the delay does not flap the status."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.link import MqttLink, MqttSettings, Will
from edge_agent.messaging.publishers import create_publisher
from edge_agent.messaging.publishers.mqtt import MqttPublisher

pytestmark = pytest.mark.integration

WILL_DELAY = 4
HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run


def _drop_connection(link: MqttLink) -> None:
    """Drop the TCP connection under paho (no DISCONNECT): the broker sees a lost client."""
    sock = link._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)


def test_blip_shorter_than_will_delay_gives_no_offline(mqtt_broker, collector_factory, unique_id, tmp_path: Path):
    root = f"edge/v1/{unique_id}"
    control_topic = f"edge/v1/{unique_id}-control/status"
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"{root}/status", control_topic)
    pub = create_publisher("mqtt", config={"broker": mqtt_broker.url, "keepalive": 5, "will_delay": WILL_DELAY,
                                           "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
                           envelope=EnvelopeFactory(unique_id, tmp_path), state_dir=tmp_path)
    assert isinstance(pub, MqttPublisher)
    # A control client with the same will delay that loses its connection for good, after the
    # device's blip: once its will arrives, the device's will delay has run out as well (Mosquitto
    # sends delayed wills in the order they fall due). That is the event to wait for, not a sleep.
    control = MqttLink(MqttSettings(broker=mqtt_broker.url, keepalive=5, will_delay=WILL_DELAY),
                       f"{unique_id}-control", will=Will(control_topic, b'{"state": "offline"}'))
    pub.start()
    control.start()
    try:
        assert control.wait_connected(HANG)
        assert col.wait(lambda: [s["state"] for s in col.json(f"{root}/status")] == ["online"], HANG)
        _drop_connection(pub.link)
        # paho reconnects well within the will delay and sends a new birth.
        assert col.wait(lambda: len(col.json(f"{root}/status")) >= 2, HANG), col.json(f"{root}/status")
        assert pub.link.stats.reconnects >= 1
        control._client.loop_stop()  # no reconnect for the control
        _drop_connection(control)
        assert col.wait(lambda: bool(col.json(control_topic)), HANG), "the control's will never came"
        assert [s["state"] for s in col.json(f"{root}/status")] == ["online", "online"]
    finally:
        pub.stop(timeout=2)
        with contextlib.suppress(OSError):
            control.stop()
    assert col.wait(lambda: col.json(f"{root}/status")[-1]["state"] == "offline", HANG)
