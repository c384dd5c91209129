"""Commands through a real broker: acks, MQTT 5 request/response, retained, desired config, fuzz."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.link import MqttSettings
from edge_agent.messaging.publishers import create_publisher
from edge_agent.messaging.publishers.mqtt import MqttPublisher
from edge_agent.remote.inbox import attach_inbox
from tests.fixtures_mqtt import FPS
from tests.unit.remote.test_handler_fuzz import CommandModel, hostile, ping_outcome

pytestmark = pytest.mark.integration

EVT = "evt/classification"


class FakeControl:
    """The agent side of the in-process publisher tests (the real agent is tested in
    ``test_hostile_commands_to_the_real_agent`` and ``test_mqtt_agent.py``)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {"threshold": 0.5}

    def status_info(self) -> dict[str, Any]:
        return {"model": {"name": "digits", "version": "1.0", "sha256": "ab" * 32}, "config_version": 1}

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if key == "version" and isinstance(value, int):
                continue  # the desired version (as the real agent's apply_config takes it)
            if key != "threshold" or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"invalid setting {key}={value!r}")
        self.config.update(changes)
        return dict(self.config)

    def reload(self) -> None:
        pass

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> bytes | None:
        return b"\xff\xd8\xff\xe0fakejpeg\xff\xd9"

    def health_extra(self) -> dict[str, Any]:
        return {}


def _cmd(cmd_id: str | None = None, **extra: Any) -> bytes:
    now = time.time()
    return json.dumps({"id": cmd_id or uuid.uuid4().hex, "ts": now, "expires": now + 60, **extra}).encode()


@pytest.fixture
def agent(mqtt_broker, unique_id: str, tmp_path: Path) -> Iterator[MqttPublisher]:
    envelope = EnvelopeFactory(unique_id, tmp_path)
    control = FakeControl()
    pub = create_publisher("mqtt", config={"broker": mqtt_broker.url, "keepalive": 5, "reconnect_max_s": 1},
                           envelope=envelope, control=control, state_dir=tmp_path)
    assert isinstance(pub, MqttPublisher)
    attach_inbox(pub, control=control, command_rate=2000, command_burst=2000)
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
    assert operator.wait(lambda: bool(operator.json("status")), 30)
    root = f"edge/v1/{unique_id}"
    # The operator side publishes with MQTT 5 properties through the same wrapper.
    operator.link.publish(f"{root}/cmd/ping", _cmd("p1"), response_topic=f"resp/{unique_id}",
                          correlation_data=b"corr-123")
    assert operator.wait(lambda: bool(operator.on(f"resp/{unique_id}")) and bool(_acks(operator)), 30)
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
    assert operator.wait(lambda: len(_acks(operator)) >= 3 and bool(operator.on(f"{root}/reply/op1")), 30)
    assert not operator.on("evt/classification")
    assert operator.on(f"{root}/reply/op1")[0].correlation_data == b"y"


def test_set_config_and_desired_config(agent, operator, unique_id):
    agent.start()
    root = f"edge/v1/{unique_id}"
    assert operator.wait(lambda: bool(operator.json("status")), 30)
    operator.link.publish(f"{root}/cmd/set_config", _cmd("s1", args={"threshold": 0.8}))
    operator.link.publish(f"{root}/cmd/set_config", _cmd("s2", args={"threshold": "high"}))
    assert operator.wait(lambda: len(_acks(operator)) >= 2, 30)
    by_id = {a["id"]: a for a in _acks(operator)}
    assert by_id["s1"]["status"] == "succeeded" and by_id["s2"]["status"] == "rejected"
    operator.link.publish(f"{root}/config/desired", json.dumps({"version": 7, "config": {"threshold": 0.3}}).encode(),
                          retain=True)
    assert operator.wait(lambda: any(r.get("version") == 7 for r in operator.json("config/reported")), 30)
    reported = [r for r in operator.json("config/reported") if r.get("version") == 7][-1]
    assert reported["status"] == "applied" and reported["config"]["threshold"] == 0.3
    assert next(m.retain for m in operator.on("config/reported")) is False  # live copy; stored retained
    operator.link.publish(f"{root}/config/desired", b"", retain=True)


