"""Outbox rules the mutation run (``make mutate``) found untested: exact bounds, counters that
accumulate, byte accounting after every kind of removal, settings and the health snapshot."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_agent.messaging import outbox as outbox_module
from edge_agent.messaging.outbox import Outbox, _FailureLog, _round
from edge_agent.messaging.outbox_table import companion_files
from edge_agent.util import statefiles
from edge_agent.util.statefiles import set_aside_counts
from tests.fixtures_disk import fill

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


# ---- storage failures: the failure log, late opens, damage, a full disk (issue "Tests that can fail") ----

_LOGGER = outbox_module.__name__
_ASIDE_LOGGER = statefiles.__name__


class _Clock:
    """``time.monotonic`` under the test's control for the outbox module (``time.time`` stays real)."""

    time = staticmethod(time.time)

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture, logger: str = _LOGGER) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def _cannot_store(reason: str, count: int, last: str) -> str:
    return (f"outbox cannot store messages ({reason}): {count} not stored since the last report; "
            f"sent live while connected, dropped otherwise (the last one was {last})")


def _blocked(tmp_path: Path) -> tuple[Path, Path]:
    """A database path that cannot be opened (its directory is a regular file), and that file:
    deleting it lets the database be created."""
    blocker = tmp_path / "state"
    blocker.write_text("")
    return blocker / "o.db", blocker


def _damage(box: Outbox, path: Path) -> None:
    """Pages of garbage in the file under a running outbox (what a power cut may leave on an SD card)."""
    db = box._table.db  # type: ignore[union-attr]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xde\xad" * (path.stat().st_size // 2))
    db.execute("PRAGMA shrink_memory")  # forget the cached pages: the next statement reads the file


def _aside(directory: Path) -> list[str]:
    """The set-aside files, named by what follows the time stamp ("" for the database itself)."""
    return sorted(p.name.partition(".corrupt-")[2][len("YYYYmmddTHHMMSSZ"):]
                  for p in directory.glob("o.db.corrupt-*"))


