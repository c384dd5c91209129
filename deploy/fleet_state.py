"""``edge-fleet`` bookkeeping: device messages folded into per-device views (pure; no network).

Every device seen under ``edge/v1/+/…``: online/offline (retained ``status``),
staleness, model, health figures, last seen, and per device the messages received,
gaps and duplicates computed from the envelope ``seq``.

Sequence numbers are tracked per agent session ``(boot_id, session)`` (``seq`` may jump
forward after a crash because the counter reserves blocks on disk, which is not a loss)
by :class:`SeqTracker`: a window ``[floor, highest]`` and the holes in it. A hole is
*pending* until it has stayed open for ``settle_s`` after a higher seq arrived; then it
is declared lost and counted in ``gaps_total``. Duplicates are ``received − distinct``.
Trackers merge (:meth:`SeqTracker.merge`): members of an exporter share group exchange
them (:mod:`deploy.exporter`) so that gaps are judged on the union of what all saw.

Staleness: a device is ``stale`` when its retained status says ``online`` but no health
arrived for more than :data:`STALE_FACTOR` × its health interval (``health_interval_s``
from its status and health bodies, :data:`DEFAULT_HEALTH_INTERVAL_S` when absent), counted
from its last health or, when none was seen, from when we saw it come online.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from edge_agent.agent.health import HealthRecord, SystemHealth
from edge_agent.agent.stats import StatsSnapshot
from edge_agent.messaging.envelope import TOPIC_ROOT

STALE_FACTOR = 2.5
DEFAULT_HEALTH_INTERVAL_S = 30.0
DEFAULT_SETTLE_S = 10.0
MAX_SEQ = 2**63 - 1
MAX_PENDING = 1000  # holes kept per session; beyond, the oldest is declared lost at once
MAX_LOST_RANGES = 256  # lost ranges remembered (a late arrival inside one is not a duplicate)
MAX_SESSIONS = 8  # sessions kept per device; the oldest is folded into the device's totals
MAX_LABELS = 64  # distinct result labels counted per device
MAX_LABEL_LEN = 64
MAX_ID_LEN = 128
SHARED_KINDS = ("health", "evt", "ack")  # dealt among share-group members
KINDS = ("health", "status", "evt", "ack", "config")
THROTTLE_NOW = ("undervoltage", "freq_capped", "throttled", "soft_temp_limit")

Range = tuple[int, int]  # inclusive


def _valid_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def _subtract(holes: list[tuple[int, int, float]], lo: int, hi: int) -> list[tuple[int, int, float]]:
    """``holes`` (lo, hi, since) minus the range [lo, hi], order kept."""
    out: list[tuple[int, int, float]] = []
    for a, b, since in holes:
        if b < lo or a > hi:
            out.append((a, b, since))
            continue
        if a < lo:
            out.append((a, lo - 1, since))
        if b > hi:
            out.append((hi + 1, b, since))
    return out


def _complement(lo: int, hi: int, holes: Iterable[Range]) -> list[Range]:
    """[lo, hi] minus the sorted, disjoint ``holes``."""
    out: list[Range] = []
    cursor = lo
    for a, b in sorted(holes):
        if b < cursor:
            continue
        if a > cursor:
            out.append((cursor, min(a - 1, hi)))
        cursor = max(cursor, b + 1)
        if cursor > hi:
            break
    if cursor <= hi:
        out.append((cursor, hi))
    return out


@dataclass
class SeqTracker:
    """Seq numbers of one agent session: the window ``[floor, highest]`` and its holes.

    Every seq in the window is seen unless it lies in a pending hole (missing, with the time
    it became missing) or in a lost range (declared lost). Holes are few, so this stays small
    whatever the message count.
    """

    floor: int | None = None
    highest: int | None = None
    pending: list[tuple[int, int, float]] = field(default_factory=list)  # (lo, hi, missing since)
    lost: list[Range] = field(default_factory=list)
    gaps_total: int = 0  # seqs declared lost (a counter: a late arrival does not lower it)
    late: int = 0  # seqs that arrived after they were declared lost
    lost_forgotten: int = 0  # size of lost ranges no longer remembered
    received: int = 0  # messages received by this process (any kind)
    received_shared: int = 0  # of those, on share-group topics (health, evt, ack)
    last_active: float = 0.0

    def add(self, seq: int, now: float) -> bool:
        """Record ``seq`` seen at ``now``; False when it was seen before (a duplicate)."""
        self.last_active = now
        if self.floor is None or self.highest is None:
            self.floor = self.highest = seq
            return True
        if seq > self.highest:
            if seq > self.highest + 1:
                self._hole(self.highest + 1, seq - 1, now, at_end=True)
            self.highest = seq
            return True
        if seq < self.floor:
            # Older than anything seen (a late retry, or we started mid-session): widen downwards.
            if seq < self.floor - 1:
                self._hole(seq + 1, self.floor - 1, now, at_end=False)
            self.floor = seq
            return True
        for i in range(len(self.pending) - 1, -1, -1):
            a, b, since = self.pending[i]
            if a <= seq <= b:
                self.pending[i:i + 1] = [h for h in ((a, seq - 1, since), (seq + 1, b, since)) if h[0] <= h[1]]
                return True
        for i, (a, b) in enumerate(self.lost):
            if a <= seq <= b:
                self.lost[i:i + 1] = [r for r in ((a, seq - 1), (seq + 1, b)) if r[0] <= r[1]]
                self.late += 1
                return True
        return False

    def _hole(self, lo: int, hi: int, now: float, *, at_end: bool) -> None:
        if at_end:
            self.pending.append((lo, hi, now))
        else:
            self.pending.insert(0, (lo, hi, now))
        while len(self.pending) > MAX_PENDING:
            self._declare(self.pending.pop(0 if at_end else -1))

    def _declare(self, hole: tuple[int, int, float]) -> None:
        lo, hi, _ = hole
        self.gaps_total += hi - lo + 1
        self.lost.append((lo, hi))
        self.lost.sort()
        while len(self.lost) > MAX_LOST_RANGES:
            a, b = self.lost.pop(0)
            self.lost_forgotten += b - a + 1

    def settle(self, now: float, settle_s: float) -> int:
        """Declare lost every hole open for ``settle_s`` or more; returns how many seqs."""
        keep: list[tuple[int, int, float]] = []
        declared = 0
        for hole in self.pending:
            if now - hole[2] >= settle_s:
                self._declare(hole)
                declared += hole[1] - hole[0] + 1
            else:
                keep.append(hole)
        self.pending = keep
        return declared

    @property
    def missing(self) -> int:
        """Seqs missing right now (not yet declared lost)."""
        return sum(b - a + 1 for a, b, _ in self.pending)

    def missing_sample(self, limit: int = 10) -> list[int]:
        out: list[int] = []
        for a, b, _ in sorted(self.pending):
            out.extend(range(a, min(b, a + limit - len(out) - 1) + 1))
            if len(out) >= limit:
                break
        return out[:limit]

    @property
    def distinct(self) -> int:
        """Distinct seqs seen (by this process, or by peers whose state was merged)."""
        if self.floor is None or self.highest is None:
            return 0
        lost = sum(b - a + 1 for a, b in self.lost)
        return max(0, self.highest - self.floor + 1 - self.missing - lost)

    # ---- share-group exchange -----------------------------------------------------------
    def digest(self) -> list[Any]:
        """Compact state for peers: ``[floor, highest, pending, lost, received_shared]``."""
        return [self.floor, self.highest, [[a, b] for a, b, _ in self.pending],
                [[a, b] for a, b in self.lost], self.received_shared]

    def merge(self, floor: int, highest: int, pending: list[Range], lost: list[Range], now: float) -> None:
        """Fold in a peer's view: what it saw counts as seen; what it declared lost, and we
        have not seen either, is lost here too; what neither saw becomes pending from ``now``."""
        unseen = sorted(pending + lost)
        seen = _complement(floor, highest, unseen)
        if self.floor is None or self.highest is None:
            self.floor, self.highest = floor, highest
            self.pending = [(a, b, now) for a, b in unseen]
        else:
            if floor < self.floor:
                self.pending.insert(0, (floor, self.floor - 1, now))
                self.floor = floor
            if highest > self.highest:
                self.pending.append((self.highest + 1, highest, now))
                self.highest = highest
            for lo, hi in seen:
                self.pending = _subtract(self.pending, lo, hi)
        for lo, hi in lost:
            overlap = [(max(a, lo), min(b, hi), s) for a, b, s in self.pending if a <= hi and b >= lo]
            for hole in overlap:
                self.pending = _subtract(self.pending, hole[0], hole[1])
                self._declare(hole)
        self.last_active = max(self.last_active, now)


@dataclass
class DeviceView:
    device_id: str
    state: str = "unknown"  # as the retained status says: online, offline (or unknown)
    agent_version: str | None = None
    model: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    config_version: Any = None
    health_interval_s: float | None = None
    online_since: float | None = None  # when we saw it come online (receipt of its online status)
    last_health: float | None = None  # receipt time of its last health (here or at a peer)
    fps: float | None = None
    p95_ms: float | None = None
    inference_p95_ms: float | None = None
    cpu_temp_c: float | None = None
    throttled: bool | None = None
    duplicate_id: bool | None = None  # the device says another agent uses its id
    outbox_depth: int | None = None
    outbox_evicted: int | None = None
    reconnects: int | None = None
    rss_bytes: int | None = None
    cpu_ratio: float | None = None
    last_seen: float | None = None
    messages: int = 0
    replayed: int = 0
    sessions: dict[tuple[str, str], SeqTracker] = field(default_factory=dict)
    closed_gaps: int = 0  # totals of sessions no longer tracked
    closed_duplicates: int = 0
    peer_received: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)  # member -> session -> n
    dup_floor: dict[tuple[str, str], int] = field(default_factory=dict)  # duplicates already reported
    results: dict[str, int] = field(default_factory=dict)
    last_ack: dict[str, Any] | None = None

    @property
    def interval_s(self) -> float:
        return self.health_interval_s or DEFAULT_HEALTH_INTERVAL_S

    def state_at(self, now: float) -> str:
        """``online``, ``stale`` (online but no health for STALE_FACTOR × interval), ``offline`` or ``unknown``."""
        if self.state != "online":
            return self.state if self.state == "offline" else "unknown"
        marks = [t for t in (self.last_health, self.online_since) if t is not None]
        if marks and now - max(marks) > STALE_FACTOR * self.interval_s:
            return "stale"
        return "online"

    @property
    def gaps(self) -> int:
        return self.closed_gaps + sum(t.gaps_total for t in self.sessions.values())

    @property
    def missing(self) -> int:
        return sum(t.missing for t in self.sessions.values())

    def session_duplicates(self, key: tuple[str, str]) -> int:
        """Received here and at peers, minus distinct seqs; never lower than already reported."""
        tracker = self.sessions[key]
        received = tracker.received + sum(peer.get(key, 0) for peer in self.peer_received.values())
        value = max(self.dup_floor.get(key, 0), received - tracker.distinct)
        self.dup_floor[key] = value
        return value

    @property
    def duplicates(self) -> int:
        return self.closed_duplicates + sum(self.session_duplicates(k) for k in self.sessions)

    def decided(self, since: float, now: float) -> bool:
        """Whether a listener started at ``since`` knows this device's state: not online, or
        online with a health seen since then, or stale."""
        state = self.state_at(now)
        return state != "online" or (self.last_health is not None and self.last_health >= since)

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "state": self.state_at(now),
            "agent_version": self.agent_version,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "config_version": self.config_version,
            "health_interval_s": self.health_interval_s,
            "fps": self.fps,
            "p95_ms": self.p95_ms,
            "cpu_temp_c": self.cpu_temp_c,
            "outbox_depth": self.outbox_depth,
            "duplicate_device_id": self.duplicate_id,
            "last_seen": self.last_seen,
            "last_seen_ago_s": None if self.last_seen is None else round(now - self.last_seen, 1),
            "last_health_ago_s": None if self.last_health is None else round(now - self.last_health, 1),
            "messages": self.messages,
            "gaps": self.gaps + self.missing,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "missing_sample": [seq for t in self.sessions.values() for seq in t.missing_sample(5)][:10],
        }


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _interval(value: Any) -> float | None:
    number = _num(value)
    return number if number is not None and 0.05 <= number <= 86400 else None


def _short(value: Any) -> str | None:
    return value[:MAX_LABEL_LEN] if isinstance(value, str) else None


def result_labels(kind: str, body: Mapping[str, Any]) -> list[str]:
    """The labels a result counts for: its ``label``, each detection's, every class of an audio
    window event, the top class of a classification."""
    if isinstance(body.get("label"), str):
        return [body["label"]]
    detections = body.get("detections")
    if isinstance(detections, list):
        return [d["label"] for d in detections if isinstance(d, dict) and isinstance(d.get("label"), str)]
    classes = body.get("classes")
    if isinstance(classes, list) and classes:
        picked = classes if kind == "evt/audio" else classes[:1]
        return [c["label"] for c in picked if isinstance(c, dict) and isinstance(c.get("label"), str)]
    return []


def topic_kind(kind: str) -> str | None:
    """The message kind of a topic tail: health, status, evt, ack, config (None: not a device message)."""
    if kind in ("health", "status", "ack"):
        return kind
    if kind.startswith("evt/"):
        return "evt"
    if kind == "config/reported":
        return "config"
    return None


class FleetState:
    """Folds device messages into per-device views (pure; no network; thread-safe).

    Args:
        clock: wall-clock time in seconds (injected in tests; share-group members compare it).
        settle_s: how long a hole in the seq numbers may stay open before it counts as a gap.
    """

    def __init__(self, clock: Callable[[], float] = time.time, settle_s: float = DEFAULT_SETTLE_S) -> None:
        self.devices: dict[str, DeviceView] = {}
        self.clock = clock
        self.settle_s = settle_s
        self.lock = threading.Lock()
        self.acks: list[dict[str, Any]] = []
        self.kind_counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    def handle(self, topic: str, payload: bytes, retained: bool = False, now: float | None = None) -> str | None:
        """Fold in one message; returns its kind (None when it was ignored)."""
        parts = topic.split("/")
        if len(parts) < 4 or "/".join(parts[:2]) != TOPIC_ROOT:
            return None
        device_id, tail = parts[2], "/".join(parts[3:])
        kind = topic_kind(tail)
        if kind is None or not device_id or len(device_id) > MAX_ID_LEN:
            return None  # operator → device traffic, reply copies (same seq as the ack), other topics
        try:
            body = json.loads(payload) if payload else {}
        except (ValueError, RecursionError):
            return None
        if not isinstance(body, dict):
            return None
        now = self.clock() if now is None else now
        with self.lock:
            view = self.devices.get(device_id)
            if view is None:
                view = self.devices[device_id] = DeviceView(device_id)
            if not retained:
                view.last_seen = now
                self.kind_counts[kind] += 1
            self._count_seq(view, body, retained, kind, now)
            if kind == "status":
                self._status(view, body, retained, now)
            elif kind == "health":
                self._health(view, body, now)
            elif kind == "evt" and not retained and tail != "evt/snapshot":
                self._results(view, tail, body)
            elif kind == "ack":
                view.last_ack = body
                self.acks.append(body)
                del self.acks[:-100]
        return kind

    @staticmethod
    def _count_seq(view: DeviceView, body: dict[str, Any], retained: bool, kind: str, now: float) -> None:
        seq = body.get("seq")
        if retained or not isinstance(seq, int) or not _valid_seq(seq):
            return  # retained copies are old news; the will carries no seq
        view.messages += 1
        if body.get("replayed") is True:
            view.replayed += 1
        key = (str(body.get("boot_id", ""))[:MAX_ID_LEN], str(body.get("session", ""))[:MAX_ID_LEN])
        tracker = view.sessions.get(key)
        if tracker is None:
            tracker = view.sessions[key] = SeqTracker()
            _prune_sessions(view)
        tracker.received += 1
        if kind in SHARED_KINDS:
            tracker.received_shared += 1
        tracker.add(seq, now)

    @staticmethod
    def _status(view: DeviceView, body: dict[str, Any], retained: bool, now: float) -> None:
        state = body.get("state")
        if isinstance(state, str):
            if state == "online" and (view.state != "online" or not retained):
                view.online_since = now  # a (re)birth: the health clock starts again
            view.state = state if state in ("online", "offline") else "unknown"
        if retained and view.last_seen is None:
            ts = _num(body.get("ts_ms"))
            view.last_seen = ts / 1000.0 if ts else None
        view.agent_version = _short(body.get("agent_version")) or view.agent_version
        model = body.get("model")
        if isinstance(model, dict):
            name, version = _short(model.get("name")), _short(model.get("version"))
            view.model_name, view.model_version = name, version
            view.model = f"{name}@{version}" if version else str(name)
            view.model_sha256 = _short(model.get("sha256"))
        view.config_version = body.get("config_version", view.config_version)
        view.health_interval_s = _interval(body.get("health_interval_s")) or view.health_interval_s
        if state == "online":  # a birth says it when another agent uses this device id
            view.duplicate_id = body.get("duplicate_device_id") is True

    @staticmethod
    def _health(view: DeviceView, body: dict[str, Any], now: float) -> None:
        # The record's readers look keys up in its parts: the flat body serves as all three
        # (HealthRecord.from_json would copy it into three dicts per message).
        record = HealthRecord(cast(SystemHealth, body), cast(StatsSnapshot, body), body)
        view.last_health = now if view.last_health is None else max(view.last_health, now)
        view.health_interval_s = _interval(body.get("health_interval_s")) or view.health_interval_s
        view.fps = record.fps_inferred
        view.p95_ms = record.p95_ms("total", "invoke")
        view.inference_p95_ms = record.p95_ms("invoke", "total")
        view.cpu_temp_c = record.cpu_temp_c
        view.outbox_depth = record.outbox_depth
        throttled = body.get("throttled")
        view.throttled = (any(throttled.get(k) is True for k in THROTTLE_NOW)
                          if isinstance(throttled, dict) else None)
        outbox = body.get("outbox")
        view.outbox_evicted = _int(outbox.get("evicted")) if isinstance(outbox, dict) else None
        view.reconnects = _int(body.get("reconnects"))
        if "duplicate_device_id" in body:
            view.duplicate_id = body.get("duplicate_device_id") is True
        mem = body.get("mem")
        view.rss_bytes = _int(mem.get("rss_bytes")) if isinstance(mem, dict) else None
        cpu = _num(body.get("cpu_percent"))
        view.cpu_ratio = None if cpu is None else min(1.0, max(0.0, cpu / 100.0))

    @staticmethod
    def _results(view: DeviceView, tail: str, body: dict[str, Any]) -> None:
        for full in result_labels(tail, body):
            label = full[:MAX_LABEL_LEN]
            if label in view.results or len(view.results) < MAX_LABELS:
                view.results[label] = view.results.get(label, 0) + 1
            else:
                view.results["_other"] = view.results.get("_other", 0) + 1

    def settle(self, now: float | None = None) -> None:
        """Declare lost every hole open longer than the settle window."""
        now = self.clock() if now is None else now
        with self.lock:
            for view in self.devices.values():
                for tracker in view.sessions.values():
                    if tracker.pending:
                        tracker.settle(now, self.settle_s)

    # ---- share-group exchange -----------------------------------------------------------
    def digest(self) -> list[dict[str, Any]]:
        """Per device: last health time (ms), health interval, and each session's tracker digest."""
        with self.lock:
            out = []
            for view in self.devices.values():
                entry: dict[str, Any] = {"d": view.device_id, "s": [[b, s, *t.digest()]
                                                                   for (b, s), t in view.sessions.items()
                                                                   if t.floor is not None]}
                if view.last_health is not None:
                    entry["h"] = int(view.last_health * 1000)
                if view.health_interval_s is not None:
                    entry["i"] = view.health_interval_s
                out.append(entry)
            return out

    def merge(self, member: str, entries: list[Any], now: float | None = None) -> int:
        """Fold in a peer's digest entries (validated; bad ones skipped); returns how many were used."""
        now = self.clock() if now is None else now
        used = 0
        with self.lock:
            for entry in entries:
                parsed = _parse_entry(entry)
                if parsed is None:
                    continue
                device_id, last_health, interval, sessions = parsed
                view = self.devices.get(device_id)
                if view is None:
                    view = self.devices[device_id] = DeviceView(device_id)
                if last_health is not None and (view.last_health is None or last_health > view.last_health):
                    view.last_health = last_health
                if interval is not None and view.health_interval_s is None:
                    view.health_interval_s = interval
                received = view.peer_received.setdefault(member, {})
                for key, floor, highest, pending, lost, count in sessions:
                    tracker = view.sessions.get(key)
                    if tracker is None:
                        tracker = view.sessions[key] = SeqTracker()
                        _prune_sessions(view)
                        if key not in view.sessions:
                            continue
                    tracker.merge(floor, highest, pending, lost, now)
                    received[key] = max(received.get(key, 0), count)
                used += 1
        return used

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self.clock() if now is None else now
        with self.lock:
            return [self.devices[d].summary(now) for d in sorted(self.devices)]