def test_retained_command_is_refused(mqtt_broker, agent, operator, unique_id):
    root = f"edge/v1/{unique_id}"
    operator.link.publish(f"{root}/cmd/reload", _cmd("old-retained"), retain=True)
    # The operator's own copy back from the broker: the broker has stored it as retained.
    assert operator.wait(lambda: bool(operator.on("cmd/reload")), 30)
    agent.start()  # subscribes and receives the retained command
    assert operator.wait(lambda: bool(_acks(operator)), 30)
    ack = _acks(operator)[0]
    assert ack["status"] == "rejected" and ack["reason"].startswith("retained")
    # A retained command published while subscribed is also refused (retain-as-published).
    operator.link.publish(f"{root}/cmd/ping", _cmd("live-retained"), retain=True)
    assert operator.wait(lambda: any(a["id"] == "live-retained" for a in _acks(operator)), 30)
    assert next(a for a in _acks(operator) if a["id"] == "live-retained")["status"] == "rejected"
    for name in ("reload", "ping"):
        operator.link.publish(f"{root}/cmd/{name}", b"", retain=True)  # clear


BROKER_FUZZ_EXAMPLES = 1000
AGENT_COMMAND_RATE = 50.0  # the rate limit configured for this agent ([mqtt] command_rate/command_burst)
AGENT_COMMAND_BURST = 20
FLOOD = 40
DUPLICATE_IDS = ("dup-a", "dup-b", "dup-c")


def _topic_safe(case: tuple[str, bytes, bool, str]) -> bool:
    # Topic names must be valid MQTT UTF-8 (the broker drops the *sender* otherwise).
    name = case[0]
    return name.isprintable() and not any(ch in name for ch in "/+#") and all(ord(ch) < 0xFDD0 for ch in name)


def _broker_hostile(now: float) -> st.SearchStrategy[tuple[str, bytes, bool, str]]:
    """The unit fuzz strategy (random bytes, non-UTF-8, oversize, deep nesting, wrong types, unknown
    names, expired, retained …), plus replayed ids and hostile payloads published retained."""
    base = hostile(now).filter(_topic_safe)
    duplicate = st.sampled_from(DUPLICATE_IDS).map(lambda i: ("ping", _cmd(i), False, "duplicate_id"))
    retained = base.map(lambda c: ("ping", c[1], True, "retained"))
    return st.one_of(base, base, base, duplicate, retained)


def _agent_with_command_limit(mqtt_broker, start_agent, collector_factory, unique_id: str, tmp_path: Path,
                              rate: float, burst: float) -> tuple[Any, Any]:
    """An operator subscribed to the device's topics and a real agent with this command rate limit,
    already publishing results."""
    operator = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/#")
    config = tmp_path / "agent-commands.toml"
    config.write_text(f"[mqtt]\nreconnect_min_s = 1\nreconnect_max_s = 2\ncommand_rate = {rate}\n"
                      f"command_burst = {burst}\n")
    agent = start_agent(mqtt_broker, unique_id, tmp_path / "state", "--config", str(config))
    assert operator.wait(lambda: len(operator.json("evt/classification")) >= FPS, 60), agent.log()
    return operator, agent


