"""Outbox rules the mutation run (``make mutate``) found untested: exact bounds, counters that
accumulate, byte accounting after every kind of removal, settings and the health snapshot."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_agent.messaging.outbox import Outbox, _round

_STATS_KEYS = {"depth", "bytes", "inflight", "oldest_age_s", "evicted", "evicted_health", "evicted_results",
               "evicted_age", "refused_oversize", "undeliverable", "write_errors", "dropped", "sent_unstored",
               "delivered", "replayed"}


def _msg(n: int, size: int = 0) -> bytes:
    return json.dumps({"seq": n, "pad": "x" * size}).encode()


def _seqs(rows: list) -> list[int]:  # type: ignore[type-arg]
    return [json.loads(r.payload)["seq"] for r in rows]


def _stored_bytes(path: Path) -> int:
    """Sum of the payload sizes really in the file, read through a connection of its own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0])
    finally:
        db.close()


def test_payload_of_exactly_the_cap_is_accepted_and_refusals_accumulate(tmp_path: Path) -> None:
    cap = len(_msg(0, 100))
    box = Outbox(tmp_path / "o.db", max_message_bytes=cap)
    assert box.put("t/evt/x", _msg(0, 100), "result")
    assert not box.put("t/evt/x", _msg(1, 101), "result")
    assert not box.put("t/evt/x", _msg(2, 101), "result")
    assert box.stats()["refused_oversize"] == 2
    assert box.counters.enqueued == 1 and box.depth == 1
    box.close()


def test_enqueued_counts_every_accepted_message(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for n in range(3):
        box.put("t/evt/x", _msg(n), "result")
    assert box.counters.enqueued == 3
    box.close()


def test_filling_the_bound_exactly_evicts_nothing_and_one_over_evicts_one(tmp_path: Path) -> None:
    size = len(_msg(0, 200))
    path = tmp_path / "o.db"
    box = Outbox(path, max_bytes=3 * size)
    for n in range(3):
        assert box.put("t/evt/x", _msg(n, 200), "result")
    assert box.stats()["evicted"] == 0 and box.depth == 3
    assert box.put("t/evt/x", _msg(3, 200), "result")
    stats = box.stats()
    assert stats["evicted_results"] == 1 and box.depth == 3
    assert stats["bytes"] == 3 * size == _stored_bytes(path)
    assert box.put("t/evt/x", _msg(4, 200), "result")
    assert box.stats()["evicted_results"] == 2  # counted across puts, not just the last eviction
    assert _seqs(box.take(10)) == [2, 3, 4]
    box.close()


def test_one_big_result_evicts_several_small_ones_and_the_bytes_add_up(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    small = len(_msg(0, 100))
    box = Outbox(path, max_bytes=6 * small)
    for n in range(6):
        box.put("t/evt/x", _msg(n, 100), "result")
    big = _msg(99, 3 * small - 30)
    assert len(big) <= 3 * small
    assert box.put("t/evt/x", big, "result")
    stats = box.stats()
    assert stats["evicted_results"] == 3
    assert stats["bytes"] == _stored_bytes(path) == 3 * small + len(big)
    assert _seqs(box.take(10)) == [3, 4, 5, 99]
    box.close()


def test_health_that_fits_exactly_after_evicting_older_health_is_kept(tmp_path: Path) -> None:
    size = len(_msg(0, 300))
    box = Outbox(tmp_path / "o.db", max_bytes=2 * size)
    assert box.put("t/health", _msg(0, 300), "health")
    assert box.put("t/health", _msg(1, 300), "health")
    assert box.put("t/health", _msg(2, 300), "health")  # evicts #0, then fits exactly
    assert box.stats()["evicted_health"] == 1
    assert _seqs(box.take(10)) == [1, 2]
    box.close()


def test_dropped_new_health_messages_are_all_counted(tmp_path: Path) -> None:
    size = len(_msg(0, 300))
    box = Outbox(tmp_path / "o.db", max_bytes=2 * size)
    box.put("t/evt/x", _msg(0, 300), "result")
    box.put("t/evt/x", _msg(1, 300), "result")
    assert not box.put("t/health", _msg(2, 300), "health")
    assert not box.put("t/health", _msg(3, 300), "health")
    assert box.stats()["evicted_health"] == 2
    assert box.stats()["evicted_results"] == 0
    box.close()


def test_evicted_health_counts_accumulate(tmp_path: Path) -> None:
    size = len(_msg(0, 300))
    box = Outbox(tmp_path / "o.db", max_bytes=2 * size)
    box.put("t/health", _msg(0, 300), "health")
    box.put("t/health", _msg(1, 300), "health")
    box.put("t/evt/x", _msg(2, 300), "result")
    box.put("t/evt/x", _msg(3, 300), "result")
    assert box.stats()["evicted_health"] == 2
    box.close()


def test_take_zero_hands_out_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.0)
    box = Outbox(tmp_path / "o.db")
    box.put("t/evt/x", _msg(0), "result")
    assert box.take(0) == []
    assert box.take(-1) == []
    assert box.inflight == 0
    box.nack(box.take(1)[0].id, "0x80")  # a retry already due: even that row is not handed out by take(0)
    assert box.take(0) == []
    box.close()


def test_take_returns_topic_kind_and_never_more_than_the_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.0)
    box = Outbox(tmp_path / "o.db")
    box.put("t/evt/a", _msg(0), "result")
    box.put("t/health", _msg(1), "health")
    first = box.take(1)
    box.nack(first[0].id, "0x80")  # retry entry already due: the next take also reads it
    rows = box.take(1)
    assert len(rows) == 1
    assert (rows[0].topic, rows[0].kind) == ("t/evt/a", "result")
    second = box.take(5)
    assert [(r.topic, r.kind, r.replayed) for r in second] == [("t/health", "health", False)]
    box.close()


