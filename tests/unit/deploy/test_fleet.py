"""edge-fleet bookkeeping: per-device state, gaps and duplicates from seq."""

from __future__ import annotations

import json
from typing import Any

from deploy.fleet import render_table
from deploy.fleet_state import FleetState, SeqTracker


def _msg(seq: int | None, session: str = "s1", boot: str = "b1", **body: Any) -> bytes:
    return json.dumps({"schema": "edge/v1", "device_id": "d1", "boot_id": boot, "session": session, "seq": seq,
                       "ts_ms": 1, "replayed": False, **body}).encode()


def test_seq_tracker_missing_and_late_arrivals() -> None:
    t = SeqTracker()
    for seq in (5, 6, 8, 9):
        assert t.add(seq, 0.0)
    assert t.missing == 1 and t.missing_sample() == [7]
    assert t.add(7, 1.0) and t.missing == 0
    assert not t.add(7, 1.0)
    assert t.add(3, 2.0)  # older than the first one seen: 4 goes missing
    assert t.missing == 1 and t.missing_sample() == [4] and t.gaps_total == 0
    assert t.distinct == 6


def test_duplicates_and_gaps_per_device() -> None:
    fleet = FleetState()
    for seq in (0, 1, 2, 2, 4, 1):
        fleet.handle("edge/v1/d1/evt/classification", _msg(seq))
    row = fleet.snapshot()[0]
    assert (row["messages"], row["duplicates"], row["gaps"]) == (6, 2, 1)


def test_reply_copies_of_acks_are_not_duplicates() -> None:
    fleet = FleetState()
    for seq in (0, 1):
        fleet.handle("edge/v1/d1/ack", _msg(seq, id=f"c{seq}", status="succeeded"))
        # The same ack, also sent to the operator's response topic under the device's tree.
        fleet.handle(f"edge/v1/d1/reply/op-{seq}", _msg(seq, id=f"c{seq}", status="succeeded"))
    row = fleet.snapshot()[0]
    assert (row["messages"], row["duplicates"], row["gaps"]) == (2, 0, 0)


def test_new_session_jump_is_not_a_gap() -> None:
    fleet = FleetState()
    for seq in (10, 11, 12):
        fleet.handle("edge/v1/d1/evt/x", _msg(seq, session="a"))
    # After a crash the counter resumes above its reserved block: a jump, not a loss.
    for seq in (1000, 1001):
        fleet.handle("edge/v1/d1/evt/x", _msg(seq, session="b"))
    assert fleet.snapshot()[0]["gaps"] == 0


def test_status_health_and_retained() -> None:
    fleet = FleetState()
    fleet.handle("edge/v1/d1/status", _msg(3, state="online", agent_version="0.1",
                                            model={"name": "digits", "version": "2", "sha256": "ab"}), retained=True)
    fleet.handle("edge/v1/d1/health", _msg(4, fps_inferred=14.5, cpu_temp_c=51.0,
                                            latency_ms={"invoke": {"p95": 7.5}}, outbox={"depth": 3}))
    fleet.handle("edge/v1/d1/status", _msg(None, state="offline"))  # the will: no seq
    fleet.handle("edge/v1/d1/cmd/ping", b"{}")  # operator traffic is ignored
    fleet.handle("edge/v1/d1/evt/x", b"\xff not json")
    row = fleet.snapshot()[0]
    assert row["state"] == "offline" and row["model"] == "digits@2"
    assert (row["fps"], row["cpu_temp_c"], row["p95_ms"], row["outbox_depth"]) == (14.5, 51.0, 7.5, 3)
    assert row["messages"] == 1 and row["gaps"] == 0  # retained and seq-less messages are not counted
    table = render_table(fleet.snapshot())
    assert "d1" in table and "offline" in table
