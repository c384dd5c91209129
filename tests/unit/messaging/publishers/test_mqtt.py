"""The MQTT publisher without a broker: starts anyway, queues durably, never blocks, validates kinds."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.homeassistant import homeassistant_discovery
from edge_agent.messaging.publishers import create_publisher
from edge_agent.messaging.publishers.mqtt import MqttPublisher
from edge_agent.remote.inbox import attach_inbox

HANG = 60.0  # only bounds a hang: a call that blocks on the network never returns at all here


def _publisher(tmp_path: Path, broker: str = "mqtt://127.0.0.1:1", control: Any = None, **kw) -> MqttPublisher:
    """A publisher; given a control, with the command inbox attached as the agent does."""
    pub = create_publisher("mqtt", config={"broker": broker, "reconnect_max_s": 1},
                           envelope=EnvelopeFactory("dev1", tmp_path), state_dir=tmp_path, control=control, **kw)
    assert isinstance(pub, MqttPublisher)
    if control is not None:
        attach_inbox(pub, control=control)
    return pub


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel does) and never answers: no CONNACK, ever.
    Anything that waits for the broker waits forever here."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"mqtt://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _returns(call: Callable[[], object]) -> bool:
    """Runs ``call`` in a thread; False if it has not returned within HANG."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(HANG)


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_starts_and_queues_while_broker_is_down(tmp_path: Path, silent_broker: str, down: str) -> None:
    """Publishing and stopping never wait for the broker: with a silent broker a blocking call would
    never return (caught by the HANG deadline, not by timing)."""
    pub = _publisher(tmp_path, "mqtt://127.0.0.1:1" if down == "refused" else silent_broker)
    pub.start()

    def produce() -> None:
        for i in range(200):
            pub.publish("evt/classification", {"n": i})
        pub.publish("health", {"fps_inferred": 1.0})

    assert _returns(produce), "publish() blocked while the broker is down"
    assert not pub.connected
    stats = pub.stats()
    assert stats["outbox"]["depth"] == 201 and stats["connected"] is False
    assert stats["outbox"]["delivered"] == 0 and stats["connects"] == 0
    assert _returns(lambda: pub.stop(timeout=0.5)), "stop() blocked while the broker is down"
    # Still queued on disk for the next start, in order.
    again = _publisher(tmp_path)
    assert again.outbox.depth == 201
    rows = again.outbox.take(300)
    assert [r.topic.rsplit("/", 1)[-1] for r in rows] == ["classification"] * 200 + ["health"]
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
    assert all(t.startswith(("homeassistant/sensor/cam-01/", "homeassistant/binary_sensor/cam-01/"))
               and t.endswith("/config") for t in topics)
    for _, config in configs:
        assert config["availability"][0]["topic"] == "edge/v1/cam-01/status"
        assert config["state_topic"] == "edge/v1/cam-01/health"


def test_payload_under_cap_but_packet_over_is_refused_and_counted(tmp_path: Path) -> None:
    from edge_agent.messaging.link import PACKET_OVERHEAD
    from edge_agent.messaging.publishers.mqtt import encode

    pub = create_publisher("mqtt", config={"broker": "mqtt://127.0.0.1:1", "max_payload_bytes": 4096},
                           envelope=EnvelopeFactory("dev1", tmp_path), state_dir=tmp_path)
    assert isinstance(pub, MqttPublisher)
    topic = "edge/v1/dev1/evt/x"
    # The publisher wraps what it is given: a probe with the same fields (and a seq of as many
    # digits) tells how many bytes the envelope adds.
    envelope_bytes = len(encode(pub.envelope.wrap({"pad": ""})))
    # Pad so that the payload alone is 10 bytes under the cap: still over once topic and header count.
    pub.publish("evt/x", {"pad": "x" * (4096 - 10 - envelope_bytes)})
    assert pub.stats()["outbox"]["refused_oversize"] == 1 and pub.outbox.depth == 0
    pub.publish("evt/x", {"pad": "x" * (4096 - len(topic) - PACKET_OVERHEAD - envelope_bytes)})
    assert pub.outbox.depth == 1
    assert len(pub.outbox.take(1)[0].payload) == 4096 - len(topic) - PACKET_OVERHEAD  # exactly at the cap
    pub.outbox.close()


class _Control:
    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.config = {"version": 0, "threshold": 0.5}

    def status_info(self) -> dict:
        return {"config_version": self.config["version"]}

    def apply_config(self, changes: dict) -> dict:
        self.calls.append(dict(changes))
        changes = dict(changes)
        self.config["version"] = changes.pop("version", self.config["version"] + 1)
        self.config.update(changes)
        return dict(self.config)

    def reported_config(self) -> dict:
        return dict(self.config)

    def reload(self) -> None:
        pass

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> None:
        return None

    def health_extra(self) -> dict:
        return {}


