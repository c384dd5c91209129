"""The real ``edge-agent run --broker`` against a real Mosquitto: birth, will, outages, crash replay.

Every agent here runs the real int8 digits bundle on a looping folder of real digit
images, paced with ``--fps 20 --events every``: about 20 results per second, each
through the durable outbox. Only 127.0.0.1 traffic. Every wait is for an event, with a
deadline that only bounds a hang: nothing here asserts how fast the machine is.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.broker import Mosquitto, free_port, plain_config
from edge_agent.messaging.link import MqttSettings
from tests.fixtures_mqtt import FPS, Collector
from tests.integration.mqtt_helpers import connected_with, fleet_cli_bg, outbox_rows, wait_until

pytestmark = pytest.mark.integration

KEEPALIVE = 5  # the agent's configuration allows 5 s at least
WILL_DELAY = 1
EVT = "evt/classification"
ENVELOPE = ("schema", "device_id", "boot_id", "session", "seq", "ts_ms", "replayed")
HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run
OUTAGE_RESULTS = 3 * FPS  # results the agent must make (and queue) while the broker is away
# What a fresh, connected agent's outbox reports in its health: nothing lost, refused or replayed.
CLEAN_OUTBOX = {"evicted": 0, "evicted_health": 0, "evicted_results": 0, "evicted_age": 0, "refused_oversize": 0,
                "undeliverable": 0, "write_errors": 0, "replayed": 0}


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Like ``mqtt_broker_fn`` (own broker, kill -9 and restart), logging every packet, so the test
    can wait for what the broker did instead of sleeping."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    port = free_port()
    broker = Mosquitto(workdir, plain_config(workdir, port) + "log_type debug\nlog_type subscribe\n", port)
    broker.start()
    yield broker
    broker.stop()


def _db_stamp(broker: Mosquitto) -> tuple[int, int] | None:
    """Identity of Mosquitto's persistence file (it writes a new file and renames it at each save)."""
    try:
        st = (broker.workdir / "mosquitto.db").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _has_everything(log: str, client_id: str, device_id: str) -> bool:
    """From the broker's packet log (since its last start): ``client_id`` was sent the device's
    last message and has acknowledged every message sent to it (paho sends the PUBACK after
    ``on_message`` returned, so the client has handled them)."""
    outstanding: set[str] = set()
    last_in = last_out = -1
    for n, line in enumerate(log.splitlines()):
        if f"Sending PUBLISH to {client_id} (" in line:
            qos, mid = re.search(r", q(\d), r\d, m(\d+),", line).groups()  # type: ignore[union-attr]
            if qos != "0":  # QoS 0 gets no PUBACK
                outstanding.add(mid)
            if f"'edge/v1/{device_id}/" in line:
                last_out = n
        elif f"Received PUBACK from {client_id} (" in line:
            outstanding.discard(re.search(r"Mid: (\d+)", line).group(1))  # type: ignore[union-attr]
        elif f"Received PUBLISH from {device_id} (" in line:
            last_in = n
    return not outstanding and last_in >= 0 and last_out > last_in


def _settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(broker=broker.url, keepalive=5, reconnect_max_s=1)


def _live(col: Collector, suffix: str = "") -> list[dict[str, Any]]:
    """Payloads as published live (retained copies sent on (re)subscribe left out)."""
    out = []
    for m in col.on(suffix):
        if m.retain:
            continue
        body = json.loads(m.payload)
        body["_topic"] = m.topic
        out.append(body)
    return out


def _seqs(col: Collector, suffix: str = "") -> list[int]:
    return [m["seq"] for m in _live(col, suffix) if isinstance(m["seq"], int)]


def _offline(col: Collector, with_seq: bool | None = None) -> list[dict[str, Any]]:
    return [m for m in col.json("status") if m.get("state") == "offline"
            and (with_seq is None or isinstance(m.get("seq"), int) == with_seq)]


