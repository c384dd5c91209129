"""``edge-fleet`` bookkeeping: device messages folded into per-device views (pure; no network).

Every device seen under ``edge/v1/+/…``: online/offline (retained ``status``),
model, fps, p95 latency, CPU temperature and outbox depth (from ``health``),
last seen, and per device the messages received, gaps and duplicates computed
from the envelope ``seq``. Duplicates are dropped by ``(device_id, boot_id, seq)``;
gaps are counted per agent session (``seq`` may jump forward after a crash
because the counter reserves blocks on disk, which is not a loss).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.agent.health import HealthRecord
from edge_agent.messaging.envelope import TOPIC_ROOT


@dataclass
class SeqTracker:
    """Seen seq numbers of one agent session, compacted below a contiguous watermark."""

    first: int | None = None
    contiguous: int | None = None  # every seq in [first, contiguous] has been seen
    above: set[int] = field(default_factory=set)
    highest: int | None = None

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it was seen before (a duplicate)."""
        if self.first is None:
            self.first = self.contiguous = self.highest = seq
            return True
        assert self.contiguous is not None and self.highest is not None
        if seq < self.first:
            # Older than anything seen (a late retry): widen the window downwards.
            self.above |= set(range(self.first, self.contiguous + 1))
            self.first = self.contiguous = seq
            self._compact()
            return True
        if seq <= self.contiguous or seq in self.above:
            return False
        self.above.add(seq)
        self.highest = max(self.highest, seq)
        self._compact()
        return True

    def _compact(self) -> None:
        assert self.contiguous is not None
        while self.contiguous + 1 in self.above:
            self.contiguous += 1
            self.above.discard(self.contiguous)

    def missing(self, limit: int = 10) -> list[int]:
        """The first few seq numbers not (yet) seen inside the window."""
        if self.contiguous is None or self.highest is None:
            return []
        out: list[int] = []
        for seq in range(self.contiguous + 1, self.highest):
            if seq not in self.above:
                out.append(seq)
                if len(out) >= limit:
                    break
        return out

    def gaps(self) -> int:
        if self.first is None or self.highest is None or self.contiguous is None:
            return 0
        return (self.highest - self.contiguous) - len(self.above)


@dataclass
class DeviceView:
    device_id: str
    state: str = "unknown"
    agent_version: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    config_version: Any = None
    fps: float | None = None
    p95_ms: float | None = None
    cpu_temp_c: float | None = None
    outbox_depth: int | None = None
    last_seen: float | None = None
    messages: int = 0
    duplicates: int = 0
    replayed: int = 0
    sessions: dict[tuple[str, str], SeqTracker] = field(default_factory=dict)
    last_ack: dict[str, Any] | None = None

    @property
    def gaps(self) -> int:
        return sum(t.gaps() for t in self.sessions.values())

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "state": self.state,
            "agent_version": self.agent_version,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "config_version": self.config_version,
            "fps": self.fps,
            "p95_ms": self.p95_ms,
            "cpu_temp_c": self.cpu_temp_c,
            "outbox_depth": self.outbox_depth,
            "last_seen": self.last_seen,
            "last_seen_ago_s": None if self.last_seen is None else round(now - self.last_seen, 1),
            "messages": self.messages,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "missing_sample": [seq for t in self.sessions.values() for seq in t.missing(5)][:10],
        }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class FleetState:
    """Folds device messages into per-device views (pure; no network)."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceView] = {}
        self._lock = threading.Lock()
        self.acks: list[dict[str, Any]] = []

    def handle(self, topic: str, payload: bytes, retained: bool = False, now: float | None = None) -> None:
        parts = topic.split("/")
        if len(parts) < 4 or "/".join(parts[:2]) != TOPIC_ROOT:
            return
        device_id, kind = parts[2], "/".join(parts[3:])
        if kind.startswith("cmd/") or kind == "config/desired":
            return  # operator → device traffic
        if kind.startswith("reply/"):
            return  # a copy of an ack on an operator's response topic: same seq, not a duplicate
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        now = time.time() if now is None else now
        with self._lock:
            view = self.devices.setdefault(device_id, DeviceView(device_id))
            if not retained:
                view.last_seen = now
            self._count_seq(view, body, retained)
            if kind == "status":
                self._status(view, body, retained, now)
            elif kind == "health":
                self._health(view, body)
            elif kind == "ack":
                view.last_ack = body
                self.acks.append(body)

    def _count_seq(self, view: DeviceView, body: dict[str, Any], retained: bool) -> None:
        seq = body.get("seq")
        if retained or not isinstance(seq, int) or isinstance(seq, bool):
            return  # retained copies are old news; the will carries no seq
        view.messages += 1
        if body.get("replayed") is True:
            view.replayed += 1
        # A duplicate is the same (device_id, boot_id, seq); a copy of a message also carries the
        # same session, so the per-session tracker (compact: a watermark plus the few seqs above
        # it) answers "seen before?" without keeping every key forever.
        key = (str(body.get("boot_id", "")), str(body.get("session", "")))
        tracker = view.sessions.setdefault(key, SeqTracker())
        if not tracker.add(seq):
            view.duplicates += 1

    @staticmethod
    def _status(view: DeviceView, body: dict[str, Any], retained: bool, now: float) -> None:
        state = body.get("state")
        if isinstance(state, str):
            view.state = state
        if retained and view.last_seen is None:
            ts = _num(body.get("ts_ms"))
            view.last_seen = ts / 1000.0 if ts else None
        view.agent_version = body.get("agent_version", view.agent_version)
        model = body.get("model")
        if isinstance(model, dict):
            name, version = model.get("name"), model.get("version")
            view.model = f"{name}@{version}" if version else str(name)
            view.model_sha256 = model.get("sha256")
        view.config_version = body.get("config_version", view.config_version)

    @staticmethod
    def _health(view: DeviceView, body: dict[str, Any]) -> None:
        record = HealthRecord.from_json(body)
        view.fps = record.fps_inferred
        view.p95_ms = record.p95_ms("total", "invoke")
        view.cpu_temp_c = record.cpu_temp_c
        view.outbox_depth = record.outbox_depth

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._lock:
            return [self.devices[d].summary(now) for d in sorted(self.devices)]