def test_failure_log_reports_a_start_a_change_and_then_once_a_minute_with_the_count(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock(10.0)  # ten seconds after boot: the first failure is still reported at once
    monkeypatch.setattr(outbox_module, "time", clock)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    flog = _FailureLog()
    flog.recovered()  # nothing failed yet: nothing to say
    for now, reason, sent in [(10.0, "disk_full", False), (20.0, "disk_full", True), (55.0, "disk_full", False),
                              (60.0, "io_error", True), (119.0, "io_error", False), (120.0, "io_error", False)]:
        clock.now = now
        flog.note(reason, sent)
    clock.now = 125.0
    flog.note("io_error", True)
    flog.recovered()
    flog.recovered()
    clock.now = 130.0
    flog.note("io_error", True)
    assert _messages(caplog) == [
        _cannot_store("disk_full", 1, "dropped"),
        _cannot_store("io_error", 3, "sent live"),  # a change of reason at once, with the two held back
        _cannot_store("io_error", 2, "dropped"),  # 60 s after the last line, to the second
        "outbox stores messages again (1 not stored since the last report)",
        _cannot_store("io_error", 1, "sent live"),  # failing again after a recovery: reported at once
    ]


def test_failure_log_reports_an_unopened_database_on_a_change_and_then_once_a_minute(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock(10.0)
    monkeypatch.setattr(outbox_module, "time", clock)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    flog = _FailureLog()
    for now, reason, message in [(10.0, "other", "m1"), (30.0, "other", "m2"), (40.0, "disk_full", "m3"),
                                 (99.0, "disk_full", "m4"), (100.0, "disk_full", "m5")]:
        clock.now = now
        flog.note_unopened(reason, message)
    assert _messages(caplog) == ["m1", "m3", "m5"]
    assert flog.reason == "disk_full"


def test_failure_log_reports_undeleted_rows_at_most_once_a_minute(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock(10.0)
    monkeypatch.setattr(outbox_module, "time", clock)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    flog = _FailureLog()
    for now, count in [(10.0, 3), (55.0, 4), (69.0, 5), (70.0, 6)]:
        clock.now = now
        flog.note_undeleted("disk_full", count)
    assert _messages(caplog) == [
        f"outbox cannot delete {n} delivered message(s) yet (disk_full); they are not sent again" for n in (3, 6)]


def test_a_database_that_cannot_be_opened_is_tried_again_every_reopen_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock(1000.0)
    monkeypatch.setattr(outbox_module, "time", clock)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    path, blocker = _blocked(tmp_path)
    aside_before = set_aside_counts()
    box = Outbox(path)
    assert set_aside_counts() == aside_before  # not damaged: nothing is set aside
    assert (box.take(5), box.expire(now=time.time() + 1e9)) == ([], 0)
    assert (box.depth, box.stats()["bytes"], box.stats()["oldest_age_s"]) == (0, 0, None)
    live: list[int] = []
    assert not box.put("t/evt/x", _msg(0), "result", live=lambda: live.append(0) is None)
    assert not box.put("t/evt/x", _msg(1), "result", live=lambda: live.append(1) is None)
    blocker.unlink()
    clock.now = 1004.9  # not tried again before REOPEN_EVERY_S
    assert not box.put("t/evt/x", _msg(2), "result")
    stats = box.stats()
    assert live == [0, 1]
    assert (stats["write_errors"], stats["sent_unstored"], stats["dropped"]["other"]) == (3, 2, 1)
    clock.now = 1005.0  # due to the second
    assert box.put("t/evt/x", _msg(3), "result")
    rows = box.take(5)
    assert (_seqs(rows), [r.id for r in rows]) == ([3], [1])  # nothing was handed out before: ids from 1
    [unopened, *rest] = _messages(caplog)
    assert unopened.startswith(f"outbox {path} cannot be opened (other: [Errno 17] File exists: ")
    assert unopened.endswith("; tried again every 5 s, meanwhile results go out only while connected")
    assert rest == [_cannot_store("other", 1, "sent live"),
                    "outbox stores messages again (2 not stored since the last report)"]
    box.close()


def test_a_closed_outbox_hands_out_nothing_and_sets_nothing_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_age_s=1.0)
    box.put("t/evt/x", _msg(0), "result")
    box.close()
    aside_before = set_aside_counts()
    assert box.take(5) == []  # the read fails (closed), which is no damage
    assert box.expire(now=time.time() + 10.0) == 0
    assert not box.put("t/evt/x", _msg(1), "result")
    assert box.stats()["dropped"]["other"] == 1
    assert set_aside_counts() == aside_before and _aside(tmp_path) == []
    assert _stored_bytes(path) == len(_msg(0))


def test_damage_found_by_take_is_set_aside_with_the_wal_and_index_an_empty_database_replaces_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another connection (an operator's ``sqlite3``) keeps the ``-wal`` and ``-shm`` files: they go
    with the damaged file, not next to the new one."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(3):
        assert box.put("t/evt/x", _msg(n, 5000), "result")
    reader = sqlite3.connect(path)
    try:
        assert reader.execute("SELECT COUNT(*) FROM outbox").fetchone() == (3,)
        _damage(box, path)
        before = set_aside_counts().get("o.db", 0)
        assert box.take(5) == []
        assert set_aside_counts()["o.db"] == before + 1
        assert _aside(tmp_path) == ["", "-shm", "-wal"]
        [aside] = _messages(caplog, _ASIDE_LOGGER)
        assert aside.startswith(f"damaged state file {path} (database disk image is malformed) set aside as ")
        assert box.put("t/evt/x", _msg(3), "result")
        assert _seqs(box.take(5)) == [3]  # the first row of the new file (nothing was handed out before)
    finally:
        reader.close()
    box.close()


def test_a_damaged_database_another_connection_holds_is_set_aside_with_the_wal_and_index(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "o.db"
    first = Outbox(path)
    first.put("t/evt/x", _msg(0), "result")
    reader = sqlite3.connect(path)
    try:
        assert reader.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)
        first._table.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        first.close()
        path.write_bytes(b"\x00garbage" * 1000)
        box = Outbox(path)
        assert _aside(tmp_path) == ["", "-shm", "-wal"]
        assert box.put("t/evt/x", _msg(1), "result")
        assert _seqs(box.take(5)) == [1]
        box.close()
    finally:
        reader.close()
    [aside] = _messages(caplog, _ASIDE_LOGGER)
    assert aside.startswith(f"damaged state file {path} (file is not a database) set aside as ")
    assert _messages(caplog) == []  # in particular no word of a missing shared-memory index


def test_an_outbox_closed_while_its_database_is_set_aside_opens_none_again(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for n in range(3):
        box.put("t/evt/x", _msg(n, 5000), "result")
    _damage(box, path)
    assert box.take(5) == []  # set aside; the next put would open an empty database…
    box.close()
    assert not box.put("t/evt/x", _msg(3), "result")  # …but not after close
    assert box.stats()["dropped"] == {"disk_full": 0, "io_error": 0, "corrupt": 0, "other": 1}
    assert not path.exists()


def test_a_refusal_for_a_row_no_longer_queued_is_counted_and_changes_nothing_else(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put("t/evt/x", _msg(0), "result")
    box.put("t/evt/x", _msg(1), "result")
    row = box.take(1)[0]
    box.drop_oversize(row.id, 10)
    box.nack(row.id, "0x80")  # e.g. a late PUBACK with an error code
    stats = box.stats()
    assert (stats["undeliverable"], stats["depth"], stats["inflight"]) == (0, 1, 0)
    assert box.counters.broker_failures == 1
    assert _seqs(box.take(5)) == [1]
    box.close()


def _fixed(n: int) -> bytes:
    """A 200-byte payload whatever ``n``."""
    return json.dumps({"seq": n, "pad": "x" * (200 - 20 - len(str(n)))}).encode()


def test_eviction_looks_past_many_rows_in_flight(tmp_path: Path) -> None:
    """The oldest rows read per pass are the busy ones plus some: with 70 in flight (mutant: 70 - 64
    read) the first evictable row is found."""
    assert {len(_fixed(n)) for n in (0, 99, 100)} == {200}
    box = Outbox(tmp_path / "o.db", max_bytes=100 * 200)
    for n in range(100):
        assert box.put("t/evt/x", _fixed(n), "result")
    assert _seqs(box.take(70)) == list(range(70))
    assert box.put("t/evt/x", _fixed(100), "result")
    stats = box.stats()
    assert (stats["evicted_results"], stats["bytes"]) == (1, 100 * 200)
    assert _seqs(box.take(100)) == list(range(71, 101))
    box.close()


# ---- a full disk (tmpfs, root only) ------------------------------------------------------------------


def test_acknowledged_rows_on_a_full_disk_are_deleted_later_and_the_rows_before_them_still_go(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    path = small_disk / "o.db"
    box = Outbox(path)
    for n in range(3):
        assert box.put("t/evt/x", _msg(n), "result")
    ballast = fill(small_disk)
    rows = box.take(3)
    box.ack([rows[1].id, rows[2].id])  # cannot be deleted now
    box.release_all()
    stats = box.stats()
    assert (stats["depth"], stats["bytes"], stats["delivered"]) == (1, len(_msg(0)), 2)
    assert _seqs(box.take(1)) == [0]  # one row at a time, acknowledged rows behind it
    box.release_all()
    assert box.expire(now=time.time() + 2 * box.max_age_s) == 0  # nothing can be deleted: nothing evicted
    assert (box.stats()["evicted_age"], box.depth) == (0, 1)
    ballast.unlink()
    assert box.expire() == 0  # the acknowledged rows go now
    assert _stored_bytes(path) == len(_msg(0))
    assert _seqs(box.take(5)) == [0]  # the unacknowledged first row still goes
    assert _messages(caplog) == [
        "outbox cannot delete 2 delivered message(s) yet (disk_full); they are not sent again",
        "outbox: evicting old rows failed: database or disk is full"]
    box.close()


def test_a_durable_outbox_opened_on_a_full_disk_stays_durable(small_disk: Path) -> None:
    path = small_disk / "o.db"
    first = Outbox(path, durable=True)
    assert first.put("t/evt/x", _msg(0), "result")
    first.close()
    for extra in companion_files(path):
        extra.unlink(missing_ok=True)
    fill(small_disk)
    box = Outbox(path, durable=True)  # no room for the -shm index: this process's memory instead
    db = box._table.db  # type: ignore[union-attr]
    assert db.execute("PRAGMA locking_mode").fetchone() == ("exclusive",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)
    box.close()


def test_a_damaged_database_on_a_full_disk_is_replaced_once_there_is_room(
        small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1000.0)
    monkeypatch.setattr(outbox_module, "time", clock)
    path = small_disk / "o.db"
    path.write_bytes(b"\x00garbage" * 1000)
    ballast = fill(small_disk)
    before = set_aside_counts().get("o.db", 0)
    box = Outbox(path)  # set aside; the empty database that replaces it finds no room
    assert not box.put("t/evt/x", _msg(0), "result")  # not tried again yet: the reason found when opening
    assert box.stats()["dropped"]["disk_full"] == 1
    ballast.unlink()
    clock.now += outbox_module.REOPEN_EVERY_S
    assert box.put("t/evt/x", _msg(1), "result")
    assert _seqs(box.take(5)) == [1]
    assert set_aside_counts()["o.db"] == before + 1  # once: a full disk is no damage
    box.close()


def test_damage_found_on_a_full_disk_numbers_the_new_rows_above_those_handed_out(
        small_disk: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(outbox_module, "REOPEN_EVERY_S", 0.0)
    caplog.set_level(logging.WARNING)
    path = small_disk / "o.db"
    box = Outbox(path)
    for n in range(3):
        assert box.put("t/evt/x", _msg(n, 5000), "result")
    [taken] = box.take(1)
    _damage(box, path)
    ballast = fill(small_disk)
    assert not box.put("t/evt/x", _msg(3), "result")  # damaged: set aside
    assert not box.put("t/evt/x", _msg(4), "result")  # no room for a new database yet
    assert box.stats()["dropped"] == {"disk_full": 1, "io_error": 0, "corrupt": 1, "other": 0}
    [aside] = _messages(caplog, _ASIDE_LOGGER)
    assert aside.startswith(f"damaged state file {path} (database disk image is malformed) set aside as ")
    ballast.unlink()
    assert box.put("t/evt/x", _msg(5), "result")
    box.ack([taken.id])  # a late PUBACK for a row of the old file deletes nothing in the new one
    rows = box.take(5)
    assert _seqs(rows) == [5] and rows[0].id > taken.id
    box.close()