def _reported(pub: MqttPublisher) -> list[dict]:
    import json

    return [json.loads(d.payload) for d in pub.sender._direct if d.topic.endswith("/config/reported")]


def test_desired_version_is_passed_on_and_stale_versions_are_reported(tmp_path: Path) -> None:
    import json

    control = _Control()
    pub = _publisher(tmp_path, control=control)
    pub.inbox.desired.apply(json.dumps({"version": 7, "config": {"threshold": 0.3}}).encode())
    assert control.calls == [{"threshold": 0.3, "version": 7}]
    rep = _reported(pub)[-1]
    assert {k: rep[k] for k in ("version", "status", "source")} == {"version": 7, "status": "applied",
                                                                   "source": "desired"}
    assert rep["config"]["version"] == 7 and "reason" not in rep
    assert all(d.retain for d in pub.sender._direct if d.topic.endswith("/config/reported"))
    # The same version again (retained, after a reconnect): nothing.
    pub.inbox.desired.apply(json.dumps({"version": 7, "config": {"threshold": 0.9}}).encode())
    assert len(_reported(pub)) == 1 and len(control.calls) == 1
    # A lower version: refused, and said so.
    pub.inbox.desired.apply(json.dumps({"version": 5, "config": {"threshold": 0.9}}).encode())
    rep = _reported(pub)[-1]
    assert (rep["version"], rep["status"], rep["reason"]) == (5, "rejected", "stale version 5 <= 7")
    assert rep["config"]["version"] == 7 and rep["source"] == "desired"
    assert len(control.calls) == 1
    pub.outbox.close()


def test_busy_acks_are_counted_and_desired_config_is_deferred_not_dropped(tmp_path: Path) -> None:
    import json

    from edge_agent.messaging.link import InboundMessage
    from edge_agent.remote.inbox import COMMAND_QUEUE_MAX

    control = _Control()
    pub = _publisher(tmp_path, control=control)
    root = "edge/v1/dev1"
    for _ in range(COMMAND_QUEUE_MAX):
        pub.inbox.offer(InboundMessage(f"{root}/cmd/ping", b"{}", 1, False))
    pub.inbox.offer(InboundMessage(f"{root}/cmd/ping", b"{}", 1, False))  # queue full
    assert pub.stats()["commands_rejected"] == 1
    assert pub.stats()["commands"]["rejected_reasons"] == {"busy": 1}
    desired = json.dumps({"version": 3, "config": {"threshold": 0.2}}).encode()
    pub.inbox.offer(InboundMessage(f"{root}/config/desired", desired, 1, True))
    assert pub.inbox.desired.pending
    assert control.calls == []
    # The command worker applies it with the next message it takes off the queue.
    pub.inbox._queue.get_nowait()
    pub.inbox._queue.put_nowait(None)
    pub.inbox._work()  # processes the queued pings, then the deferred desired, then stops
    assert control.calls == [{"threshold": 0.2, "version": 3}]
    pub.outbox.close()


def test_agent_passes_command_rate_and_burst(tmp_path: Path) -> None:
    from edge_agent.agent.agent import Agent
    from edge_agent.config import AgentConfig

    cfg = AgentConfig.model_validate({"state_dir": str(tmp_path),
                                      "mqtt": {"broker": "mqtt://127.0.0.1:1", "command_rate": 2,
                                               "command_burst": 3}})
    agent = Agent(cfg)
    agent.envelope = EnvelopeFactory("dev1", tmp_path)
    pub = agent._make_publisher()
    assert isinstance(pub, MqttPublisher)
    assert (pub.inbox.commands.bucket.rate, pub.inbox.commands.bucket.burst) == (2, 3)
    pub.outbox.close()