def _prune_sessions(view: DeviceView) -> None:
    """Keep the MAX_SESSIONS most recently active sessions; fold the others into the totals."""
    while len(view.sessions) > MAX_SESSIONS:
        key = min(view.sessions, key=lambda k: view.sessions[k].last_active)
        view.closed_duplicates += view.session_duplicates(key)
        view.closed_gaps += view.sessions.pop(key).gaps_total
        view.dup_floor.pop(key, None)
        for peer in view.peer_received.values():
            peer.pop(key, None)


def _ranges(value: Any, limit: int) -> list[Range] | None:
    if not isinstance(value, list) or len(value) > limit:
        return None
    out: list[Range] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and _valid_seq(item[0]) and _valid_seq(item[1])
                and item[0] <= item[1]):
            return None
        out.append((item[0], item[1]))
    return out


def _parse_entry(entry: Any) -> tuple[str, float | None, float | None,
                                      list[tuple[tuple[str, str], int, int, list[Range], list[Range], int]]] | None:
    """One digest entry, validated (a peer is trusted by the ACL, but its message is still input)."""
    if not isinstance(entry, dict):
        return None
    device_id = entry.get("d")
    if not isinstance(device_id, str) or not device_id or len(device_id) > MAX_ID_LEN or "/" in device_id:
        return None
    h = _num(entry.get("h"))
    last_health = h / 1000.0 if h is not None else None
    interval = _interval(entry.get("i"))
    raw = entry.get("s")
    if not isinstance(raw, list) or len(raw) > MAX_SESSIONS:
        return None
    sessions = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 7 and isinstance(item[0], str) and isinstance(item[1], str)):
            return None
        boot, session, floor, highest, pending, lost, count = item
        pend, gone = _ranges(pending, MAX_PENDING), _ranges(lost, MAX_LOST_RANGES)
        if (pend is None or gone is None or not _valid_seq(floor) or not _valid_seq(highest) or floor > highest
                or _int(count) is None):
            return None
        if any(a < floor or b > highest for a, b in pend + gone):
            return None
        sessions.append(((boot[:MAX_ID_LEN], session[:MAX_ID_LEN]), floor, highest, pend, gone, count))
    return device_id, last_health, interval, sessions
