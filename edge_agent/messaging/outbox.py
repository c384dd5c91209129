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
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent.messaging.outbox_table import OutboxTable

log = logging.getLogger(__name__)

Kind = Literal["health", "result"]
_KIND_CODE = {"health": 0, "result": 1}
_KIND_NAME: dict[int, Kind] = {0: "health", 1: "result"}

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024
RETRY_DELAY_S = 2.0


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
    write_errors: int = 0

    def add_evicted(self, kind: Kind, count: int) -> None:
        if kind == "health":
            self.evicted_health += count
        else:
            self.evicted_results += count

    def snapshot(self) -> dict[str, int]:
        """The counters as the health payload reports them."""
        return {
            "evicted": self.evicted_health + self.evicted_results + self.evicted_age,
            "evicted_health": self.evicted_health,
            "evicted_results": self.evicted_results,
            "evicted_age": self.evicted_age,
            "refused_oversize": self.refused_oversize,
            "undeliverable": self.undeliverable,
            "write_errors": self.write_errors,
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
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._retry_after: dict[int, float] = {}
        self._table = OutboxTable(path, durable=durable)
        if self._table.count:
            log.info("outbox %s: %d queued message(s) from an earlier run will be replayed", path, self._table.count)

    # ---- producer side ------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, kind: Kind) -> bool:
        """Queue one message; returns False when it is refused (over the size cap)."""
        size = len(payload)
        if size > self.max_message_bytes:
            with self._lock:
                self.counters.refused_oversize += 1
            log.warning("refused %d-byte message for %s: over the %d-byte cap", size, topic, self.max_message_bytes)
            return False
        now = time.time()
        with self._lock:
            try:
                if self._table.bytes + size > self.max_bytes and not self._evict_for(size, kind):
                    self.counters.evicted_health += 1
                    log.warning("outbox full: dropped a new health message (health never evicts results)")
                    return False
                self._table.insert(topic, payload, _KIND_CODE[kind], now)
            except sqlite3.Error as exc:
                # Disk full, I/O error, closed: drop and count, never crash the caller's thread.
                self.counters.write_errors += 1
                log.error("outbox write failed, message for %s dropped: %s", topic, exc)
                return False
            self.counters.enqueued += 1
        return True

    def _evict_for(self, size: int, kind: Kind = "result") -> bool:
        """Make room for ``size`` more bytes; returns False when a health row does not fit.

        A result evicts the oldest health rows, then the oldest results. A health row
        evicts only older health rows, never a result.
        """
        for code in ((0,) if kind == "health" else (0, 1)):
            while self._table.bytes + size > self.max_bytes:
                rows = self._table.oldest_of_kind(code, len(self._inflight) + 64)
                need = self._table.bytes + size - self.max_bytes
                chosen, freed = _choose_victims(rows, self._inflight, need)
                if not chosen:
                    break
                self._delete(chosen, freed)
                self.counters.add_evicted(_KIND_NAME[code], len(chosen))
                log.warning("outbox full: evicted %d %s message(s)", len(chosen), _KIND_NAME[code])
        return kind != "health" or self._table.bytes + size <= self.max_bytes

    def _delete(self, ids: list[int], size: int) -> None:
        self._table.delete(ids, size)
        for rid in ids:
            self._retry_after.pop(rid, None)

    # ---- sender side --------------------------------------------------------------------
    def take(self, limit: int) -> list[OutboxRow]:
        """The next ``limit`` rows not already in flight, oldest first; marks them in flight."""
        if limit <= 0:
            return []
        now = time.monotonic()
        with self._lock:
            rows = self._table.head(len(self._inflight) + len(self._retry_after) + limit)
            out: list[OutboxRow] = []
            for rid, topic, payload, kind, replayed in rows:
                if rid in self._inflight or self._retry_after.get(rid, 0.0) > now:
                    continue
                self._retry_after.pop(rid, None)
                self._inflight.add(rid)
                body = bytes(payload)
                if replayed:
                    body = _mark_replayed(body)
                    self.counters.replayed_sent += 1
                out.append(OutboxRow(rid, topic, body, _KIND_NAME[kind], bool(replayed)))
                if len(out) >= limit:
                    break
            return out

    def ack(self, ids: list[int]) -> None:
        """The broker acknowledged these rows: delete them.

        ``delivered`` counts the rows found and deleted, not the ids passed: an id that is
        not in flight, or whose row is gone, changes nothing.
        """
        if not ids:
            return
        with self._lock:
            present = [rid for rid in ids if rid in self._inflight]
            self._inflight.difference_update(present)
            if not present:
                return
            found = self._table.sizes(present)
            if len(found) != len(present):
                log.error("outbox: %d acknowledged row(s) were no longer queued", len(present) - len(found))
            if not found:
                return
            with self._table.transaction():
                self._delete([rid for rid, _ in found], sum(int(size) for _, size in found))
            self.counters.delivered += len(found)

    def nack(self, row_id: int, reason: str) -> None:
        """The broker refused the row (or paho could not take it): retry later, or drop after max_attempts."""
        with self._lock:
            self._inflight.discard(row_id)
            self.counters.broker_failures += 1
            row = self._table.add_attempt(row_id)
            if row is None:
                return
            if row[0] >= self.max_attempts:
                self._delete([row_id], int(row[1]))
                self.counters.undeliverable += 1
                log.error("dropping outbox row %d after %d refusals (%s)", row_id, row[0], reason)
            else:
                self._retry_after[row_id] = time.monotonic() + RETRY_DELAY_S

    def refuse_oversize(self, topic: str, size: int, limit: int) -> None:
        """Count a message refused before queuing (its MQTT packet would exceed ``limit``)."""
        with self._lock:
            self.counters.refused_oversize += 1
        log.warning("refused %d-byte message for %s: its packet would exceed the %d-byte limit", size, topic, limit)

    def drop_oversize(self, row_id: int, limit: int) -> None:
        """Delete a taken row that can never be sent (over the broker's packet limit); counted."""
        with self._lock:
            self._inflight.discard(row_id)
            size = self._table.size_of(row_id)
            if size is None:
                return
            self._delete([row_id], size)
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
        """Evict rows older than ``max_age_s`` (not those in flight); returns how many."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            rows = self._table.created_before(cutoff)
            victims = [(rid, sz) for rid, sz in rows if rid not in self._inflight]
            if not victims:
                return 0
            self._delete([rid for rid, _ in victims], sum(sz for _, sz in victims))
            self.counters.evicted_age += len(victims)
        log.warning("outbox: evicted %d message(s) older than %.0f s", len(victims), self.max_age_s)
        return len(victims)

    # ---- state --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._table.count

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_age_s(self) -> float | None:
        with self._lock:
            created = self._table.oldest_created()
        return None if created is None else max(0.0, time.time() - created)

    def stats(self) -> dict[str, Any]:
        """Counters for the health payload (a pure snapshot)."""
        return {
            "depth": self._table.count,
            "bytes": self._table.bytes,
            "inflight": len(self._inflight),
            "oldest_age_s": _round(self.oldest_age_s()),
            **self.counters.snapshot(),
        }

    def close(self) -> None:
        with self._lock:
            try:
                self._table.close()
            except sqlite3.Error as exc:  # pragma: no cover - defensive
                log.debug("closing outbox: %s", exc)


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
