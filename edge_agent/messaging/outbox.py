"""Durable outbox for results and health: SQLite in WAL mode on disk.

Every message that must not be lost (``evt/*`` results and ``health``) is
written here first and deleted only after the broker acknowledged it. The
sender takes a few rows at a time (so paho's own queue stays small), in id
order; after a restart the rows still queued are sent again, marked
``"replayed": true``.

Bounds: total payload bytes and age. When full, a new result evicts the oldest
health rows first, then the oldest results; a new health row only ever evicts
older health rows and is itself dropped (counted as ``evicted_health``) when
that does not make room: health never evicts results. Every eviction is counted. A message over the
size cap is refused and counted. WAL with ``synchronous=NORMAL`` keeps a
committed row through a ``kill -9`` of the agent (not through power loss,
which needs ``synchronous=FULL`` — see ``durable``).

Storage never stops the caller: a message that cannot be written (a full disk, an I/O
error) is handed to ``live`` (the publisher sends it without the outbox while connected)
or dropped, counted by reason in ``dropped``; the next message tries the disk again. A
database that cannot be opened is retried every :data:`REOPEN_EVERY_S`; a damaged one is
set aside and replaced by an empty one. A row the broker acknowledged but that cannot be
deleted yet is never sent again and is deleted once the disk allows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.messaging.outbox_table import DROP_REASONS, OutboxTable, companion_files, failure_reason
from edge_agent.util.statefiles import set_aside

log = logging.getLogger(__name__)

Kind = Literal["health", "result"]
_KIND_CODE = {"health": 0, "result": 1}
_KIND_NAME: dict[int, Kind] = {0: "health", 1: "result"}

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024
RETRY_DELAY_S = 2.0
REOPEN_EVERY_S = 5.0  # a database that could not be opened (e.g. a full disk) is tried again
LOG_EVERY_S = 60.0  # storage failures: one line when they start or change, then at most this often


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    kind: Kind
    replayed: bool


@dataclass
class OutboxCounters:
    enqueued: int = 0
    delivered: int = 0
    replayed_sent: int = 0
    evicted_health: int = 0
    evicted_results: int = 0
    evicted_age: int = 0
    refused_oversize: int = 0
    undeliverable: int = 0
    broker_failures: int = 0
    write_errors: int = 0  # messages that could not be stored, whatever became of them
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    sent_unstored: int = 0  # of those, handed to the broker live instead

    def add_evicted(self, kind: Kind, count: int) -> None:
        if kind == "health":
            self.evicted_health += count
        else:
            self.evicted_results += count

    def snapshot(self) -> dict[str, Any]:
        """The counters as the health payload reports them."""
        return {
            "evicted": self.evicted_health + self.evicted_results + self.evicted_age,
            "evicted_health": self.evicted_health,
            "evicted_results": self.evicted_results,
            "evicted_age": self.evicted_age,
            "refused_oversize": self.refused_oversize,
            "undeliverable": self.undeliverable,
            "write_errors": self.write_errors,
            "dropped": dict(self.dropped),
            "sent_unstored": self.sent_unstored,
            "delivered": self.delivered,
            "replayed": self.replayed_sent,
        }


class Outbox:
    """SQLite-backed FIFO with at-least-once hand-off (the table itself: :class:`.OutboxTable`).

    Args:
        path: database file (parent created); ``None`` keeps it in memory (tests only).
        max_bytes: bound on the sum of queued payload sizes.
        max_age_s: rows older than this are evicted (counted as ``evicted_age``).
        max_message_bytes: larger payloads are refused (``refused_oversize``).
        max_attempts: a row the broker keeps refusing is dropped after this many tries.
        durable: ``synchronous=FULL`` (survives power loss, slower) instead of NORMAL.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_attempts: int = 10,
        durable: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_message_bytes = max_message_bytes
        self.max_attempts = max_attempts
        self.counters = OutboxCounters()
        self._path = path
        self._durable = durable
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._retry_after: dict[int, float] = {}
        self._undeleted: dict[int, int] = {}  # acknowledged, delete failed: id -> size
        self._scan_from = 0  # every row with an id up to this one is in _undeleted
        self._top_id = 0  # the highest id handed out
        self._closed = False
        self._reopen_at = 0.0
        self._failure = _FailureLog()
        self._table: OutboxTable | None = self._open()
        if self._table is not None and self._table.count:
            log.info("outbox %s: %d queued message(s) from an earlier run will be replayed", path, self._table.count)

    # ---- the database ----------------------------------------------------------------------
    def _open(self) -> OutboxTable | None:
        """The table, or None when it cannot be opened now (tried again after REOPEN_EVERY_S).
        A damaged database is set aside (with its WAL) and an empty one takes its place."""
        try:
            return self._connect()
        except (sqlite3.Error, OSError) as exc:
            reason, error = failure_reason(exc), exc
        if reason == "corrupt" and self._path is not None:
            set_aside(self._path, str(error), *companion_files(self._path))
            try:
                return self._connect()
            except (sqlite3.Error, OSError) as exc:
                reason, error = failure_reason(exc), exc
        self._reopen_at = time.monotonic() + REOPEN_EVERY_S
        self._failure.note_unopened(reason, f"outbox {self._path} cannot be opened ({reason}: {error}); tried "
                                            f"again every {REOPEN_EVERY_S:.0f} s, meanwhile results go out "
                                            "only while connected")
        return None

    def _connect(self) -> OutboxTable:
        """The table with SQLite's shared-memory WAL index, or, when a full disk has no room
        for the ``-shm`` file, with the index in this process's memory (exclusive locking)."""
        try:
            return OutboxTable(self._path, durable=self._durable)
        except sqlite3.Error as exc:
            if self._path is None or not str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_IOERR_SHM"):
                raise
            log.warning("outbox %s: no room for its shared-memory index (%s); opened for this process only",
                        self._path, exc)
        return OutboxTable(self._path, durable=self._durable, exclusive=True)

    def _usable(self) -> OutboxTable | None:
        """The open table, opening it again when it is due (never after :meth:`close`)."""
        if self._table is None and not self._closed and time.monotonic() >= self._reopen_at:
            self._table = self._open()
            if self._table is not None and self._top_id:
                self._number_above(self._table, self._top_id)
        return self._table

    @staticmethod
    def _number_above(table: OutboxTable, top_id: int) -> None:
        """A late PUBACK of a row of a database set aside must not delete a new row with its id."""
        try:
            table.start_ids_after(top_id)
        except sqlite3.Error as exc:
            log.warning("outbox: cannot number new rows above %d: %s", top_id, exc)

    def _discard_damaged(self, table: OutboxTable, error: sqlite3.Error) -> None:
        """The open ``table`` turned out damaged while running: set it aside; the next put opens
        an empty one. Rows in flight are forgotten (their ids mean nothing in the new file)."""
        with contextlib.suppress(sqlite3.Error):
            table.close()
        self._table = None
        self._inflight.clear()
        self._retry_after.clear()
        self._undeleted.clear()
        self._scan_from = 0
        self._reopen_at = 0.0
        if self._path is not None:
            set_aside(self._path, str(error), *companion_files(self._path))

    # ---- producer side ------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, kind: Kind, live: Callable[[], bool] | None = None) -> bool:
        """Queue one message; False when it was not queued.

        Over the size cap it is refused. When it cannot be stored (full disk, I/O error,
        damaged or unavailable database) ``live`` is asked to send it without the outbox
        (True: it did; ``sent_unstored``), else it is dropped (``dropped[reason]``).
        """
        size = len(payload)
        if size > self.max_message_bytes:
            with self._lock:
                self.counters.refused_oversize += 1
            log.warning("refused %d-byte message for %s: over the %d-byte cap", size, topic, self.max_message_bytes)
            return False
        with self._lock:
            reason = self._store(topic, payload, kind)
        if not reason:
            return reason is None  # stored, or refused by the bounds (counted)
        sent = live is not None and live()
        with self._lock:
            self.counters.write_errors += 1
            if sent:
                self.counters.sent_unstored += 1
            else:
                self.counters.dropped[reason] += 1
            self._failure.note(reason, sent)
        return False

    def _store(self, topic: str, payload: bytes, kind: Kind) -> str | None:
        """Insert the row (evicting to make room); None when stored, "" when refused by the
        bounds (counted), else why it could not be stored."""
        table = self._usable()
        if table is None:
            return self._failure.reason
        try:
            if table.bytes + len(payload) > self.max_bytes and not self._evict_for(len(payload), kind):
                self.counters.evicted_health += 1
                log.warning("outbox full: dropped a new health message (health never evicts results)")
                return ""
            table.insert(topic, payload, _KIND_CODE[kind], time.time())
        except sqlite3.Error as exc:
            reason = failure_reason(exc)
            if reason == "corrupt":
                self._discard_damaged(table, exc)
            return reason
        self.counters.enqueued += 1
        self._failure.recovered()
        return None

    def _evict_for(self, size: int, kind: Kind = "result") -> bool:
        """Make room for ``size`` more bytes; returns False when a health row does not fit.

        A result evicts the oldest health rows, then the oldest results. A health row
        evicts only older health rows, never a result.
        """
        table = self._table
        assert table is not None
        busy = self._inflight | self._undeleted.keys()
        for code in ((0,) if kind == "health" else (0, 1)):
            while table.bytes + size > self.max_bytes:
                rows = table.oldest_of_kind(code, len(busy) + 64)
                need = table.bytes + size - self.max_bytes
                chosen, freed = _choose_victims(rows, busy, need)
                if not chosen:
                    break
                self._delete(chosen, freed)
                self.counters.add_evicted(_KIND_NAME[code], len(chosen))
                log.warning("outbox full: evicted %d %s message(s)", len(chosen), _KIND_NAME[code])
        return kind != "health" or table.bytes + size <= self.max_bytes

    def _delete(self, ids: list[int], size: int) -> None:
        assert self._table is not None
        self._table.delete(ids, size)
        for rid in ids:
            self._retry_after.pop(rid, None)

    # ---- sender side --------------------------------------------------------------------
    def take(self, limit: int) -> list[OutboxRow]:
        """The next ``limit`` rows not already in flight, oldest first (none for a ``limit`` of 0
        or less); marks them in flight."""
        now = time.monotonic()
        with self._lock:
            table = self._usable()
            if table is None:
                return []
            try:
                return self._take(table, limit, now)
            except sqlite3.Error as exc:
                log.warning("outbox: reading queued rows failed: %s", exc)
                if failure_reason(exc) == "corrupt":
                    self._discard_damaged(table, exc)
                return []

    def _take(self, table: OutboxTable, limit: int, now: float) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        after, first_open = self._scan_from, None
        batch = len(self._inflight) + len(self._retry_after) + limit
        while len(out) < limit:
            rows = table.head(batch, after)
            for rid, topic, payload, kind, replayed in rows:
                if rid in self._undeleted:
                    continue
                first_open = rid if first_open is None else first_open
                if rid in self._inflight or self._retry_after.get(rid, 0.0) > now:
                    continue
                self._retry_after.pop(rid, None)
                self._inflight.add(rid)
                self._top_id = max(self._top_id, rid)
                body = bytes(payload)
                if replayed:
                    body = _mark_replayed(body)
                    self.counters.replayed_sent += 1
                out.append(OutboxRow(rid, topic, body, _KIND_NAME[kind], bool(replayed)))
                if len(out) >= limit:
                    break
            if len(rows) < batch or not self._undeleted:
                break  # the end of the table (acknowledged rows are all that was skipped otherwise)
            after = rows[-1][0]
        # Everything before the first row not yet acknowledged stays acknowledged: skip it next time.
        self._scan_from = first_open - 1 if first_open is not None else after
        return out

    def ack(self, ids: list[int]) -> None:
        """The broker acknowledged these rows: delete them.

        ``delivered`` counts the rows found, not the ids passed: an id that is not in
        flight, or whose row is gone, changes nothing. A row that cannot be deleted now
        (a full disk) is never sent again and is deleted at a later ack or :meth:`expire`.
        """
        with self._lock:
            present = [rid for rid in ids if rid in self._inflight]
            self._inflight.difference_update(present)
            table = self._table
            if table is None:
                return
            try:
                found = table.sizes(present) if present else []
            except sqlite3.Error as exc:
                log.warning("outbox: reading acknowledged rows failed: %s", exc)
                return
            if len(found) != len(present):
                log.error("outbox: %d acknowledged row(s) were no longer queued", len(present) - len(found))
            self._undeleted.update(found)
            self.counters.delivered += len(found)
            self._delete_acknowledged(table)

    def _delete_acknowledged(self, table: OutboxTable) -> None:
        """Delete the acknowledged rows still in the open ``table`` (all or none)."""
        if not self._undeleted:
            return
        try:
            with table.transaction():
                self._delete(list(self._undeleted), sum(self._undeleted.values()))
        except sqlite3.Error as exc:
            self._failure.note_undeleted(failure_reason(exc), len(self._undeleted))
            return
        self._undeleted.clear()
        self._scan_from = 0

    def nack(self, row_id: int, reason: str) -> None:
        """The broker refused the row (or paho could not take it): retry later, or drop after max_attempts."""
        with self._lock:
            self._inflight.discard(row_id)
            self.counters.broker_failures += 1
            self._retry_after[row_id] = time.monotonic() + RETRY_DELAY_S
            if self._table is None:
                return
            try:
                row = self._table.add_attempt(row_id)
                if row is None:
                    self._retry_after.pop(row_id, None)
                elif row[0] >= self.max_attempts:
                    self._delete([row_id], int(row[1]))
                    self.counters.undeliverable += 1
                    log.error("dropping outbox row %d after %d refusals (%s)", row_id, row[0], reason)
            except sqlite3.Error as exc:  # counted again at the next refusal
                log.warning("outbox: recording a refusal of row %d failed: %s", row_id, exc)

    def refuse_oversize(self, topic: str, size: int, limit: int) -> None:
        """Count a message refused before queuing (its MQTT packet would exceed ``limit``)."""
        with self._lock:
            self.counters.refused_oversize += 1
        log.warning("refused %d-byte message for %s: its packet would exceed the %d-byte limit", size, topic, limit)

    def drop_oversize(self, row_id: int, limit: int) -> None:
        """Delete a taken row that can never be sent (over the broker's packet limit); counted."""
        with self._lock:
            self._inflight.discard(row_id)
            if self._table is None:
                return
            try:
                size = self._table.size_of(row_id)
                if size is None:
                    return
                self._delete([row_id], size)
            except sqlite3.Error as exc:  # taken again, and dropped then
                log.warning("outbox: dropping row %d failed: %s", row_id, exc)
                return
            self.counters.refused_oversize += 1
        log.error("dropping outbox row %d: its packet would exceed the %d-byte limit", row_id, limit)

    def release(self, row_id: int) -> None:
        """Give a row back without counting an attempt (paho's queue was full)."""
        with self._lock:
            self._inflight.discard(row_id)

    def release_all(self) -> None:
        with self._lock:
            self._inflight.clear()

    def expire(self, now: float | None = None) -> int:
        """Evict rows older than ``max_age_s`` (not those in flight) and delete acknowledged rows
        left over; returns how many rows were evicted."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            table = self._usable()
            if table is None:
                return 0
            self._delete_acknowledged(table)
            try:
                rows = table.created_before(cutoff)
                victims = [(rid, sz) for rid, sz in rows if rid not in self._inflight and rid not in self._undeleted]
                if not victims:
                    return 0
                self._delete([rid for rid, _ in victims], sum(sz for _, sz in victims))
            except sqlite3.Error as exc:
                log.warning("outbox: evicting old rows failed: %s", exc)
                return 0
            self.counters.evicted_age += len(victims)
        log.warning("outbox: evicted %d message(s) older than %.0f s", len(victims), self.max_age_s)
        return len(victims)

    # ---- state --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Rows waiting for delivery (acknowledged rows not yet deleted are not counted)."""
        table = self._table
        return 0 if table is None else table.count - len(self._undeleted)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_age_s(self) -> float | None:
        with self._lock:
            if self._table is None:
                return None
            try:
                created = self._table.oldest_created()
            except sqlite3.Error:
                return None
        return None if created is None else max(0.0, time.time() - created)

    def stats(self) -> dict[str, Any]:
        """Counters for the health payload (a pure snapshot)."""
        table = self._table
        undeleted = sum(self._undeleted.values())
        with self._lock:
            counters = self.counters.snapshot()
        return {
            "depth": self.depth,
            "bytes": 0 if table is None else table.bytes - undeleted,
            "inflight": len(self._inflight),
            "oldest_age_s": _round(self.oldest_age_s()),
            **counters,
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._table is None:
                return
            try:
                self._table.close()
            except sqlite3.Error as exc:  # pragma: no cover - defensive
                log.debug("closing outbox: %s", exc)


class _FailureLog:
    """Storage failures in the log: one line when they start or change, a summary at most every
    :data:`LOG_EVERY_S`, one line when writes work again. ``reason`` is the last one."""

    def __init__(self) -> None:
        self.reason = "other"
        self._failing = False
        self._since_log = 0
        self._logged_at = -LOG_EVERY_S  # the first failure is logged even in the first minute after boot
        self._opened_logged_at = -LOG_EVERY_S

    def note(self, reason: str, sent: bool) -> None:
        now = time.monotonic()
        self._since_log += 1
        if self._failing and reason == self.reason and now - self._logged_at < LOG_EVERY_S:
            return
        self._failing, self.reason, self._logged_at = True, reason, now
        log.warning("outbox cannot store messages (%s): %d not stored since the last report; "
                    "sent live while connected, dropped otherwise (the last one was %s)",
                    reason, self._since_log, "sent live" if sent else "dropped")
        self._since_log = 0

    def note_unopened(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if reason != self.reason or now - self._opened_logged_at >= LOG_EVERY_S:
            self._opened_logged_at = now
            log.warning("%s", message)
        self.reason = reason

    def note_undeleted(self, reason: str, count: int) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("outbox cannot delete %d delivered message(s) yet (%s); they are not sent again",
                        count, reason)

    def recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("outbox stores messages again (%d not stored since the last report)", self._since_log)
            self._since_log = 0


def _choose_victims(rows: list[tuple[int, int]], inflight: set[int], need: int) -> tuple[list[int], int]:
    """The first of these (id, size) rows not in flight that free ``need`` bytes (all of them
    when they do not); returns their ids and the bytes they free."""
    chosen: list[int] = []
    freed = 0
    for rid, sz in rows:
        if rid in inflight:
            continue
        chosen.append(rid)
        freed += sz
        if freed >= need:
            break
    return chosen, freed


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mark_replayed(payload: bytes) -> bytes:
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(body, dict):
        body["replayed"] = True
        return json.dumps(body, separators=(",", ":")).encode()
    return payload
