"""The MQTT sender thread: the only caller of ``MqttLink.publish``.

It sends direct messages first (birth, acks, ``config/reported``), then outbox
rows, keeping at most ``window`` rows in paho; an outbox row is deleted only
when the broker acknowledged it. Only PUBACKs are handled on paho's thread (enqueued).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

from edge_agent.messaging.link import MqttLink
from edge_agent.messaging.outbox import Outbox

log = logging.getLogger(__name__)

DIRECT_QUEUE_MAX = 1000
EXPIRE_EVERY_S = 10.0


@dataclass(frozen=True)
class Direct:
    """A message sent without the outbox (lost if the agent dies before it is acknowledged)."""

    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True)
class _OfflineMarker(Direct):
    """The clean-stop ``offline`` message; its PUBACK sets :meth:`Sender.wait_offline`."""


@dataclass(frozen=True)
class _RowRef:
    row_id: int


class Sender:
    """Feeds one link from a bounded direct queue and the outbox, within an inflight window."""

    def __init__(self, link: MqttLink, outbox: Outbox, window: int) -> None:
        self.link = link
        self.outbox = outbox
        self.window = window
        self.dropped_direct = 0
        self.refused_oversize = 0
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._direct: deque[Direct] = deque()
        self._direct_lock = threading.Lock()
        self._inflight: dict[int, Direct | _RowRef] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._offline_done = threading.Event()
        self._rows_paused = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._rows_paused = False
        self._offline_done.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> bool:
        """Anything still queued or unacknowledged (outbox rows included)."""
        return bool(self.outbox.depth or self._inflight or self._direct)

    def wake(self) -> None:
        """Something new waits (e.g. an outbox row)."""
        self._wake.set()

    def pause_rows(self) -> None:
        """No more outbox rows into paho (``offline`` must not wait behind them)."""
        self._rows_paused = True

    def queue_offline(self, item: Direct) -> None:
        """Queue the clean-stop ``offline`` ahead of everything; :meth:`wait_offline` waits for its PUBACK."""
        self.queue_direct(item, front=True, marker=True)

    def wait_offline(self, timeout: float) -> bool:
        return self._offline_done.wait(timeout)

    def queue_direct(self, item: Direct, front: bool = False, marker: bool = False) -> bool:
        """Queue a message for sending when connected; False when refused (oversize) or dropped (queue full)."""
        if not self.link.fits(item.topic, len(item.payload), response_topic=item.response_topic,
                              correlation_data=item.correlation_data):
            self._refuse_direct(item)
            return False
        with self._direct_lock:
            if len(self._direct) >= DIRECT_QUEUE_MAX:
                self.dropped_direct += 1
                log.warning("direct queue full: dropped a message for %s", item.topic)
                return False
            if marker:
                item = _OfflineMarker(item.topic, item.payload, item.retain)
            if front:
                self._direct.appendleft(item)
            else:
                self._direct.append(item)
        self._wake.set()
        return True

    def _refuse_direct(self, item: Direct) -> None:
        self.refused_oversize += 1
        log.warning("refused %d-byte message for %s: its packet would exceed the %d-byte limit",
                    len(item.payload), item.topic, self.link.packet_limit)

    def on_published(self, mid: int, ok: bool, reason: str) -> None:
        """paho's PUBACK callback: only enqueues."""
        self._acks.put((mid, ok, reason))
        self._wake.set()

    # ---- the sender thread --------------------------------------------------------------
    def _run(self) -> None:
        last_expire = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._drain_acks()
                if self.link.connected:
                    self._send_direct()
                    self._send_rows()
                now = time.monotonic()
                if now - last_expire > EXPIRE_EVERY_S:
                    last_expire = now
                    self.outbox.expire()
            except Exception:  # the sender must survive anything (e.g. a full disk)
                log.exception("MQTT sender loop error")
                time.sleep(0.5)

    def _drain_acks(self) -> None:
        delivered: list[int] = []
        while True:
            try:
                mid, ok, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            if isinstance(entry, _RowRef):
                if ok:
                    delivered.append(entry.row_id)
                else:
                    log.warning("broker refused outbox row %d: %s", entry.row_id, reason)
                    self.outbox.nack(entry.row_id, reason)
            elif isinstance(entry, _OfflineMarker):
                self._offline_done.set()
            elif not ok:
                log.warning("broker refused %s: %s", entry.topic, reason)
        self.outbox.ack(delivered)

    def _send_direct(self) -> None:
        while len(self._inflight) < self.window + 8:
            with self._direct_lock:
                if not self._direct:
                    return
                item = self._direct.popleft()
            if not self.link.fits(item.topic, len(item.payload), correlation_data=item.correlation_data):
                self._refuse_direct(item)  # e.g. the broker's limit is smaller than when queued
                continue
            mid = self.link.publish(item.topic, item.payload, qos=1, retain=item.retain,
                                    response_topic=None, correlation_data=item.correlation_data)
            if mid is None:
                with self._direct_lock:
                    self._direct.appendleft(item)
                return
            self._inflight[mid] = item

    def _send_rows(self) -> None:
        if self._rows_paused:
            return
        free = self.window - sum(1 for e in self._inflight.values() if isinstance(e, _RowRef))
        if free <= 0:
            return
        for row in self.outbox.take(free):
            if not self.link.fits(row.topic, len(row.payload)):
                # Queued under a larger limit (the broker's is smaller): it can never be sent.
                self.outbox.drop_oversize(row.id, self.link.packet_limit)
                continue
            mid = self.link.publish(row.topic, row.payload, qos=1)
            if mid is None:
                self.outbox.release(row.id)
                return
            self._inflight[mid] = _RowRef(row.id)