def test_rows_are_queued_in_seq_order_across_threads(tmp_path: Path) -> None:
    """Health (its own thread) and results (the inference thread) publish at once: taking a seq
    and queueing the row happen under one lock, so the outbox (what is replayed after a crash,
    in row order) holds them in seq order. Without the lock rows interleave out of order."""
    import json
    import sqlite3

    pub = _publisher(tmp_path)  # broker refused: everything stays queued
    pub.start()
    start = threading.Barrier(2)

    def produce(kind: str) -> None:
        start.wait()
        for i in range(1500):
            pub.publish(kind, {"n": i})

    threads = [threading.Thread(target=produce, args=(k,)) for k in ("health", "evt/classification")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    assert _returns(lambda: pub.stop(timeout=0.5))
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        seqs = [json.loads(p)["seq"] for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY id")]
    assert len(seqs) == 3000
    assert seqs == sorted(seqs)


class _ModelControl(_Control):
    """A running model with labels, for Home Assistant discovery."""

    def __init__(self, labels: list[str], interval: float = 30.0) -> None:
        super().__init__()
        self.labels = labels
        self.config.update({"events": "change", "health_interval_s": interval})

    def status_info(self) -> dict:
        return {"task": "detect", "model": {"name": "m"}, "config_version": 0}

    def model_labels(self) -> list[str]:
        return list(self.labels)


def _discovery(pub: MqttPublisher) -> list[tuple[str, bytes]]:
    items = [(d.topic, d.payload) for d in pub.sender._direct if d.topic.startswith("homeassistant/")]
    pub.sender._direct.clear()
    return items


def test_discovery_follows_the_model_and_removes_what_is_gone(tmp_path: Path) -> None:
    control = _ModelControl(["person", "car"])
    pub = create_publisher("mqtt", config={"broker": "mqtt://127.0.0.1:1", "homeassistant": True},
                           envelope=EnvelopeFactory("dev1", tmp_path), state_dir=tmp_path, control=control)
    assert isinstance(pub, MqttPublisher)
    pub._on_connected()  # what a connect does: birth and discovery
    first = dict(_discovery(pub))
    assert "homeassistant/binary_sensor/dev1/detected_car/config" in first
    assert all(payload for payload in first.values())
    pub.publish("status", {"state": "online"})  # nothing changed: nothing sent again
    assert _discovery(pub) == []
    control.labels = ["person", "bicycle"]  # a model swap: its birth brings the new labels
    pub.publish("status", {"state": "online"})
    second = _discovery(pub)
    removed = {topic for topic, payload in second if payload == b""}
    assert removed == {"homeassistant/binary_sensor/dev1/detected_car/config",
                       "homeassistant/sensor/dev1/count_car/config"}
    assert "homeassistant/binary_sensor/dev1/detected_bicycle/config" in dict(second)
    control.config["health_interval_s"] = 2.0  # set_config: the next health brings a new expire_after
    pub.publish("health", {})
    third = dict(_discovery(pub))
    assert json.loads(third["homeassistant/sensor/dev1/fps/config"])["expire_after"] == 5
    pub.outbox.close()
    # the next run (same state directory) with a model without "bicycle" removes its configs too
    control.labels = ["person"]
    again = create_publisher("mqtt", config={"broker": "mqtt://127.0.0.1:1", "homeassistant": True},
                             envelope=EnvelopeFactory("dev1", tmp_path), state_dir=tmp_path, control=control)
    assert isinstance(again, MqttPublisher)
    again._on_connected()
    assert {t for t, p in _discovery(again) if p == b""} == {
        "homeassistant/binary_sensor/dev1/detected_bicycle/config", "homeassistant/sensor/dev1/count_bicycle/config"}
    again.outbox.close()


def test_a_birth_of_another_session_on_our_status_after_a_reconnect_is_a_duplicate(tmp_path: Path) -> None:
    from edge_agent.messaging.link import InboundMessage

    pub = _publisher(tmp_path)
    topic = "edge/v1/dev1/status"

    def birth(**fields: Any) -> InboundMessage:
        body = {"state": "online", "session": "other", "ts_ms": pub._started_ms + 5, **fields}
        return InboundMessage(topic, json.dumps(body).encode(), 1, True)

    pub.link.stats.connects = 1  # first connect: an earlier run's birth may look new (no RTC)
    pub._on_message(birth())
    assert not pub.link.duplicates.flagged
    pub.link.stats.connects = 2
    for ignored in (birth(session=pub.envelope.session), birth(state="offline"), birth(ts_ms=pub._started_ms - 1),
                    birth(ts_ms="soon"), InboundMessage(topic, b"{not json", 1, True),
                    InboundMessage(topic, b" " * (64 * 1024 + 1), 1, True)):
        pub._on_message(ignored)
    assert not pub.link.duplicates.flagged
    pub._on_message(birth())
    assert pub.stats()["duplicate_device_id"] is True and pub.stats()["duplicate_device_id_how"] == "foreign_birth"
    assert pub.problems() == ["duplicate_device_id: another client connected as dev1 (1 time(s), last seen by "
                              "foreign_birth)"]
    pub.outbox.close()
