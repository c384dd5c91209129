"""Message envelope of every device→broker payload, with a persisted sequence number.

``seq`` is a per-device counter kept on disk so a consumer can detect gaps and
drop duplicates by ``(device_id, boot_id, seq)`` across restarts.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.util.fs import atomic_write

SCHEMA = "edge/v1"
TOPIC_ROOT = "edge/v1"
# Reserve seq numbers in blocks so a crash never reuses one without an fsync per message.
_BLOCK = 1000


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
    counter resumes above it, so numbers may skip but never repeat.
    """

    def __init__(self, state_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._path = Path(state_dir) / "seq" if state_dir is not None else None
        start = 0
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            try:
                start = int(self._path.read_text().strip() or 0)
            except (OSError, ValueError):
                start = 0
        self._next = start
        self._reserved = start
        self._reserve(start)

    def _reserve(self, base: int) -> None:
        self._reserved = base + _BLOCK
        if self._path is None:
            return
        atomic_write(self._path, str(self._reserved).encode())

    def next(self) -> int:
        with self._lock:
            value = self._next
            self._next += 1
            if self._next >= self._reserved:
                self._reserve(self._next)
            return value


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
