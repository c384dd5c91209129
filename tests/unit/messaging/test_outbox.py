"""Outbox logic: order, ack-only deletion, bounds, eviction order, replay marking, crash survival."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.messaging import outbox as outbox_module
from edge_agent.messaging.outbox import Kind, Outbox, OutboxRow
from edge_agent.messaging.outbox_table import companion_files
from edge_agent.util.statefiles import set_aside_counts
from tests.fixtures_disk import fill


def _msg(n: int, size: int = 0) -> bytes:
    return json.dumps({"seq": n, "replayed": False, "pad": "x" * size}).encode()


def _stored_seqs(path: Path) -> list[int]:
    """The rows really in the database file, read through a connection of its own (not the outbox's
    counters or in-flight set), oldest first."""
    assert path.exists(), f"no outbox database at {path}"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()
    return [json.loads(bytes(payload))["seq"] for (payload,) in rows]


def test_fifo_and_delete_only_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for n in range(5):
        assert box.put("t/evt/x", _msg(n), "result")
    first = box.take(3)
    assert [json.loads(r.payload)["seq"] for r in first] == [0, 1, 2]
    # In-flight rows are not handed out twice.
    assert [json.loads(r.payload)["seq"] for r in box.take(10)] == [3, 4]
    assert box.depth == 5
    box.ack([first[0].id, first[1].id])
    assert box.depth == 3
    box.release_all()
    assert [json.loads(r.payload)["seq"] for r in box.take(10)] == [2, 3, 4]
    box.close()


def test_nack_retries_later_then_drops_after_max_attempts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.0)
    box = Outbox(tmp_path / "o.db", max_attempts=3)
    box.put("t/evt/x", _msg(1), "result")
    for attempt in range(3):
        rows = box.take(1)
        assert len(rows) == 1, attempt
        box.nack(rows[0].id, "0x97 quota exceeded")
    assert box.depth == 0
    assert box.counters.undeliverable == 1
    assert box.counters.broker_failures == 3


def test_nack_delays_retry(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put("t/evt/x", _msg(1), "result")
    box.put("t/evt/x", _msg(2), "result")
    row = box.take(1)[0]
    box.nack(row.id, "0x80")
    # The refused row waits; the next one still goes.
    assert [json.loads(r.payload)["seq"] for r in box.take(5)] == [2]


def test_size_cap_refused_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_message_bytes=1000)
    assert not box.put("t/evt/x", _msg(1, 2000), "result")
    assert box.depth == 0
    assert box.stats()["refused_oversize"] == 1


def test_evicts_health_before_results(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    for n in range(10):
        box.put("t/evt/x", _msg(n, 600), "result")
        box.put("t/health", _msg(100 + n, 600), "health")
    stats = box.stats()
    assert stats["bytes"] <= 10_000
    assert stats["evicted_health"] > 0
    assert stats["evicted_results"] == 0
    # Keep going: once health is gone, the oldest results go.
    for n in range(10, 30):
        box.put("t/evt/x", _msg(n, 400), "result")
    stats = box.stats()
    assert stats["evicted_results"] > 0
    assert stats["bytes"] <= 10_000
    seqs = [json.loads(r.payload)["seq"] for r in box.take(100)]
    assert seqs == sorted(seqs) and seqs[-1] == 29  # newest kept, still in order
    assert stats["evicted"] == stats["evicted_health"] + stats["evicted_results"]


@pytest.mark.parametrize("kind", ["result", "health"])
def test_inflight_rows_are_not_evicted(tmp_path: Path, kind: Kind) -> None:
    """Guards the in-flight check in ``_evict_for``: without it the row the sender holds is evicted
    while the broker has it, and its PUBACK then deletes nothing (or double-counts the depth)."""
    path = tmp_path / "o.db"
    box = Outbox(path, max_bytes=3000)
    box.put(f"t/{kind}", _msg(0, 900), kind)
    inflight = box.take(1)
    assert [json.loads(r.payload)["seq"] for r in inflight] == [0]
    for n in range(1, 10):
        assert box.put("t/evt/x", _msg(n, 900), "result")  # each one forces an eviction
    stats = box.stats()
    assert stats["evicted_health"] + stats["evicted_results"] == 7
    # The in-flight row is still in the file, oldest first; the evicted ones are the next-oldest.
    assert _stored_seqs(path) == [0, 8, 9]
    assert box.depth == 3 and stats["bytes"] == sum(len(_msg(n, 900)) for n in (0, 8, 9))
    box.ack([inflight[0].id])
    assert _stored_seqs(path) == [8, 9]
    assert box.counters.delivered == 1 and box.depth == 2
    assert [json.loads(r.payload)["seq"] for r in box.take(10)] == [8, 9]
    box.close()


def test_eviction_spares_every_inflight_row_even_when_that_leaves_no_room(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_bytes=3000)
    for n in range(3):
        box.put("t/evt/x", _msg(n, 900), "result")
    taken = box.take(3)  # everything queued is in flight
    assert box.put("t/evt/x", _msg(3, 900), "result")  # a result is kept even over the bound
    assert box.stats()["evicted_results"] == 0
    assert _stored_seqs(path) == [0, 1, 2, 3]
    assert not box.put("t/health", _msg(100, 900), "health")  # health does not fit: dropped, counted
    assert box.stats()["evicted_health"] == 1
    box.ack([r.id for r in taken])
    assert box.counters.delivered == 3
    assert _stored_seqs(path) == [3] and box.depth == 1
    box.close()


def test_ack_counts_only_rows_really_deleted(tmp_path: Path) -> None:
    """An ack for a row that is gone (dropped as oversize meanwhile) or never taken counts nothing."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(3):
        box.put("t/evt/x", _msg(n), "result")
    rows = box.take(2)
    box.drop_oversize(rows[1].id, 10)
    box.ack([r.id for r in rows] + [999])
    assert box.counters.delivered == 1
    assert _stored_seqs(path) == [2] and box.depth == 1 and box.stats()["bytes"] == len(_msg(2))
    box.close()


