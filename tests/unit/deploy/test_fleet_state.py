"""Fleet bookkeeping: staleness by the clock, the settle window, and the share-group merge of seq state."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.fleet import status_exit_code
from deploy.fleet_state import DEFAULT_HEALTH_INTERVAL_S, STALE_FACTOR, FleetState, SeqTracker, result_labels


def _msg(seq: int | None, session: str = "s1", boot: str = "b1", **body: Any) -> bytes:
    return json.dumps({"schema": "edge/v1", "device_id": "d1", "boot_id": boot, "session": session, "seq": seq,
                       "ts_ms": 1, "replayed": False, **body}).encode()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_stale_after_factor_times_the_interval_from_the_last_health() -> None:
    clock = Clock()
    fleet = FleetState(clock=clock)
    fleet.handle("edge/v1/d1/status", _msg(0, state="online", health_interval_s=2.0), retained=True)
    fleet.handle("edge/v1/d1/health", _msg(1, health_interval_s=2.0))
    view = fleet.devices["d1"]
    limit = STALE_FACTOR * 2.0
    assert view.state_at(clock.now + limit) == "online"
    assert view.state_at(clock.now + limit + 0.01) == "stale"
    clock.now += 3.0
    fleet.handle("edge/v1/d1/health", _msg(2, health_interval_s=2.0))  # health again: fresh
    assert view.state_at(clock.now + limit) == "online"
    fleet.handle("edge/v1/d1/status", _msg(3, state="offline"))
    assert view.state_at(clock.now + 10 * limit) == "offline"


def test_default_interval_and_clock_starts_when_seen_online() -> None:
    clock = Clock()
    fleet = FleetState(clock=clock)
    fleet.handle("edge/v1/d1/status", _msg(0, state="online"), retained=True)  # no interval, no health yet
    view = fleet.devices["d1"]
    assert view.interval_s == DEFAULT_HEALTH_INTERVAL_S
    assert view.state_at(clock.now + STALE_FACTOR * DEFAULT_HEALTH_INTERVAL_S) == "online"
    assert view.state_at(clock.now + STALE_FACTOR * DEFAULT_HEALTH_INTERVAL_S + 1) == "stale"
    assert not view.decided(clock.now, clock.now + 1)
    assert view.decided(clock.now, clock.now + STALE_FACTOR * DEFAULT_HEALTH_INTERVAL_S + 1)
    fleet.handle("edge/v1/d2/health", _msg(0))  # health but no status: unknown
    assert fleet.devices["d2"].state_at(clock.now) == "unknown"


def test_a_new_birth_restarts_the_health_clock() -> None:
    clock = Clock()
    fleet = FleetState(clock=clock)
    fleet.handle("edge/v1/d1/status", _msg(0, state="online", health_interval_s=1.0))
    fleet.handle("edge/v1/d1/health", _msg(1, health_interval_s=1.0))
    clock.now += 100
    fleet.handle("edge/v1/d1/status", _msg(0, session="s2", state="online", health_interval_s=1.0))
    assert fleet.devices["d1"].state_at(clock.now + 1) == "online"
    assert fleet.snapshot(clock.now + 3)[0]["state"] == "stale"


def test_status_exit_codes() -> None:
    rows = [{"device_id": "a", "state": "online"}, {"device_id": "b", "state": "unknown"}]
    assert status_exit_code(rows, []) == 0  # unknown devices seen are not judged
    assert status_exit_code(rows, ["a", "b"]) == 1  # an asked device must be online
    assert status_exit_code(rows[:1], ["a"]) == 0
    for bad in ("stale", "offline"):
        assert status_exit_code([*rows, {"device_id": "c", "state": bad}], []) == 1


def test_holes_become_gaps_only_after_the_settle_window() -> None:
    clock = Clock()
    fleet = FleetState(clock=clock, settle_s=10.0)
    for seq in (0, 1, 3, 4):
        fleet.handle("edge/v1/d1/health", _msg(seq))
    view = fleet.devices["d1"]
    assert (view.missing, view.gaps) == (1, 0)
    clock.now += 9.9
    fleet.settle()
    assert (view.missing, view.gaps) == (1, 0)
    clock.now += 0.1
    fleet.settle()
    assert (view.missing, view.gaps) == (0, 1)
    fleet.handle("edge/v1/d1/health", _msg(2))  # a late arrival: not a duplicate, the gap stays counted
    assert (view.gaps, view.duplicates, view.sessions[("b1", "s1")].late) == (1, 0, 1)
    fleet.handle("edge/v1/d1/health", _msg(2))
    assert view.duplicates == 1


def test_a_hole_filled_in_time_is_no_gap() -> None:
    t = SeqTracker()
    for seq in (0, 5):
        t.add(seq, 0.0)
    assert t.missing == 4 and t.missing_sample(2) == [1, 2]
    for seq in (1, 2, 3, 4):
        assert t.add(seq, 5.0)
    assert t.settle(100.0, 10.0) == 0 and t.gaps_total == 0 and t.distinct == 6


def _split(seqs: list[int], members: int) -> list[SeqTracker]:
    """Round robin, as the broker deals a device's messages among share-group members."""
    trackers = [SeqTracker() for _ in range(members)]
    for i, seq in enumerate(seqs):
        trackers[i % members].add(seq, 0.0)
        trackers[i % members].received_shared += 1
    return trackers


