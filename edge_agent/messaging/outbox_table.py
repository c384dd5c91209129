"""The outbox's SQLite table (WAL) and its running totals: every statement the outbox runs.

:class:`~.outbox.Outbox` owns the delivery rules (in flight, retries, bounds, counters);
this class owns the file, its PRAGMAs and schema, and the row and byte totals.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    replayed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
"""

_CHUNK = 500  # ids per DELETE statement

# (id, topic, payload, kind code, replayed) as read for sending.
StoredRow = tuple[int, str, bytes, int, int]

# Why a message could not be stored: the keys of the outbox's ``dropped`` counters.
DROP_REASONS = ("disk_full", "io_error", "corrupt", "other")


def failure_reason(exc: BaseException) -> str:
    """Which of :data:`DROP_REASONS` a failed statement (or a failed open) is."""
    name = str(getattr(exc, "sqlite_errorname", ""))  # None (a code without a name) reads "None"
    if name == "SQLITE_FULL" or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return "disk_full"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "corrupt"
    if name.startswith("SQLITE_IOERR") or (isinstance(exc, OSError) and exc.errno == errno.EIO):
        return "io_error"
    return "other"


def companion_files(path: Path) -> tuple[Path, Path]:
    """SQLite's write-ahead log and shared-memory index next to the database ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class OutboxTable:
    """The ``outbox`` table with ``count`` (rows) and ``bytes`` (payload bytes) kept in step.

    Args:
        path: database file (parent created); ``None`` keeps it in memory (tests only).
        durable: ``synchronous=FULL`` (survives power loss, slower) instead of NORMAL.
        exclusive: keep the WAL index in this process's memory instead of the ``-shm`` file
            (which a full disk may have no room for); no other process can read the database then.
    """

    def __init__(self, path: Path | None, *, durable: bool, exclusive: bool = False) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False,
                                  isolation_level=None)
        try:
            if exclusive:
                self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.db.executescript(_SCHEMA)
            # Opening writes nothing (a full disk must not stop it): what is queued now came
            # from an earlier run and goes out marked as replayed (``replayed_upto``).
            row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0) FROM outbox"
                                  ).fetchone()
        except BaseException:
            self.db.close()
            raise
        self.count = int(row[0])
        self.bytes = int(row[1])
        self.replayed_upto = int(row[2])
        self.closed = False

    def start_ids_after(self, last_id: int) -> None:
        """Number new rows above ``last_id`` (ids handed out from a database set aside)."""
        self.db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', ? WHERE NOT EXISTS "
                        "(SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')", (last_id,))
        self.db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'", (last_id,))

    def insert(self, topic: str, payload: bytes, kind: int, created: float) -> None:
        size = len(payload)
        self.db.execute(
            "INSERT INTO outbox (topic, payload, kind, created, size) VALUES (?, ?, ?, ?, ?)",
            (topic, payload, kind, created, size),
        )
        self.count += 1
        self.bytes += size

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN … COMMIT around the statements of the ``with`` block; ROLLBACK when one fails
        (a full disk, often only at COMMIT), so the connection is never left inside a transaction
        and the totals stay those of the rows really there."""
        totals = self.count, self.bytes
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self.count, self.bytes = totals
            raise

    def delete(self, ids: list[int], size: int) -> None:
        """Delete these rows, ``size`` payload bytes in all (all of them or, when a statement
        fails, none: the totals stay true)."""
        if len(ids) > _CHUNK and not self.db.in_transaction:
            with self.transaction():
                self.delete(ids, size)
            return
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
        self.count -= len(ids)
        self.bytes -= size

    def oldest_of_kind(self, kind: int, limit: int) -> list[tuple[int, int]]:
        """(id, size) of the oldest ``limit`` rows of one kind."""
        rows: list[tuple[int, int]] = self.db.execute(
            "SELECT id, size FROM outbox WHERE kind = ? ORDER BY id LIMIT ?", (kind, limit),
        ).fetchall()
        return rows

    def head(self, limit: int, after: int) -> list[StoredRow]:
        """The oldest ``limit`` rows with an id above ``after``, for sending; ``replayed`` is
        1 for the rows queued by an earlier run."""
        rows: list[StoredRow] = self.db.execute(
            "SELECT id, topic, payload, kind, replayed OR id <= ? FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (self.replayed_upto, after, limit),
        ).fetchall()
        return rows

    def sizes(self, ids: list[int]) -> list[tuple[int, int]]:
        """(id, size) of those of these rows that still exist."""
        marks = ",".join("?" * len(ids))
        rows: list[tuple[int, int]] = self.db.execute(
            f"SELECT id, size FROM outbox WHERE id IN ({marks})", ids).fetchall()
        return rows

    def add_attempt(self, row_id: int) -> tuple[int, int] | None:
        """Count one more refused attempt; (attempts, size), or None when the row is gone."""
        self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (row_id,))
        row: tuple[int, int] | None = self.db.execute(
            "SELECT attempts, size FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return row

    def size_of(self, row_id: int) -> int | None:
        row = self.db.execute("SELECT size FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else int(row[0])

    def created_before(self, cutoff: float) -> list[tuple[int, int]]:
        """(id, size) of the rows created before ``cutoff`` (wall-clock seconds)."""
        rows: list[tuple[int, int]] = self.db.execute(
            "SELECT id, size FROM outbox WHERE created < ?", (cutoff,)).fetchall()
        return rows

    def oldest_created(self) -> float | None:
        """When the oldest row was queued (wall-clock seconds); None when empty or closed."""
        if self.closed:
            return None
        row = self.db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return None if row[0] is None else float(row[0])

    def close(self) -> None:
        self.closed = True
        self.db.close()
