"""The real ``edge-agent run --broker`` against a real Mosquitto: birth, will, outages, crash replay.

Every agent here runs the real int8 digits bundle on a looping folder of real digit
images, paced with ``--fps 20 --events every``: about 20 results per second, each
through the durable outbox. Only 127.0.0.1 traffic; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.broker import Mosquitto
from edge_agent.mqtt import MqttSettings
from tests.fixtures_mqtt import FPS, Collector
from tests.integration.mqtt_helpers import fleet_cli_bg, outbox_rows, wait_until

pytestmark = pytest.mark.integration

KEEPALIVE = 5  # the agent's configuration allows 5 s at least
WILL_DELAY = 1
EVT = "evt/classification"
ENVELOPE = ("schema", "device_id", "boot_id", "session", "seq", "ts_ms", "replayed")


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
    assert health["fps_inferred"] > 0 and health["connected"] is True and health["outbox"]["depth"] >= 0
    evts = col.json(EVT)
    seqs = [e["seq"] for e in evts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # A real model on real digits: two images of each class in label order, looping.
    labels = [e["classes"][0]["label"] for e in evts]
    assert set(labels) <= {str(d) for d in range(10)} and len(set(labels)) >= 8, labels
    assert all(e["model_sha256"] == birth["model"]["sha256"] and not e["replayed"] for e in evts)

    killed = time.monotonic()
    agent.kill9()
    limit = 1.5 * KEEPALIVE + WILL_DELAY
    assert col.wait(lambda: bool(_offline(col)), limit + 2), mqtt_broker.log.read_text()[-2000:]
    elapsed = time.monotonic() - killed
    assert elapsed <= limit, f"offline after {elapsed:.2f} s, limit {limit} s"
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
    assert col.wait(lambda: bool(_offline(col, with_seq=True)), 5), agent.log()
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

    assert wait_until(lambda: queued_results() >= 60, 60, step=0.25), first.log()
    assert first.alive
    first.kill9()
    queued = outbox_rows(state)
    assert sum(r["topic"].endswith(EVT) for r in queued) >= 60
    assert [r["seq"] for r in queued] == sorted(r["seq"] for r in queued)

    mqtt_broker_fn.start()
    col = collector_factory(_settings(mqtt_broker_fn), f"edge/v1/{unique_id}/#")
    second = start_agent(mqtt_broker_fn, unique_id, state)

    def durable() -> list[dict[str, Any]]:  # what went through the outbox, in arrival order
        return [m for m in _live(col) if m["_topic"].endswith((EVT, "/health"))]

    n = len(queued)
    assert col.wait(lambda: len(durable()) >= n + FPS, 60), second.log()
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


def test_broker_killed_10s_at_20_per_s_loses_nothing(mqtt_broker_fn, collector_factory, unique_id, start_agent,
                                                      tmp_path: Path):
    # Persistent sessions (broker persistence on), so subscribers miss nothing while the broker is away.
    col = collector_factory(_settings(mqtt_broker_fn), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=600)
    watch = fleet_cli_bg("watch", "--broker", mqtt_broker_fn.url, "--json", "--duration", "150", "--interval",
                         "1", "--client-id", f"watch-{unique_id}", "--session-expiry", "600", "--keepalive", "5")
    agent = None
    try:
        time.sleep(2.5)  # the watcher subscribed and both sessions autosaved
        agent = start_agent(mqtt_broker_fn, unique_id, tmp_path / "state", keepalive=KEEPALIVE)
        assert col.wait(lambda: len(col.json(EVT)) >= 3 * FPS, 60), agent.log()
        t_kill = time.time()
        mqtt_broker_fn.kill()
        time.sleep(10)
        t_back = time.time()
        mqtt_broker_fn.start()
        assert agent.alive, agent.log()
        # The outbox is FIFO: a result made 3 s after the restart arrives only after the whole backlog.
        caught_up = (t_back + 3) * 1000
        assert col.wait(lambda: any(m["ts_ms"] > caught_up for m in col.json(EVT)), 60), agent.log()
        # edge-fleet's own reconnect backoff reaches 5 s: let it resume its session before the end.
        assert wait_until(lambda: mqtt_broker_fn.log.read_text().count(f"as watch-{unique_id} (") >= 2, 30), (
            mqtt_broker_fn.log.read_text()[-3000:])
        assert agent.terminate() == 0, agent.log()
        assert col.wait(lambda: bool(_offline(col, with_seq=True)), 10), agent.log()
        last = _offline(col, with_seq=True)[-1]["seq"]

        seqs = _assert_no_seq_missing(col, last)
        evts = _live(col, EVT)
        assert len({e["seq"] for e in evts}) == agent.published()  # every result arrived
        during = [e for e in evts if t_kill * 1000 <= e["ts_ms"] <= t_back * 1000]
        assert len({e["seq"] for e in during}) >= 180, "the agent kept inferring while the broker was down"
        births = [m for m in _live(col, "status") if m.get("state") == "online"]
        assert len(births) >= 2, "the birth is sent again after the reconnect"
        duplicates = len(seqs) - len(set(seqs))

        time.sleep(1)
        watch.send_signal(signal.SIGINT)  # edge-fleet watch stops and prints its JSON report
        out, err = watch.communicate(timeout=30)
        report = {d["device_id"]: d for d in json.loads(out)["devices"]}[unique_id]
        assert report["gaps"] == 0 and report["missing_sample"] == [], (report, err[-2000:])
        # Every seq, each counted once; duplicates counted apart.
        assert report["messages"] - report["duplicates"] == last + 1, (
            report, err[-2000:], mqtt_broker_fn.log.read_text()[-3000:])
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
    assert col.wait(lambda: len(col.json(EVT)) >= FPS, 60), agent.log()
    assert col.json("status")[0]["state"] == "online"
    # Mosquitto logs the protocol: p2 is MQTT 3.1.1 (p5 would be MQTT 5).
    assert f"as {unique_id} (p2," in mqtt_broker.log.read_text()
    agent.kill9()
    # MQTT 3.1.1 has no will delay: offline as soon as the broker notices the dead connection.
    assert col.wait(lambda: bool(_offline(col)), 1.5 * KEEPALIVE + 1)
    assert _offline(col)[0]["seq"] is None
