"""Packet-size limits and a clean stop against a real Mosquitto.

- A message within the device's cap but over the broker's ``max_packet_size`` must not wedge
  the outbox (paho would resend it forever after the broker drops the connection): it is
  refused and counted on the device, and later messages are still delivered.
- A clean stop with a large backlog still leaves the retained ``offline`` (MQTT 3.1.1 too,
  where there is no "disconnect with will" fallback).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.broker import Mosquitto, free_port, plain_config, render_config
from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.link import MqttSettings
from edge_agent.messaging.publishers import create_publisher
from edge_agent.messaging.publishers.mqtt import MqttPublisher, encode

pytestmark = pytest.mark.integration

BROKER_MAX = 4096
HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run


@pytest.fixture
def small_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    port = free_port()
    conf = render_config(plain_config(workdir, port), {"max_packet_size": str(BROKER_MAX)})
    broker = Mosquitto(workdir, conf, port)
    broker.start()
    yield broker
    broker.stop()


def _publisher(broker: Mosquitto, device: str, state: Path, **config) -> MqttPublisher:
    pub = create_publisher("mqtt", config={"broker": broker.url, "keepalive": 5, "reconnect_max_s": 1, **config},
                           envelope=EnvelopeFactory(device, state), state_dir=state)
    assert isinstance(pub, MqttPublisher)
    return pub


def _padded(pub: MqttPublisher, n: int, size: int) -> dict[str, Any]:
    """A body the publisher will send as about ``size`` bytes, envelope included (the envelope
    of a probe with the same fields; a seq one digit longer adds a byte at most)."""
    probe = pub.envelope.wrap({"n": n, "pad": ""})
    return {"n": n, "pad": "x" * max(0, size - len(encode(probe)))}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_near_cap_message_over_broker_limit_does_not_wedge_the_outbox(
    small_broker, collector_factory, unique_id, tmp_path: Path, protocol: str
):
    col = collector_factory(MqttSettings(broker=small_broker.url, keepalive=5), f"edge/v1/{unique_id}/evt/+")
    # MQTT 5: the device cap is the default (far above the broker's limit); the broker's
    # Maximum Packet Size from the CONNACK must win. MQTT 3.1.1 has no such property: the
    # operator sets the cap to the broker's limit, and topic + header must be counted.
    extra = {} if protocol == "5" else {"max_payload_bytes": BROKER_MAX}
    pub = _publisher(small_broker, unique_id, tmp_path / "state", protocol=protocol, **extra)
    pub.start()
    try:
        assert pub.link.wait_connected(HANG)
        pub.publish("evt/x", _padded(pub, 0, 100))
        # Payload alone under the broker's limit; the whole packet is not.
        pub.publish("evt/x", _padded(pub, 1, BROKER_MAX - 20))
        for n in range(2, 12):
            pub.publish("evt/x", _padded(pub, n, 200))
        assert col.wait(lambda: len(col.on("evt/x")) >= 11, HANG), [json.loads(m.payload)["n"] for m in col.on("evt/x")]
        got = [json.loads(m.payload)["n"] for m in col.on("evt/x")]
        assert 1 not in got and got == [0, *range(2, 12)]
        # The subscriber can see the last message before the device has processed its PUBACK.
        deadline = time.monotonic() + HANG
        while pub.outbox.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = pub.stats()
        assert stats["outbox"]["refused_oversize"] == 1 and stats["outbox"]["depth"] == 0
        assert stats["reconnects"] == 0  # the broker never had to drop the connection
    finally:
        pub.stop(timeout=2)


def test_clean_stop_with_large_backlog_leaves_retained_offline_on_311(
    mqtt_broker, collector_factory, unique_id, tmp_path: Path
):
    root = f"edge/v1/{unique_id}"
    pub = _publisher(mqtt_broker, unique_id, tmp_path / "state", protocol="3.1.1", max_inflight=2)
    # The backlog is queued before the sender runs, so its size does not depend on how fast the
    # sender drains while the test fills it.
    for n in range(20_000):
        pub.publish("evt/x", _padded(pub, n, 300))
    assert pub.outbox.depth == 20_000  # a backlog the stop timeout cannot flush
    pub.start()
    assert pub.link.wait_connected(HANG)
    waits: list[float | None] = []
    wait = pub.sender._offline_done.wait

    def recording_wait(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return wait(timeout)

    pub.sender._offline_done.wait = recording_wait  # type: ignore[method-assign]
    pub.stop(timeout=2.5)
    # `offline` got its reserved share of the timeout (1.5 s less however late the flush loop
    # noticed its deadline), not what the flush left over: that is the 0.1 s floor. Only a
    # scheduler 1.4 s late fails this; no speed is asserted.
    assert waits and waits[0] is not None and waits[0] > 0.1, waits
    assert pub.outbox.counters.delivered < 20_000  # the backlog really was not flushed
    # A new subscriber sees the retained status: it must be our `offline` (it has a seq), not the
    # birth, and not the will (no seq) that a dropped connection would leave.
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"{root}/status")
    assert col.wait(lambda: bool(col.json("status")), HANG)
    status = col.json("status")[-1]
    assert status["state"] == "offline" and isinstance(status["seq"], int), status
    assert col.on("status")[-1].retain