def _merge(into: SeqTracker, peer: SeqTracker, now: float) -> None:
    floor, highest, pending, lost, _ = peer.digest()
    into.merge(floor, highest, [tuple(r) for r in pending], [tuple(r) for r in lost], now)  # type: ignore[misc]


def test_round_robin_halves_merge_to_no_gaps() -> None:
    a, b = _split(list(range(100)), 2)
    assert a.missing == b.missing == 49  # alone, each sees every other seq missing
    _merge(a, b, 1.0)
    _merge(b, a, 1.0)
    for t in (a, b):
        assert t.missing == 0 and t.settle(1000.0, 10.0) == 0 and t.distinct == 100


def test_a_seq_nobody_saw_is_a_gap_at_every_member() -> None:
    seqs = [s for s in range(50) if s != 17]
    a, b, c = _split(seqs, 3)
    for x in (a, b, c):
        for y in (a, b, c):
            if x is not y:
                _merge(x, y, 1.0)
    assert [t.missing for t in (a, b, c)] == [1, 1, 1]
    assert [t.settle(20.0, 10.0) for t in (a, b, c)] == [1, 1, 1]
    assert [t.gaps_total for t in (a, b, c)] == [1, 1, 1]


def test_a_peer_declaration_is_adopted_and_merging_is_idempotent() -> None:
    a, b = SeqTracker(), SeqTracker()
    for seq in (0, 1, 2, 4):
        a.add(seq, 0.0)
    a.settle(20.0, 10.0)  # a declared 3 lost
    b.add(5, 15.0)
    _merge(b, a, 21.0)
    assert b.gaps_total == 1 and b.missing == 0 and b.distinct == 5
    _merge(b, a, 22.0)
    _merge(a, b, 22.0)
    assert (a.gaps_total, b.gaps_total) == (1, 1) and a.distinct == b.distinct == 5


def test_merge_extends_the_window_both_ways() -> None:
    a, b = SeqTracker(), SeqTracker()
    for seq in range(10, 20):
        a.add(seq, 0.0)
    for seq in (0, 1, 2, 30):
        b.add(seq, 0.0)
    _merge(a, b, 1.0)
    assert (a.floor, a.highest) == (0, 30)
    assert a.missing == (9 - 3 + 1) + (29 - 20 + 1)
    assert a.settle(10.9, 10.0) == 0 and a.settle(11.0, 10.0) == 17


def test_duplicates_across_members_are_received_minus_distinct() -> None:
    clock = Clock()
    a, b = FleetState(clock=clock), FleetState(clock=clock)
    for seq in range(10):
        a.handle("edge/v1/d1/health", _msg(seq))
    b.handle("edge/v1/d1/health", _msg(4))  # a resend the broker dealt to the other member
    b.handle("edge/v1/d1/health", _msg(10))
    assert a.devices["d1"].duplicates == 0 and b.devices["d1"].duplicates == 0
    a.merge("b", json.loads(json.dumps(b.digest())))
    b.merge("a", json.loads(json.dumps(a.digest())))
    for fleet in (a, b):
        view = fleet.devices["d1"]
        assert (view.duplicates, view.missing, view.gaps) == (1, 0, 0)
    # Digests again (nothing new): the count stays.
    a.merge("b", b.digest())
    assert a.devices["d1"].duplicates == 1


def test_status_seen_by_every_member_is_not_a_duplicate() -> None:
    clock = Clock()
    a, b = FleetState(clock=clock), FleetState(clock=clock)
    for fleet in (a, b):  # status is not shared: both members receive the birth
        fleet.handle("edge/v1/d1/status", _msg(0, state="online"))
    a.handle("edge/v1/d1/health", _msg(1))
    b.handle("edge/v1/d1/health", _msg(2))
    a.merge("b", b.digest())
    b.merge("a", a.digest())
    assert [f.devices["d1"].duplicates for f in (a, b)] == [0, 0]


def test_peer_health_keeps_a_device_fresh() -> None:
    clock = Clock()
    a, b = FleetState(clock=clock), FleetState(clock=clock)
    for fleet in (a, b):
        fleet.handle("edge/v1/d1/status", _msg(0, state="online", health_interval_s=1.0), retained=True)
    clock.now += 2.0
    b.handle("edge/v1/d1/health", _msg(1, health_interval_s=1.0))  # round robin gave it to b
    clock.now += 1.0
    assert a.devices["d1"].state_at(clock.now) == "stale"
    a.merge("b", b.digest())
    assert a.devices["d1"].state_at(clock.now) == "online"


