"""The outbox's SQLite table on its own (``OutboxTable``, ``failure_reason``, ``companion_files``):
rules the mutation run (``make mutate``) found untested through :class:`Outbox`.

Real SQLite files in ``tmp_path``; the only hand-made values are the exceptions given to
``failure_reason`` (an errno or a SQLite error name that a healthy test machine cannot produce).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from edge_agent.messaging.outbox_table import DROP_REASONS, OutboxTable, companion_files, failure_reason


def _table(path: Path, rows: int, size: int = 10) -> OutboxTable:
    table = OutboxTable(path, durable=False)
    with table.transaction():
        for n in range(rows):
            table.insert("t/evt/x", bytes([n % 256]) * size, 1, 1000.0 + n)
    return table


def _ids(path: Path) -> list[int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in db.execute("SELECT id FROM outbox ORDER BY id")]
    finally:
        db.close()


def test_companion_files_are_the_wal_and_shm_sqlite_writes(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    table = _table(path, 1)
    wal, shm = companion_files(path)
    assert (wal, shm) == (tmp_path / "o.db-wal", tmp_path / "o.db-shm")
    assert wal.exists() and shm.exists()  # what an open WAL database has next to it
    table.close()


def _sqlite_error(name: str | None) -> sqlite3.Error:
    exc = sqlite3.OperationalError("from the test")
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(("exc", "reason"), [
    (_sqlite_error("SQLITE_FULL"), "disk_full"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
    (_sqlite_error("SQLITE_CORRUPT"), "corrupt"),
    (_sqlite_error("SQLITE_CORRUPT_INDEX"), "corrupt"),
    (_sqlite_error("SQLITE_NOTADB"), "corrupt"),
    (_sqlite_error("SQLITE_IOERR"), "io_error"),
    (_sqlite_error("SQLITE_IOERR_SHMSIZE"), "io_error"),  # an I/O error that is no OSError
    (OSError(errno.EIO, "Input/output error"), "io_error"),  # not disk_full (`errno != ENOSPC`)
    (OSError(errno.EACCES, "Permission denied"), "other"),  # not io_error (`errno != EIO`)
    (_sqlite_error("SQLITE_BUSY"), "other"),
    (_sqlite_error(None), "other"),  # a code SQLite has no name for
    (sqlite3.ProgrammingError("Cannot operate on a closed database."), "other"),  # no name at all
    (ValueError("not sqlite"), "other"),
])
def test_failure_reason_names_each_kind_of_failure(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason
    assert reason in DROP_REASONS


def test_a_real_damaged_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as info:
        OutboxTable(path, durable=False)
    assert failure_reason(info.value) == "corrupt"


def test_reopening_reads_rows_bytes_and_the_replayed_bound(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    _table(path, 3, size=7).close()  # ids 1..3, 21 bytes: no two of the totals alike
    again = OutboxTable(path, durable=False)
    assert (again.count, again.bytes, again.replayed_upto) == (3, 21, 3)
    again.close()


def test_a_closed_table_has_no_oldest_row(tmp_path: Path) -> None:
    table = _table(tmp_path / "o.db", 2)
    assert table.oldest_created() == 1000.0
    table.close()
    assert table.closed is True
    assert table.oldest_created() is None  # not a query on the closed connection


def test_deleting_more_than_a_chunk_outside_a_transaction(tmp_path: Path) -> None:
    """Over 500 ids take several DELETE statements, which delete() wraps in a transaction of its
    own; guards the ids and the size handed on to that inner call."""
    path = tmp_path / "o.db"
    table = _table(path, 520, size=3)
    table.delete(list(range(2, 504)), 502 * 3)
    assert not table.db.in_transaction
    assert (table.count, table.bytes) == (18, 18 * 3)
    assert _ids(path) == [1, *range(504, 521)]
    table.close()


def _sequence_rows(table: OutboxTable) -> list[tuple[str, int]]:
    return [(str(n), int(s)) for n, s in table.db.execute("SELECT name, seq FROM sqlite_sequence")]


def test_start_ids_after_numbers_new_rows_above_the_given_id(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    table = OutboxTable(path, durable=False)
    table.start_ids_after(7)  # a fresh file: no numbering yet
    table.insert("t", b"a", 1, 1.0)
    assert _ids(path) == [8]
    table.start_ids_after(20)  # numbering exists, below the bound: raised
    table.insert("t", b"b", 1, 2.0)
    table.start_ids_after(5)  # above the bound already: kept
    table.insert("t", b"c", 1, 3.0)
    assert _ids(path) == [8, 21, 22]
    assert _sequence_rows(table) == [("outbox", 22)]  # one numbering row, never a second
    table.close()
