"""Message envelope of every device→broker payload, with a persisted sequence number.

``seq`` is a per-device counter kept on disk so a consumer can detect gaps and
drop duplicates by ``(device_id, boot_id, seq)`` across restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.util.fs import atomic_write
from edge_agent.util.statefiles import set_aside

log = logging.getLogger(__name__)

SCHEMA = "edge/v1"
TOPIC_ROOT = "edge/v1"
# Reserve seq numbers in blocks so a crash never reuses one without an fsync per message.
_BLOCK = 1000
_RETRY = 50  # numbers between two attempts to persist when storage fails


def topic_root(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}"


def read_boot_id() -> str:
    """The kernel's boot id (changes every boot), or a random id where unavailable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return uuid.uuid4().hex


class SequenceCounter:
    """Monotonic per-device counter persisted under ``state_dir``.

    The file holds the upper bound of the reserved block; after a crash the
    counter resumes above it, so numbers may skip but never repeat. A damaged file is
    set aside and the count resumes at the Unix time in milliseconds (above any count a
    device reaches at under 1000 messages a second, once its clock is set). Storage never
    stops the count: a reservation that cannot be written atomically (a full disk) is
    written over the old file in place, and when even that fails the count goes on in
    memory, retried every :data:`_RETRY` numbers.
    """

    def __init__(self, state_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._path = Path(state_dir) / "seq" if state_dir is not None else None
        self.unpersisted = False  # the last reservation could not be written
        start = 0
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            start = _read_seq(self._path)
        self._next = start
        self._reserved = start
        self._reserve(start)

    def _reserve(self, base: int) -> None:
        self._reserved = base + _BLOCK
        if self._path is None:
            return
        data = str(self._reserved).encode()
        try:
            atomic_write(self._path, data)
        except OSError as exc:
            try:
                _overwrite(self._path, data)
            except OSError:
                if not self.unpersisted:
                    log.warning("cannot persist the sequence number to %s (%s): counting on in memory",
                                self._path, exc.strerror or exc)
                self.unpersisted = True
                self._reserved = base + _RETRY
                return
        if self.unpersisted:
            log.info("sequence number persisted again to %s", self._path)
        self.unpersisted = False

    def next(self) -> int:
        with self._lock:
            value = self._next
            self._next += 1
            if self._next >= self._reserved:
                self._reserve(self._next)
            return value


def _read_seq(path: Path) -> int:
    """The persisted bound; 0 when there is none; above the old count when it is damaged."""
    try:
        text = path.read_bytes().decode("ascii").strip()
        value = int(text)
        if value < 0:
            raise ValueError("negative")
        return value
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot read the sequence number from %s (%s)", path, exc.strerror or exc)
    except ValueError:
        set_aside(path, "not a number")
    return int(time.time() * 1000)


def _overwrite(path: Path, data: bytes) -> None:
    """Write ``data`` over the file in place: on a full disk its block is already allocated."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


class EnvelopeFactory:
    """Wraps payloads in the envelope: schema, device_id, boot_id, session, seq, ts_ms, replayed."""

    def __init__(self, device_id: str, state_dir: Path | None = None) -> None:
        self.device_id = device_id
        self.boot_id = read_boot_id()
        self.session = uuid.uuid4().hex[:16]
        self._seq = SequenceCounter(state_dir)

    def wrap(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` in the envelope, with the next sequence number."""
        return self._envelope(body, self._seq.next())

    def will_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` in the envelope of the MQTT will: ``seq`` is null.

        The will is fixed at connect time and may never be sent: it takes no sequence
        number, so consumers do not count a gap for it.
        """
        return self._envelope(body, None)

    def _envelope(self, body: dict[str, Any], seq: int | None) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "schema": SCHEMA,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "session": self.session,
            "seq": seq,
            "ts_ms": int(time.time() * 1000),
            "replayed": False,
        }
        envelope.update(body)
        return envelope