@pytest.mark.parametrize("entry", [
    "x", {"d": 5, "s": []}, {"d": "a/b", "s": []}, {"d": "d1", "s": "x"},
    {"d": "d1", "s": [["b", "s", 5, 2, [], [], 0]]},  # floor above highest
    {"d": "d1", "s": [["b", "s", 0, 9, [[3, 20]], [], 0]]},  # a hole outside the window
    {"d": "d1", "s": [["b", "s", 0, 9, [], [], -1]]},
    {"d": "d1", "s": [["b", "s", True, 9, [], [], 0]]},
    {"d": "d1", "s": [["b", "s", 0, 9, [[1]], [], 0]]},
    {"d": "d1", "s": [["b", "s", 0, 9, [], [], 0]] * 9},  # more sessions than are kept
])
def test_bad_digest_entries_are_skipped(entry: Any) -> None:
    fleet = FleetState()
    assert fleet.merge("p", [entry, {"d": "ok", "s": [["b", "s", 0, 3, [], [], 4]], "h": 5000, "i": 2.0}]) == 1
    assert sorted(fleet.devices) == ["ok"]
    assert fleet.devices["ok"].last_health == 5.0 and fleet.devices["ok"].health_interval_s == 2.0


def test_health_figures_and_result_labels() -> None:
    fleet = FleetState()
    fleet.handle("edge/v1/d1/health", _msg(0, cpu_percent=250.0, mem={"rss_bytes": 7}, reconnects=2,
                                           throttled={"undervoltage": False, "throttled_occurred": True},
                                           outbox={"depth": 1, "evicted": 3}, latency_ms={"invoke": {"p95": 4.0}}))
    view = fleet.devices["d1"]
    assert (view.cpu_ratio, view.rss_bytes, view.reconnects, view.throttled) == (1.0, 7, 2, False)
    assert (view.outbox_depth, view.outbox_evicted, view.inference_p95_ms) == (1, 3, 4.0)
    assert result_labels("evt/classification", {"classes": [{"label": "cat"}, {"label": "dog"}]}) == ["cat"]
    assert result_labels("evt/audio", {"classes": [{"label": "yes"}, {"label": "no"}]}) == ["yes", "no"]
    assert result_labels("evt/detection", {"detections": [{"label": "car"}, {"label": "car"}]}) == ["car", "car"]
    assert result_labels("evt/audio", {"label": "go", "classes": [{"label": "go"}]}) == ["go"]
    fleet.handle("edge/v1/d1/evt/detection", _msg(1, detections=[{"label": "car"}, {"label": "bus"}]))
    fleet.handle("edge/v1/d1/evt/snapshot", _msg(2, label="not-a-result"))
    assert view.results == {"car": 1, "bus": 1}
    assert fleet.kind_counts["evt"] == 2 and fleet.kind_counts["health"] == 1


def test_simulated_health_is_an_enveloped_health_record(tmp_path: Any) -> None:
    from deploy.simulate import _dynamic_health, _encode, _static_health, health_body
    from edge_agent.agent.health import HealthRecord
    from edge_agent.messaging.envelope import EnvelopeFactory

    env = EnvelopeFactory("sim-1", tmp_path)
    static = json.dumps(_static_health(3, 0.5))
    first, second = (json.loads(_encode(env, _dynamic_health(3, tick, 0.5), static)) for tick in (1, 2))
    assert (first["seq"], second["seq"]) == (0, 1) and first["device_id"] == "sim-1"
    assert set(first) - {"schema", "device_id", "boot_id", "session", "seq", "ts_ms", "replayed"} == set(
        health_body(3, 1, 0.5))
    record = HealthRecord.from_json(second)
    assert record.fps_inferred == 13.0 and record.p95_ms("invoke") == 7.5 and record.outbox_depth == 0
    fleet = FleetState()
    fleet.handle("edge/v1/sim-1/health", json.dumps(second).encode())
    assert fleet.devices["sim-1"].health_interval_s == 0.5


def test_duplicate_device_id_from_birth_and_health() -> None:
    """A birth or a health that says ``duplicate_device_id`` sets it; a later clean one clears it
    (an older birth's flag must not stick, and a health without the key leaves it as it was)."""
    fleet = FleetState()
    fleet.handle("edge/v1/d1/status", _msg(0, state="online", duplicate_device_id=True), retained=True)
    view = fleet.devices["d1"]
    assert view.duplicate_id is True and view.summary(0.0)["duplicate_device_id"] is True
    fleet.handle("edge/v1/d1/health", _msg(1, fps_inferred=1.0))
    assert view.duplicate_id is True
    fleet.handle("edge/v1/d1/health", _msg(2, duplicate_device_id=False))
    assert view.duplicate_id is False
    fleet.handle("edge/v1/d1/health", _msg(3, duplicate_device_id=True))
    assert view.duplicate_id is True
    fleet.handle("edge/v1/d1/status", _msg(4, state="online"))
    assert view.duplicate_id is False
