"""The MQTT publisher in a real process against a real Mosquitto: birth, will, outages, crash replay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deploy.broker import Mosquitto
from edge_agent.mqtt import MqttSettings
from tests.integration.mqtt_helpers import Driver, fleet_cli_bg

pytestmark = pytest.mark.integration

KEEPALIVE = 2
WILL_DELAY = 1


def _settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(broker=broker.url, keepalive=5, reconnect_max_s=1)


def _seqs(col, suffix: str = "evt/classification") -> list[int]:
    return [m["seq"] for m in col.json(suffix)]


def test_birth_health_events_and_will_after_kill9(mqtt_broker, collector_factory, unique_id, tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=120)
    driver = Driver(mqtt_broker.url, unique_id, tmp_path / "state", "--keepalive", str(KEEPALIVE),
                    "--will-delay", str(WILL_DELAY), "--health-every", "5", rate=20)
    try:
        assert col.wait(lambda: len(col.json("evt/classification")) >= 10 and col.json("health"), 15), driver.log()
        birth = col.json("status")[0]
        assert birth["state"] == "online" and birth["device_id"] == unique_id
        assert birth["model"]["name"] == "digits" and birth["agent_version"]
        for key in ("schema", "boot_id", "session", "seq", "ts_ms", "replayed"):
            assert key in birth
        health = col.json("health")[0]
        assert health["cpu_temp_c"] == 48.5 and "outbox" in health
        assert _seqs(col) == sorted(_seqs(col))
        killed = time.monotonic()
        driver.kill9()
        limit = 1.5 * KEEPALIVE + WILL_DELAY
        assert col.wait(lambda: any(m.get("state") == "offline" for m in col.json("status")), limit + 2)
        elapsed = time.monotonic() - killed
        assert elapsed <= limit, f"offline after {elapsed:.2f} s, limit {limit} s"
        will = next(m for m in col.json("status") if m.get("state") == "offline")
        assert will["seq"] is None  # the will carries no seq, so consumers count no gap for it
    finally:
        driver.close()


def test_clean_stop_publishes_offline_and_flushes(mqtt_broker, collector_factory, unique_id, tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#")
    driver = Driver(mqtt_broker.url, unique_id, tmp_path / "state", "--then-wait", rate=100, count=200)
    try:
        driver.wait_for("done")
        assert driver.terminate() == 0
        assert col.wait(lambda: any(m.get("state") == "offline" for m in col.json("status")), 5)
        offline = [m for m in col.json("status") if m.get("state") == "offline"][-1]
        assert isinstance(offline["seq"], int)  # a clean stop, not the will
        assert sorted(_seqs(col)) == driver.seqs
        stats = driver.wait_for("stopped")["stats"]
        assert stats["outbox"]["depth"] == 0 and stats["outbox"]["delivered"] == 200
    finally:
        driver.close()


def test_agent_killed_with_queued_messages_replays_in_order(mqtt_broker_fn, collector_factory, unique_id,
                                                            tmp_path: Path):
    state = tmp_path / "state"
    mqtt_broker_fn.kill()  # broker away: everything stays queued in the outbox
    first = Driver(mqtt_broker_fn.url, unique_id, state, "--then-wait", rate=200, count=60)
    try:
        first.wait_for("done")
        time.sleep(0.2)
        first.kill9()
    finally:
        first.close()
    queued = list(first.seqs)
    assert len(queued) == 60
    mqtt_broker_fn.start()
    col = collector_factory(_settings(mqtt_broker_fn), f"edge/v1/{unique_id}/#")
    second = Driver(mqtt_broker_fn.url, unique_id, state, "--then-wait", rate=50, count=5)
    try:
        second.wait_for("done")
        assert col.wait(lambda: len(col.json("evt/classification")) >= 65, 20), second.log()
        got = col.json("evt/classification")
        replayed = [m for m in got if m["replayed"]]
        fresh = [m for m in got if not m["replayed"]]
        assert [m["seq"] for m in replayed] == queued  # all of them, in order
        assert [m["seq"] for m in fresh] == second.seqs
        assert min(second.seqs) > max(queued)  # the persisted counter never reuses a seq
        # Replays went out before the new results.
        assert [m["seq"] for m in got] == queued + second.seqs
    finally:
        second.close()


def test_broker_killed_10s_at_20_per_s_loses_nothing(mqtt_broker_fn, collector_factory, unique_id,
                                                      tmp_path: Path):
    settings = _settings(mqtt_broker_fn)
    # Persistent sessions (broker persistence on), so subscribers miss nothing while the broker is away.
    col = collector_factory(settings, f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=600)
    watch = fleet_cli_bg("watch", "--broker", mqtt_broker_fn.url, "--json", "--duration", "27", "--interval", "1",
                         "--client-id", f"watch-{unique_id}", "--session-expiry", "600", "--keepalive", "5")
    driver = None
    try:
        time.sleep(2.5)  # watcher subscribed and both sessions autosaved
        driver = Driver(mqtt_broker_fn.url, unique_id, tmp_path / "state", "--keepalive", str(KEEPALIVE),
                        rate=20, count=340)
        driver.wait_seqs(60)
        mqtt_broker_fn.kill()
        during = len(driver.seqs)
        time.sleep(10)
        assert len(driver.seqs) - during >= 180, "the agent kept producing while the broker was down"
        mqtt_broker_fn.start()
        driver.wait_for("done", timeout=30)
        ok = col.wait(lambda: set(_seqs(col)) >= set(driver.seqs), 20)
        if not ok:
            driver.terminate()
            stats = driver.wait_for("stopped")["stats"]
            raise AssertionError(f"missing seqs: {sorted(set(driver.seqs) - set(_seqs(col)))[:20]}; "
                                 f"agent stats {stats}; seen around the kill: {sorted(_seqs(col))[50:80]}")
        births = [m for m in col.json("status") if m.get("state") == "online"]
        assert len(births) >= 2, "the birth is sent again after the reconnect"
        out, _err = watch.communicate(timeout=40)
        report = {d["device_id"]: d for d in json.loads(out)["devices"]}[unique_id]
        received = _seqs(col)
        duplicates = len(received) - len(set(received))
        assert report["gaps"] == 0, report
        assert report["messages"] >= len(driver.seqs)
        assert report["duplicates"] >= 0 and report["messages"] - report["duplicates"] >= len(driver.seqs)
        print(f"broker outage: {len(driver.seqs)} results, collector duplicates {duplicates}, "
              f"edge-fleet report {report}")
    finally:
        if driver is not None:
            driver.close()
        if watch.poll() is None:
            watch.kill()
            watch.communicate()


def test_mqtt_311_on_request(mqtt_broker, collector_factory, unique_id, tmp_path: Path):
    col = collector_factory(_settings(mqtt_broker), f"edge/v1/{unique_id}/#", client_id=f"col-{unique_id}",
                            session_expiry_s=120)
    driver = Driver(mqtt_broker.url, unique_id, tmp_path / "state", "--protocol", "3.1.1", "--keepalive",
                    str(KEEPALIVE), "--then-wait", rate=50, count=20)
    try:
        driver.wait_for("done")
        assert col.wait(lambda: len(col.json("evt/classification")) == 20, 10), driver.log()
        assert col.json("status")[0]["state"] == "online"
        driver.kill9()
        # MQTT 3.1.1 has no will delay: offline as soon as the broker notices the dead connection.
        assert col.wait(lambda: any(m.get("state") == "offline" for m in col.json("status")), 1.5 * KEEPALIVE + 1)
    finally:
        driver.close()