def _assert_no_seq_missing(col: Collector, last: int) -> list[int]:
    """Every seq from the agent's first (0, a fresh state directory) to ``last`` arrived."""
    seqs = _seqs(col)
    missing = sorted(set(range(0, last + 1)) - set(seqs))
    assert not missing, f"{len(missing)} seq(s) never arrived: {missing[:20]}"
    assert max(seqs) == last, f"seq {max(seqs)} after the final offline ({last})"
    return seqs


def test_birth_health_events_and_will_after_kill9(mqtt_broker, collector_factory, unique_id, start_agent,
                                                  tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=120)
    agent = start_agent(mqtt_broker, unique_id, tmp_path / "state", health_interval=0.5, keepalive=KEEPALIVE,
                        will_delay=WILL_DELAY)
    assert col.wait(lambda: len(col.json(EVT)) >= 2 * FPS and len(col.json("health")) >= 2, 60), agent.log()
    birth = next(m for m in col.json("status") if m.get("state") == "online")
    assert birth["device_id"] == unique_id and birth["agent_version"]
    assert birth["model"]["name"] == "digits" and birth["model"]["version"] == "1.0.0"
    assert len(birth["model"]["sha256"]) == 64
    for key in ENVELOPE:
        assert key in birth
    health = col.json("health")[-1]
    for key in ("cpu_temp_c", "throttled", "cpu_percent", "mem", "uptime_s", "fps_inferred", "latency_ms",
                "frames_dropped", "source", "outbox"):
        assert key in health, key  # absent readings are null, never left out
    assert health["fps_inferred"] > 0 and health["connected"] is True
    assert {k: health["outbox"][k] for k in CLEAN_OUTBOX} == CLEAN_OUTBOX
    assert (health["connects"], health["reconnects"], health["refused"], health["commands_rejected"]) == (1, 0, 0, 0)
    evts = col.json(EVT)
    seqs = [e["seq"] for e in evts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # A real model on real digits: two images of each class in label order, looping.
    labels = [e["classes"][0]["label"] for e in evts]
    assert set(labels) <= {str(d) for d in range(10)} and len(set(labels)) >= 8, labels
    assert all(e["model_sha256"] == birth["model"]["sha256"] and not e["replayed"] for e in evts)

    # The broker learnt the keepalive that bounds how late it notices the dead agent (no stopwatch:
    # a loaded machine delays the will, a wrong keepalive does not pass this).
    assert connected_with(mqtt_broker.log.read_text(), unique_id, "5", KEEPALIVE), mqtt_broker.log.read_text()[-2000:]
    agent.kill9()
    assert col.wait(lambda: bool(_offline(col)), HANG), mqtt_broker.log.read_text()[-2000:]
    will = _offline(col)[0]
    assert will["seq"] is None  # the will carries no seq, so consumers count no gap for it
    assert will["device_id"] == unique_id and will["model"]["name"] == "digits"


def test_clean_stop_publishes_offline_and_flushes(mqtt_broker, collector_factory, unique_id, start_agent,
                                                  tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#")
    state = tmp_path / "state"
    agent = start_agent(mqtt_broker, unique_id, state)
    assert col.wait(lambda: len(col.json(EVT)) >= 2 * FPS, 60), agent.log()
    assert agent.terminate() == 0, agent.log()
    assert col.wait(lambda: bool(_offline(col, with_seq=True)), HANG), agent.log()
    assert not _offline(col, with_seq=False), "a clean stop, not the will"
    offline = _offline(col, with_seq=True)[-1]
    seqs = _assert_no_seq_missing(col, offline["seq"])
    assert len(seqs) == len(set(seqs)), "no duplicates without an outage"
    published = agent.published()
    assert len(_seqs(col, EVT)) == published >= 2 * FPS  # every result the agent counted arrived
    assert outbox_rows(state) == [], "the outbox was flushed before the agent exited"


def test_agent_killed_with_queued_messages_replays_in_order(mqtt_broker_fn, collector_factory, unique_id,
                                                            start_agent, tmp_path: Path):
    state = tmp_path / "state"
    mqtt_broker_fn.kill()  # broker away: everything stays queued in the outbox
    first = start_agent(mqtt_broker_fn, unique_id, state)

    def queued_results() -> int:
        return sum(r["topic"].endswith(EVT) for r in outbox_rows(state))

    assert wait_until(lambda: queued_results() >= 60, HANG, step=0.25), first.log()
    assert first.alive
    first.kill9()
    queued = outbox_rows(state)
    assert sum(r["topic"].endswith(EVT) for r in queued) >= 60
    assert [r["seq"] for r in queued] == sorted(r["seq"] for r in queued)
    # Each queued health message reports the outbox as it was: with the broker away nothing left
    # it, so its depth lies between the rows before the previous health message and its own row.
    positions = [n for n, r in enumerate(queued) if r["topic"].endswith("/health")]
    assert positions, "no health message queued"
    for previous, position in zip([-1, *positions], positions, strict=False):
        outbox = queued[position]["payload"]["outbox"]
        assert previous < outbox["depth"] <= position, (previous, outbox, position)
        assert (outbox["inflight"], outbox["delivered"], queued[position]["payload"]["connected"]) == (0, 0, False)

    mqtt_broker_fn.start()
    col = collector_factory(_settings(mqtt_broker_fn), f"edge/v1/{unique_id}/#")
    second = start_agent(mqtt_broker_fn, unique_id, state)

    def durable() -> list[dict[str, Any]]:  # what went through the outbox, in arrival order
        return [m for m in _live(col) if m["_topic"].endswith((EVT, "/health"))]

    n = len(queued)
    assert col.wait(lambda: len(durable()) >= n + FPS, HANG), second.log()
    got = durable()
    replayed, fresh = got[:n], got[n:]
    # All of them, in order, marked replayed, before anything new.
    assert [(m["_topic"], m["seq"]) for m in replayed] == [(r["topic"], r["seq"]) for r in queued]
    assert all(m["replayed"] is True for m in replayed)
    assert all(m["replayed"] is False for m in fresh)
    fresh_seqs = [m["seq"] for m in fresh]
    assert fresh_seqs == sorted(fresh_seqs)
    assert min(fresh_seqs) > max(r["seq"] for r in queued)  # the persisted counter never reuses a seq
    all_seqs = [m["seq"] for m in got]
    assert len(all_seqs) == len(set(all_seqs)), "nothing delivered twice"
    assert second.alive


def test_broker_outage_at_20_per_s_loses_nothing(logging_broker, collector_factory, unique_id, start_agent,
                                                  tmp_path: Path):
    """kill -9 of the broker while the agent makes results: they wait in the outbox and all arrive
    once it is back. The outage lasts until the agent has queued ``OUTAGE_RESULTS`` new results
    (a count, not seconds)."""
    broker = logging_broker
    watcher = f"watch-{unique_id}"
    # Persistent sessions (broker persistence on), so subscribers miss nothing while the broker is away.
    col = collector_factory(_settings(broker), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=600)
    watch = fleet_cli_bg("watch", "--broker", broker.url, "--json", "--duration", "600", "--interval",
                         "1", "--client-id", watcher, "--session-expiry", "600", "--keepalive", "5")
    agent = None
    state = tmp_path / "state"
    try:
        # The watcher subscribed, then Mosquitto saved both sessions to disk (it handles one thing
        # at a time, so a save that ends after the subscription was logged includes it).
        assert wait_until(lambda: f"{watcher} 1 edge/v1/+/#" in broker.log.read_text(), HANG), (
            broker.log.read_text()[-3000:])
        stamp = _db_stamp(broker)
        assert wait_until(lambda: _db_stamp(broker) not in (None, stamp), HANG)
        agent = start_agent(broker, unique_id, state, keepalive=KEEPALIVE)
        assert col.wait(lambda: len(col.json(EVT)) >= 3 * FPS, HANG), agent.log()
        t_kill = time.time()
        broker.kill()

        def made_during_outage() -> list[dict[str, Any]]:
            return [r for r in outbox_rows(state)
                    if r["topic"].endswith(EVT) and r["payload"]["ts_ms"] >= t_kill * 1000]

        assert wait_until(lambda: len(made_during_outage()) >= OUTAGE_RESULTS, HANG, step=0.25), agent.log()
        queued_during = {r["seq"] for r in made_during_outage()}
        t_back = time.time()
        log_offset = len(broker.log.read_text())
        broker.start()
        assert agent.alive, agent.log()
        # The outbox is FIFO: once everything queued during the outage and a result made after the
        # restart have arrived, the backlog is through.
        assert col.wait(lambda: queued_during <= set(_seqs(col, EVT))
                        and any(m["ts_ms"] > t_back * 1000 for m in col.json(EVT)), HANG), agent.log()
        # edge-fleet's own reconnect backoff reaches 5 s: let it resume its session before the end.
        assert wait_until(lambda: broker.log.read_text().count(f"as {watcher} (") >= 2, HANG), (
            broker.log.read_text()[-3000:])
        assert agent.terminate() == 0, agent.log()
        assert col.wait(lambda: bool(_offline(col, with_seq=True)), HANG), agent.log()
        last = _offline(col, with_seq=True)[-1]["seq"]

        seqs = _assert_no_seq_missing(col, last)
        evts = _live(col, EVT)
        assert len({e["seq"] for e in evts}) == agent.published()  # every result arrived
        during = {e["seq"] for e in evts if t_kill * 1000 <= e["ts_ms"] <= t_back * 1000}
        assert len(during) >= OUTAGE_RESULTS and queued_during <= during, "the agent kept inferring meanwhile"
        births = [m for m in _live(col, "status") if m.get("state") == "online"]
        assert len(births) >= 2, "the birth is sent again after the reconnect"
        duplicates = len(seqs) - len(set(seqs))

        # The watcher has the final offline and acknowledged everything: then it may stop.
        assert wait_until(lambda: _has_everything(broker.log.read_text()[log_offset:], watcher, unique_id), HANG), (
            broker.log.read_text()[-3000:])
        watch.send_signal(signal.SIGINT)  # edge-fleet watch stops and prints its JSON report
        out, err = watch.communicate(timeout=HANG)
        report = {d["device_id"]: d for d in json.loads(out)["devices"]}[unique_id]
        assert report["gaps"] == 0 and report["missing_sample"] == [], (report, err[-2000:])
        # Every seq, each counted once; duplicates counted apart.
        assert report["messages"] - report["duplicates"] == last + 1, (
            report, err[-2000:], broker.log.read_text()[-3000:])
        assert report["state"] == "offline"
        print(f"broker outage: {len(during)} results during the outage, seq 0..{last}, collector duplicates "
              f"{duplicates}, edge-fleet duplicates {report['duplicates']} of {report['messages']} messages")
    finally:
        if agent is not None:
            agent.close()
        if watch.poll() is None:
            watch.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            watch.communicate(timeout=10)


def test_mqtt_311_on_request(mqtt_broker, collector_factory, unique_id, start_agent, tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=120)
    agent = start_agent(mqtt_broker, unique_id, tmp_path / "state", "--mqtt-protocol", "3.1.1",
                        keepalive=KEEPALIVE)
    assert col.wait(lambda: len(col.json(EVT)) >= FPS, HANG), agent.log()
    assert col.json("status")[0]["state"] == "online"
    # Mosquitto logs the protocol: p2 is MQTT 3.1.1 (p5 would be MQTT 5), and the keepalive.
    assert connected_with(mqtt_broker.log.read_text(), unique_id, "2", KEEPALIVE), mqtt_broker.log.read_text()[-2000:]
    agent.kill9()
    # MQTT 3.1.1 has no will delay: offline as soon as the broker notices the dead connection.
    assert col.wait(lambda: bool(_offline(col)), HANG)
    assert _offline(col)[0]["seq"] is None
