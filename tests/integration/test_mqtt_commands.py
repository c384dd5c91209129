"""Commands through a real broker: acks, MQTT 5 request/response, retained, desired config, fuzz."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from edge_agent.envelope import EnvelopeFactory
from edge_agent.mqtt import MqttSettings
from edge_agent.publishers import create_publisher
from edge_agent.publishers.mqtt import MqttPublisher
from tests.mqtt_driver import FakeControl
from tests.unit.test_commands_fuzz import hostile

pytestmark = pytest.mark.integration


def _cmd(cmd_id: str | None = None, **extra: Any) -> bytes:
    now = time.time()
    return json.dumps({"id": cmd_id or uuid.uuid4().hex, "ts": now, "expires": now + 60, **extra}).encode()


@pytest.fixture
def agent(mqtt_broker, unique_id: str, tmp_path: Path) -> Iterator[MqttPublisher]:
    envelope = EnvelopeFactory(unique_id, tmp_path)
    control = FakeControl()
    pub = create_publisher("mqtt", config={"broker": mqtt_broker.url, "keepalive": 5, "reconnect_max_s": 1},
                           envelope=envelope, control=control, state_dir=tmp_path, command_rate=2000,
                           command_burst=2000)
    assert isinstance(pub, MqttPublisher)
    yield pub
    pub.stop(timeout=2)


@pytest.fixture
def operator(mqtt_broker, collector_factory, unique_id):
    return collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/#",
                             "resp/#")


def _acks(col) -> list[dict[str, Any]]:
    return col.json("/ack")


def test_ping_with_response_topic_and_correlation(agent, operator, unique_id):
    agent.start()
    assert operator.wait(lambda: bool(operator.json("status")), 10)
    root = f"edge/v1/{unique_id}"
    # The operator side publishes with MQTT 5 properties through the same wrapper.
    operator.link.publish(f"{root}/cmd/ping", _cmd("p1"), response_topic=f"resp/{unique_id}",
                          correlation_data=b"corr-123")
    assert operator.wait(lambda: bool(operator.on(f"resp/{unique_id}")) and bool(_acks(operator)), 5)
    ack = _acks(operator)[0]
    assert (ack["id"], ack["status"], ack["reason"], ack["device_id"]) == ("p1", "succeeded", "pong", unique_id)
    response = operator.on(f"resp/{unique_id}")[0]
    assert response.correlation_data == b"corr-123"
    assert json.loads(response.payload)["id"] == "p1"
    # A response topic inside the fleet's tree is refused (the ack still goes to …/ack),
    # except the device's own …/reply/… subtree.
    operator.link.publish(f"{root}/cmd/ping", _cmd("p2"), response_topic=f"{root}/evt/classification",
                          correlation_data=b"x")
    operator.link.publish(f"{root}/cmd/ping", _cmd("p3"), response_topic=f"{root}/reply/op1", correlation_data=b"y")
    assert operator.wait(lambda: len(_acks(operator)) >= 3 and bool(operator.on(f"{root}/reply/op1")), 5)
    assert not operator.on("evt/classification")
    assert operator.on(f"{root}/reply/op1")[0].correlation_data == b"y"


def test_set_config_and_desired_config(agent, operator, unique_id):
    agent.start()
    root = f"edge/v1/{unique_id}"
    assert operator.wait(lambda: bool(operator.json("status")), 10)
    operator.link.publish(f"{root}/cmd/set_config", _cmd("s1", args={"threshold": 0.8}))
    operator.link.publish(f"{root}/cmd/set_config", _cmd("s2", args={"threshold": "high"}))
    assert operator.wait(lambda: len(_acks(operator)) >= 2, 5)
    by_id = {a["id"]: a for a in _acks(operator)}
    assert by_id["s1"]["status"] == "succeeded" and by_id["s2"]["status"] == "rejected"
    operator.link.publish(f"{root}/config/desired", json.dumps({"version": 7, "config": {"threshold": 0.3}}).encode(),
                          retain=True)
    assert operator.wait(lambda: any(r.get("version") == 7 for r in operator.json("config/reported")), 5)
    reported = [r for r in operator.json("config/reported") if r.get("version") == 7][-1]
    assert reported["status"] == "applied" and reported["config"]["threshold"] == 0.3
    assert next(m.retain for m in operator.on("config/reported")) is False  # live copy; stored retained
    operator.link.publish(f"{root}/config/desired", b"", retain=True)


def test_retained_command_is_refused(mqtt_broker, agent, operator, unique_id):
    root = f"edge/v1/{unique_id}"
    operator.link.publish(f"{root}/cmd/reload", _cmd("old-retained"), retain=True)
    time.sleep(0.3)
    agent.start()  # subscribes and receives the retained command
    assert operator.wait(lambda: bool(_acks(operator)), 10)
    ack = _acks(operator)[0]
    assert ack["status"] == "rejected" and ack["reason"].startswith("retained")
    # A retained command published while subscribed is also refused (retain-as-published).
    operator.link.publish(f"{root}/cmd/ping", _cmd("live-retained"), retain=True)
    assert operator.wait(lambda: any(a["id"] == "live-retained" for a in _acks(operator)), 5)
    assert next(a for a in _acks(operator) if a["id"] == "live-retained")["status"] == "rejected"
    for name in ("reload", "ping"):
        operator.link.publish(f"{root}/cmd/{name}", b"", retain=True)  # clear


BROKER_FUZZ_EXAMPLES = 300


def test_hostile_commands_through_the_broker(agent, operator, unique_id):
    agent.start()
    root = f"edge/v1/{unique_id}"
    assert operator.wait(lambda: bool(operator.json("status")), 10)
    sent = {"n": 0}
    # Topic names must be valid MQTT UTF-8 (the broker drops the *sender* otherwise).
    safe = hostile().filter(lambda c: not c[2] and c[0].isprintable() and not any(ch in c[0] for ch in "/+#")
                            and all(ord(ch) < 0xFDD0 for ch in c[0]))

    @settings(max_examples=BROKER_FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    @given(safe)
    def one(case: tuple[str, bytes, bool, str]) -> None:
        name, payload, _, _ = case
        before = len(_acks(operator))
        operator.link.publish(f"{root}/cmd/{name}", payload)
        sent["n"] += 1
        assert operator.wait(lambda: len(_acks(operator)) > before, 5), f"no ack for {case!r}"

    started = time.monotonic()
    one()
    elapsed = time.monotonic() - started
    acks = _acks(operator)
    assert sent["n"] >= BROKER_FUZZ_EXAMPLES * 0.9
    assert len(acks) == sent["n"], "exactly one ack per command"
    assert sum(a["status"] == "rejected" for a in acks) >= len(acks) - 5  # a mutated ping may stay valid
    # The agent still works: commands are answered and results still flow.
    operator.link.publish(f"{root}/cmd/ping", _cmd("after"))
    agent.publish("evt/classification", agent.envelope.wrap({"n": 1}))
    assert operator.wait(lambda: any(a["id"] == "after" and a["status"] == "succeeded" for a in _acks(operator))
                         and bool(operator.json("evt/classification")), 5)
    print(f"{sent['n']} hostile commands through the broker in {elapsed:.1f} s")


def test_subscriptions_and_birth_restored_after_broker_restart(mqtt_broker_fn, collector_factory, unique_id,
                                                               tmp_path: Path):
    pub = create_publisher("mqtt", config={"broker": mqtt_broker_fn.url, "keepalive": 5, "reconnect_max_s": 1},
                           envelope=EnvelopeFactory(unique_id, tmp_path), control=FakeControl(), state_dir=tmp_path)
    pub.start()
    try:
        assert isinstance(pub, MqttPublisher) and pub.link.wait_connected(10)
        mqtt_broker_fn.kill()
        (mqtt_broker_fn.workdir / "mosquitto.db").unlink(missing_ok=True)  # the broker forgets everything
        mqtt_broker_fn.start()
        col = collector_factory(MqttSettings(broker=mqtt_broker_fn.url, keepalive=5), f"edge/v1/{unique_id}/#")
        deadline = time.monotonic() + 10
        while not (pub.connected and pub.stats()["reconnects"] >= 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.stats()["reconnects"] >= 1
        # The birth (retained) and the command subscription are back.
        assert col.wait(lambda: any(m.get("state") == "online" for m in col.json("status")), 5)
        col.link.publish(f"edge/v1/{unique_id}/cmd/ping", _cmd("after-restart"))
        assert col.wait(lambda: any(a["id"] == "after-restart" for a in _acks(col)), 5)
    finally:
        pub.stop(timeout=2)