def _results_between_acks(operator, first_ack: int, parts: int) -> list[int]:
    """Results that arrived within each of ``parts`` equal runs of acks (from the ``first_ack``-th
    on), counted in the order the operator received everything."""
    order = [m.topic.endswith("/ack") for m in operator.messages if m.topic.endswith(("/ack", EVT))]
    ack_pos = [i for i, is_ack in enumerate(order) if is_ack][first_ack:]
    bounds = [ack_pos[len(ack_pos) * k // parts] for k in range(parts)] + [ack_pos[-1]]
    return [sum(not is_ack for is_ack in order[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def test_hostile_commands_to_the_real_agent(mqtt_broker, start_agent, collector_factory, unique_id,
                                            tmp_path: Path):
    """A thousand hostile commands through the broker to the real ``edge-agent run``: one ack each,
    exactly the verdict of an independent model of the command rules (no crash, no rate limiting),
    and inference goes on."""
    root = f"edge/v1/{unique_id}"
    operator, agent = _agent_with_command_limit(mqtt_broker, start_agent, collector_factory, unique_id, tmp_path,
                                                AGENT_COMMAND_RATE, AGENT_COMMAND_BURST)
    # The oracle: the written rules (tests/unit/remote/test_handler_fuzz.py), not the handler's code. The
    # sender stays under the agent's rate limit, so the model has none: a rate_limited ack disagrees.
    model = CommandModel({"ping": ping_outcome})
    sent: list[tuple[str, bytes, bool, str]] = []
    retained_topics: set[str] = set()
    last_send = [0.0]

    def send(case: tuple[str, bytes, bool, str]) -> dict[str, Any]:
        name, payload, retained, _ = case
        if not retained:  # stay under the agent's rate limit (a retained command is refused before it)
            time.sleep(max(0.0, last_send[0] + 1.0 / AGENT_COMMAND_RATE + 0.01 - time.monotonic()))
            last_send[0] = time.monotonic()
        before = len(_acks(operator))
        operator.link.publish(f"{root}/cmd/{name}", payload, retain=retained)
        if retained:
            retained_topics.add(f"{root}/cmd/{name}")
        sent.append(case)
        expected = model.verdict(name, payload, retained, time.time())
        assert operator.wait(lambda: len(_acks(operator)) > before, 60), f"no ack for {case!r}\n{agent.log()}"
        ack = _acks(operator)[before]
        assert (ack["status"], ack["reason"].split(":", 1)[0]) == (expected.status, expected.reason), (
            case, ack, expected)
        if expected.id is not None:
            assert ack["id"] == expected.id, (case, ack, expected)
        return ack

    for cmd_id in DUPLICATE_IDS:  # first use of these ids: accepted
        assert send(("ping", _cmd(cmd_id), False, ""))["status"] == "succeeded"

    @settings(max_examples=BROKER_FUZZ_EXAMPLES, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(_broker_hostile(time.time()))
    def one(case: tuple[str, bytes, bool, str]) -> None:
        ack = send(case)
        if case[3]:
            assert ack["status"] == "rejected" and ack["reason"].startswith(case[3]), (case, ack)

    started = time.monotonic()
    # Hypothesis may stop a round early once it has covered the strategy; fixed seeds keep it
    # reproducible and a bounded number of rounds reaches the count.
    for round_no in range(8):
        if len(sent) - len(DUPLICATE_IDS) >= BROKER_FUZZ_EXAMPLES:
            break
        seed(round_no)(one)()
    elapsed = time.monotonic() - started  # reported only
    hostile_acks = _acks(operator)[len(DUPLICATE_IDS):]
    assert len(sent) - len(DUPLICATE_IDS) >= BROKER_FUZZ_EXAMPLES
    assert len(_acks(operator)) == len(sent), "exactly one ack per command"
    reasons = {a["reason"].split(":")[0] for a in hostile_acks}
    assert "rate_limited" not in reasons and all(a["status"] != "failed" for a in hostile_acks)
    # Each verdict was checked against the model above; this only checks that the strategy stayed
    # hostile (a few generated payloads are valid pings: an id like "a-b", a harmless broken byte).
    assert sum(a["status"] == "rejected" for a in hostile_acks) >= 0.9 * len(hostile_acks)
    for reason in ("retained", "duplicate_id", "too_large", "not_utf8", "unknown_command", "expired",
                   "bad_schema", "invalid_json"):
        assert reason in reasons, f"no {reason} case among {sorted(reasons)}"
    # The agent kept inferring all along: results arrived among the acks in each quarter of the run
    # (order, not rate: a command path that stalls inference leaves a quarter without results) …
    during = _results_between_acks(operator, len(DUPLICATE_IDS), 4)
    assert all(n > 0 for n in during), f"results per quarter of the hostile commands: {during}"
    # … and it still answers and infers afterwards.
    evts_after = len(operator.json(EVT))
    time.sleep(1.0 / AGENT_COMMAND_RATE)
    operator.link.publish(f"{root}/cmd/ping", _cmd("after"))
    assert operator.wait(lambda: any(a["id"] == "after" and a["status"] == "succeeded" for a in _acks(operator))
                         and len(operator.json(EVT)) >= evts_after + FPS, 60), agent.log()
    for topic in retained_topics:  # clear the retained commands (each clear is refused too)
        operator.link.publish(topic, b"", retain=True)
    assert agent.alive, agent.log()
    assert agent.terminate() == 0, agent.log()
    assert "Traceback" not in agent.log() and "crashed" not in agent.log()
    print(f"{len(sent)} hostile commands through the broker to the real agent in {elapsed:.1f} s, "
          f"results per quarter {during}; reasons {sorted(reasons)}")


def test_command_flood_is_rate_limited_and_answered(mqtt_broker, start_agent, collector_factory, unique_id,
                                                    tmp_path: Path):
    """A flood is answered too: accepted up to the burst, the rest refused as ``rate_limited``; never
    silently dropped. The rate refills one token in 1000 s (longer than the test may run), so the
    count is exact however fast or slow the machine is."""
    rate, burst = 0.001, 5
    root = f"edge/v1/{unique_id}"
    operator, agent = _agent_with_command_limit(mqtt_broker, start_agent, collector_factory, unique_id, tmp_path,
                                                rate, burst)
    for i in range(FLOOD):
        operator.link.publish(f"{root}/cmd/ping", _cmd(f"flood{i}"))
    assert operator.wait(lambda: len(_acks(operator)) >= FLOOD, 60), agent.log()
    # A retained command is refused before the rate limit and its ack names it: once its ack is
    # in, every ack for the flood (sent before it, handled in order) is in too.
    operator.link.publish(f"{root}/cmd/ping", _cmd("end-of-flood"), retain=True)
    assert operator.wait(lambda: any(a["id"] == "end-of-flood" for a in _acks(operator)), 60), agent.log()
    operator.link.publish(f"{root}/cmd/ping", b"", retain=True)  # clear
    flood, end = _acks(operator)[:-1], _acks(operator)[-1]
    assert (end["id"], end["status"]) == ("end-of-flood", "rejected") and end["reason"].startswith("retained")
    assert len(flood) == FLOOD, flood
    # In order: the burst's worth first, then refusals (refused before parsing: no id).
    assert [(a["id"], a["status"]) for a in flood[:burst]] == [(f"flood{i}", "succeeded") for i in range(burst)]
    assert [(a["id"], a["status"], a["reason"]) for a in flood[burst:]] == [
        (None, "rejected", "rate_limited")] * (FLOOD - burst)
    assert agent.alive, agent.log()
    assert agent.terminate() == 0, agent.log()
    assert "Traceback" not in agent.log()


def test_subscriptions_and_birth_restored_after_broker_restart(mqtt_broker_fn, collector_factory, unique_id,
                                                               tmp_path: Path):
    control = FakeControl()
    pub = create_publisher("mqtt", config={"broker": mqtt_broker_fn.url, "keepalive": 5, "reconnect_max_s": 1},
                           envelope=EnvelopeFactory(unique_id, tmp_path), control=control, state_dir=tmp_path)
    assert isinstance(pub, MqttPublisher)
    attach_inbox(pub, control=control)
    pub.start()
    try:
        assert isinstance(pub, MqttPublisher) and pub.link.wait_connected(10)
        mqtt_broker_fn.kill()
        (mqtt_broker_fn.workdir / "mosquitto.db").unlink(missing_ok=True)  # the broker forgets everything
        mqtt_broker_fn.start()
        col = collector_factory(MqttSettings(broker=mqtt_broker_fn.url, keepalive=5), f"edge/v1/{unique_id}/#")
        deadline = time.monotonic() + 60
        while not (pub.connected and pub.stats()["reconnects"] >= 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.stats()["reconnects"] >= 1
        # The birth (retained) and the command subscription are back.
        assert col.wait(lambda: any(m.get("state") == "online" for m in col.json("status")), 30)
        col.link.publish(f"edge/v1/{unique_id}/cmd/ping", _cmd("after-restart"))
        assert col.wait(lambda: any(a["id"] == "after-restart" for a in _acks(col)), 30)
    finally:
        pub.stop(timeout=2)