def test_age_bound(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_age_s=60)
    box.put("t/evt/x", _msg(1), "result")
    box.put("t/health", _msg(2), "health")
    assert box.expire(now=time.time() + 30) == 0
    assert _stored_seqs(path) == [1, 2]
    assert box.expire(now=time.time() + 120) == 2
    assert box.depth == 0 and _stored_seqs(path) == []
    assert box.stats()["evicted_age"] == 2


def test_expiry_spares_inflight_rows_and_their_ack_deletes_them(tmp_path: Path) -> None:
    """Guards the in-flight check in ``expire``: without it a row the broker is about to
    acknowledge is evicted under the sender, so ``evicted_age`` and ``delivered`` count it twice."""
    path = tmp_path / "o.db"
    box = Outbox(path, max_age_s=60)
    for n in range(4):
        box.put("t/evt/x" if n % 2 else "t/health", _msg(n), "result" if n % 2 else "health")
    taken = box.take(2)  # seq 0 (health) and 1 (result) in flight
    assert box.expire(now=time.time() + 120) == 2
    assert box.stats()["evicted_age"] == 2
    assert _stored_seqs(path) == [0, 1] and box.depth == 2
    box.ack([r.id for r in taken])
    assert box.counters.delivered == 2
    assert _stored_seqs(path) == [] and box.depth == 0 and box.stats()["bytes"] == 0
    # A released in-flight row is old like the others: the next expiry takes it.
    box.put("t/evt/x", _msg(4), "result")
    box.take(1)
    box.release_all()
    assert box.expire(now=time.time() + 120) == 1 and _stored_seqs(path) == []
    box.close()


def test_reopen_marks_replayed_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(4):
        box.put("t/evt/x", _msg(n), "result")
    box.ack([box.take(1)[0].id])
    box.close()
    again = Outbox(path)
    rows = again.take(10)
    assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2, 3]
    assert all(r.replayed and json.loads(r.payload)["replayed"] is True for r in rows)
    again.put("t/evt/x", _msg(4), "result")
    fresh = again.take(10)
    assert [json.loads(r.payload)["replayed"] for r in fresh] == [False]
    assert again.stats()["replayed"] == 3