def test_ack_clears_in_flight_and_bytes_and_delivered_accumulates(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(4):
        box.put("t/evt/x", _msg(n, 50), "result")
    rows = box.take(4)
    box.ack([rows[0].id])
    box.ack([rows[1].id, rows[2].id])
    stats = box.stats()
    assert stats["delivered"] == 3
    assert stats["inflight"] == 1
    assert stats["bytes"] == _stored_bytes(path) == len(_msg(3, 50))
    box.close()


def test_ack_of_many_rows_at_once_deletes_them_all(tmp_path: Path) -> None:
    """Deletes go in chunks of SQL parameters; every chunk must be covered."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(1203):
        box.put("t/evt/x", _msg(n), "result")
    rows = box.take(1203)
    box.ack([r.id for r in rows])
    assert box.depth == 0 and box.stats()["bytes"] == 0 == _stored_bytes(path)
    assert box.take(10) == []
    box.close()


def test_nack_drops_after_the_default_ten_attempts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("edge_agent.messaging.outbox.RETRY_DELAY_S", 0.0)
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.put("t/evt/x", _msg(0, 50), "result")
    box.put("t/evt/x", _msg(1, 50), "result")
    for _ in range(9):
        box.nack(box.take(1)[0].id, "0x97")
    assert box.depth == 2 and box.stats()["undeliverable"] == 0
    box.nack(box.take(1)[0].id, "0x97")  # the tenth refusal
    assert box.depth == 1
    stats = box.stats()
    assert stats["undeliverable"] == 1 and stats["inflight"] == 0
    assert stats["bytes"] == _stored_bytes(path) == len(_msg(1, 50))
    for _ in range(10):
        box.nack(box.take(1)[0].id, "0x97")
    assert box.stats()["undeliverable"] == 2 and box.depth == 0 and box.stats()["bytes"] == 0
    box.close()


def test_drop_oversize_frees_the_row_and_counts_each_drop(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(3):
        box.put("t/evt/x", _msg(n, 80 + 10 * n), "result")  # three different sizes
    rows = box.take(3)
    box.drop_oversize(rows[0].id, 100)
    box.drop_oversize(rows[1].id, 100)
    stats = box.stats()
    assert stats["refused_oversize"] == 2
    assert stats["inflight"] == 1
    assert stats["bytes"] == _stored_bytes(path) == len(_msg(2, 100))
    box.drop_oversize(rows[0].id, 100)  # already gone: nothing changes
    assert box.stats()["refused_oversize"] == 2
    box.close()


def test_released_row_goes_out_again_without_an_attempt(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_attempts=1)
    box.put("t/evt/x", _msg(0), "result")
    row = box.take(1)[0]
    box.release(row.id)
    assert box.inflight == 0
    again = box.take(1)
    assert [r.id for r in again] == [row.id]
    assert box.stats()["undeliverable"] == 0 and box.depth == 1
    box.close()


def test_expire_by_the_clock_and_its_accounting(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_age_s=3600.0)
    for n in range(3):
        box.put("t/evt/x", _msg(n, 10), "result")
    assert box.expire() == 0  # nothing is an hour old yet (the real clock)
    held = box.take(1)
    later = time.time() + 3601.0
    assert box.expire(now=later) == 2  # the one in flight stays
    stats = box.stats()
    assert stats["evicted_age"] == 2 and stats["evicted"] == 2
    assert stats["bytes"] == _stored_bytes(path) == len(_msg(0, 10))
    box.release(held[0].id)
    box.put("t/evt/x", _msg(3, 10), "result")
    assert box.expire(now=later) == 2
    stats = box.stats()
    assert stats["evicted_age"] == 4 and stats["evicted"] == 4
    assert stats["bytes"] == 0 == _stored_bytes(path)
    box.close()


def test_evicted_is_the_sum_of_every_kind_of_eviction(tmp_path: Path) -> None:
    size = len(_msg(0, 100))
    box = Outbox(tmp_path / "o.db", max_bytes=2 * size, max_age_s=10.0)
    box.put("t/health", _msg(0, 100), "health")
    box.put("t/evt/x", _msg(1, 100), "result")
    box.put("t/evt/x", _msg(2, 100), "result")  # evicts the health row
    box.put("t/evt/x", _msg(3, 100), "result")  # evicts result 1
    assert box.expire(now=time.time() + 11.0) == 2
    stats = box.stats()
    assert (stats["evicted_health"], stats["evicted_results"], stats["evicted_age"]) == (1, 1, 2)
    assert stats["evicted"] == 4
    box.close()


def test_health_snapshot_has_every_counter_and_the_oldest_age(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert box.stats()["oldest_age_s"] is None and box.oldest_age_s() is None
    before = time.time()
    box.put("t/evt/x", _msg(0), "result")
    box.put("t/evt/x", _msg(1), "result")
    age = box.oldest_age_s()
    stats = box.stats()
    after = time.time()
    assert age is not None and 0.0 <= age <= after - before  # bounded by the clock, not by a guess
    assert set(stats) == _STATS_KEYS
    assert isinstance(stats["oldest_age_s"], float) and 0.0 <= stats["oldest_age_s"] <= after - before + 0.001
    box.ack([r.id for r in box.take(1)])
    stats = box.stats()
    assert (stats["depth"], stats["inflight"], stats["delivered"], stats["undeliverable"]) == (1, 0, 1, 0)
    box.take(1)
    assert box.stats()["inflight"] == 1
    box.close()
    assert box.oldest_age_s() is None  # closed: no age, no exception


def test_round_keeps_milliseconds() -> None:
    assert _round(None) is None
    assert _round(1.23456) == 1.235
    assert isinstance(_round(0.0004), float)


def test_replayed_payload_is_compact_json(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.put("t/evt/x", b'{"seq": 7, "v": [1, 2]}', "result")
    box.put("t/evt/x", b"not json", "result")
    box.put("t/evt/x", b"[1, 2]", "result")
    box.close()
    box = Outbox(path)
    rows = box.take(10)
    assert [r.payload for r in rows] == [b'{"seq":7,"v":[1,2],"replayed":true}', b"not json", b"[1, 2]"]
    assert [r.replayed for r in rows] == [True, True, True]
    assert box.stats()["replayed"] == 3
    box.close()


def test_database_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "o.db"
    box = Outbox(path)
    assert box.put("t/evt/x", _msg(0), "result")
    box.close()
    assert path.is_file()


def test_in_memory_outbox_writes_no_file_and_shares_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = Outbox(None)
    assert first.put("t/evt/x", _msg(0), "result")
    second = Outbox(None)
    assert second.depth == 0 and second.take(5) == []
    assert _seqs(first.take(5)) == [0]
    first.close()
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_producer_and_sender_threads_share_one_outbox(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for n in range(20):
                box.put("t/evt/x", _msg(n), "result")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join()
    assert errors == []
    assert _seqs(box.take(50)) == list(range(20))
    box.close()


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    assert not box.put("t/evt/x", _msg(0), "result")
    assert not box.put("t/evt/x", _msg(1), "result")
    assert box.counters.write_errors == 2 and box.counters.enqueued == 0


@pytest.mark.parametrize(("durable", "level"), [(False, 1), (True, 2)])
def test_durable_selects_full_synchronous_writes(tmp_path: Path, durable: bool, level: int) -> None:
    """``durable`` is the power-loss guarantee: synchronous=FULL (2) instead of NORMAL (1)."""
    box = Outbox(tmp_path / "o.db", durable=durable) if durable else Outbox(tmp_path / "o.db")
    assert box._table.db.execute("PRAGMA synchronous").fetchone()[0] == level
    assert box._table.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    box.close()