_WRITER = """
import json, os, signal, sys
from pathlib import Path
from edge_agent.messaging.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
for n in range(500):
    box.put("t/evt/x", json.dumps({"seq": n, "replayed": False}).encode(), "result")
box.ack([r.id for r in box.take(100)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(path)], check=False, timeout=60)
    assert proc.returncode == -9
    box = Outbox(path)
    seqs = [json.loads(r.payload)["seq"] for r in box.take(1000)]
    assert seqs == list(range(100, 500))


def test_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    assert not box.put("t/evt/x", _msg(1), "result")
    assert box.stats()["write_errors"] == 1


def test_health_never_evicts_results(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=5_000)
    for n in range(7):
        assert box.put("t/evt/x", _msg(n, 600), "result")
    results_before = box.stats()["bytes"]
    # No health queued: a new health row finds no room and is itself dropped, counted.
    assert not box.put("t/health", _msg(100, 600), "health")
    stats = box.stats()
    assert stats["evicted_results"] == 0 and stats["evicted_health"] == 1
    assert stats["bytes"] == results_before and box.depth == 7
    assert [json.loads(r.payload)["seq"] for r in box.take(100)] == list(range(7))
    box.close()


def test_health_evicts_only_older_health(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=5_000)
    for n in range(6):
        assert box.put("t/evt/x", _msg(n, 600), "result")
    assert box.put("t/health", _msg(100, 600), "health")
    # The next health row replaces the older one; results stay.
    assert box.put("t/health", _msg(101, 600), "health")
    stats = box.stats()
    assert stats["evicted_health"] == 1 and stats["evicted_results"] == 0
    assert [json.loads(r.payload)["seq"] for r in box.take(100)] == [0, 1, 2, 3, 4, 5, 101]
    box.close()


def test_results_evict_health_first_then_oldest_results(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=4_000)
    for n in range(5):
        assert box.put("t/evt/x", _msg(n, 600), "result")
    assert box.put("t/health", _msg(100, 600), "health")
    assert box.put("t/evt/x", _msg(5, 600), "result")  # evicts the health row
    stats = box.stats()
    assert (stats["evicted_health"], stats["evicted_results"]) == (1, 0)
    assert box.put("t/evt/x", _msg(6, 600), "result")  # no health left: the oldest result
    stats = box.stats()
    assert (stats["evicted_health"], stats["evicted_results"]) == (1, 1)
    assert [json.loads(r.payload)["seq"] for r in box.take(100)] == [1, 2, 3, 4, 5, 6]
    box.close()


def test_drop_oversize_row_counts_and_keeps_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for n in range(3):
        box.put("t/evt/x", _msg(n), "result")
    first = box.take(1)[0]
    box.drop_oversize(first.id, 100)
    box.refuse_oversize("t/evt/x", 10_000, 100)
    assert box.stats()["refused_oversize"] == 2 and box.depth == 2
    assert [json.loads(r.payload)["seq"] for r in box.take(10)] == [1, 2]
    box.close()


def test_refused_row_does_not_block_the_others(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.0)
    box = Outbox(tmp_path / "o.db", max_attempts=3)
    for n in range(4):
        box.put("t/evt/x", _msg(n), "result")
    delivered: list[int] = []
    for _ in range(10):
        for row in box.take(10):
            seq = json.loads(row.payload)["seq"]
            if seq == 1:
                box.nack(row.id, "0x97 quota exceeded")  # the broker always refuses this one
            else:
                delivered.append(seq)
                box.ack([row.id])
        if box.depth == 0:
            break
    assert box.depth == 0 and box.counters.undeliverable == 1
    assert delivered == [0, 2, 3]


# ---- a full disk and a damaged database (tmpfs, root only) ------------------------------------------


def _seqs(rows: list[OutboxRow]) -> list[int]:
    return [json.loads(r.payload)["seq"] for r in rows]


def test_full_disk_drops_by_reason_or_sends_live_and_writes_resume_when_space_is_freed(small_disk: Path) -> None:
    box = Outbox(small_disk / "o.db")
    for n in range(3):
        assert box.put("t/evt/x", _msg(n), "result")
    ballast = fill(small_disk)
    live: list[int] = []
    # Not stored: handed to ``live`` when it takes it, dropped (by reason) when it does not.
    assert not box.put("t/evt/x", _msg(3), "result", live=lambda: live.append(3) is None)
    assert not box.put("t/evt/x", _msg(4), "result", live=lambda: False)
    assert not box.put("t/health", _msg(5), "health")
    stats = box.stats()
    assert live == [3]
    assert stats["dropped"] == {"disk_full": 2, "io_error": 0, "corrupt": 0, "other": 0}
    assert (stats["sent_unstored"], stats["write_errors"], stats["depth"]) == (1, 3, 3)
    ballast.unlink()
    assert box.put("t/evt/x", _msg(6), "result")  # the next message tries the disk again
    assert _seqs(box.take(10)) == [0, 1, 2, 6]
    box.close()


def test_rows_acknowledged_on_a_full_disk_are_not_sent_again_and_deleted_later(small_disk: Path) -> None:
    path = small_disk / "o.db"
    box = Outbox(path)
    for n in range(30):
        assert box.put("t/evt/x", _msg(n), "result")
    ballast = fill(small_disk)
    box.ack([r.id for r in box.take(10)])  # the delete fails: the disk is full
    assert _stored_seqs(path)[:1] == [0]
    assert (box.depth, box.stats()["delivered"]) == (20, 10)
    box.release_all()  # e.g. a reconnect: nothing acknowledged comes again
    assert _seqs(box.take(5)) == [10, 11, 12, 13, 14]
    box.ack([r.id for r in box.take(100)][:3])  # 15, 16, 17: out of order
    box.release_all()
    rest = [*range(10, 15), *range(18, 30)]
    assert _seqs(box.take(100)) == rest
    ballast.unlink()
    box.expire()  # the sender calls it every few seconds: the acknowledged rows go now
    assert _stored_seqs(path) == rest
    assert box.depth == len(rest) == 17
    box.close()


def test_starts_on_a_full_disk_and_replays_what_an_earlier_run_queued(small_disk: Path) -> None:
    """Opening writes nothing: on a full disk with no room even for SQLite's ``-shm`` index the
    queued rows are read (with the index in memory) and go out marked as replayed."""
    path = small_disk / "o.db"
    first = Outbox(path)
    for n in range(5):
        assert first.put("t/evt/x", _msg(n), "result")
    first.close()
    for extra in companion_files(path):
        extra.unlink(missing_ok=True)
    fill(small_disk)
    again = Outbox(path)
    rows = again.take(10)
    assert _seqs(rows) == [0, 1, 2, 3, 4] and all(r.replayed for r in rows)
    assert not again.put("t/evt/x", _msg(5), "result")
    assert again.stats()["dropped"]["disk_full"] == 1
    again.close()


def test_no_database_on_a_full_disk_is_opened_once_space_is_freed(small_disk: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "REOPEN_EVERY_S", 0.0)
    ballast = fill(small_disk)
    box = Outbox(small_disk / "o.db")
    assert box.take(5) == [] and box.depth == 0
    assert not box.put("t/evt/x", _msg(0), "result")
    assert box.stats()["dropped"]["disk_full"] == 1
    ballast.unlink()
    assert box.put("t/evt/x", _msg(1), "result")
    assert _seqs(box.take(5)) == [1]
    box.close()


@pytest.mark.parametrize("garbage", [b"\x00garbage" * 1000, b"SQLite format 3\x00" + b"\xff" * 4080])
def test_a_damaged_database_is_set_aside_and_replaced(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(garbage)
    before = set_aside_counts().get("o.db", 0)
    box = Outbox(path)
    assert box.put("t/evt/x", _msg(1), "result")
    assert _seqs(box.take(5)) == [1]
    box.close()
    [aside] = tmp_path.glob("o.db.corrupt-*[0-9]Z")
    assert aside.read_bytes() == garbage
    assert set_aside_counts()["o.db"] == before + 1


def test_a_database_damaged_while_running_is_set_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(3):
        assert box.put("t/evt/x", _msg(n, 5000), "result")
    assert box.take(1)
    db = box._table.db  # type: ignore[union-attr]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as handle:  # what a power cut on an SD card may leave: pages of garbage
        handle.seek(4096)
        handle.write(b"\xde\xad" * (path.stat().st_size // 2))
    db.execute("PRAGMA shrink_memory")  # forget the cached pages: the next statement reads the file
    before = set_aside_counts().get("o.db", 0)
    assert not box.put("t/evt/x", _msg(3, 5000), "result")  # fails on the damage: set aside, counted
    assert box.stats()["dropped"]["corrupt"] == 1
    assert set_aside_counts()["o.db"] == before + 1
    assert box.put("t/evt/x", _msg(4), "result")  # an empty database took its place
    assert _seqs(box.take(5)) == [4]
    box.ack([1])  # an id in flight in the old file means nothing in the new one
    assert box.depth == 1
    box.close()
