"""``edge-fleet simulate``: many simulated devices publishing what real agents publish (load generation).

For N device ids (``{prefix}{i:05d}``): a retained ``online`` status (with
``health_interval_s = 1/rate``), health at ``rate`` Hz with the real envelope
(:class:`edge_agent.messaging.envelope.EnvelopeFactory`, one per device, its seq counter in a
temporary state directory, in ``/dev/shm`` where there is one) and a health body shaped like
:class:`HealthRecord`, then a retained ``offline`` at the end. A few MQTT connections publish on behalf of all the ids,
so the broker identity used needs write access to ``edge/v1/+/status`` and
``edge/v1/+/health`` (the shipped ACL gives that to no one: use a plain test broker, or an
identity added for load tests). Prints how many messages of each kind were acknowledged.

For tests and benchmarks only: ``--drop-every K`` skips every K-th health seq of each
device (a real gap), ``--duplicate-every K`` publishes every K-th health twice,
``--leave-online`` ends without the ``offline`` status.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.errors import EdgeError
from edge_agent.messaging.envelope import EnvelopeFactory, topic_root
from edge_agent.messaging.link import MqttLink, MqttSettings

WINDOW = 200  # QoS 1 messages in flight per connection
MAX_DEVICES = 100_000
SIM_MODEL = {"name": "sim", "version": "1.0", "sha256": "5" * 64, "manifest_sha256": "6" * 64}


@dataclass
class SimReport:
    """What was published and acknowledged by the broker."""

    devices: int
    published: dict[str, int] = field(default_factory=lambda: {"status": 0, "health": 0})
    acked: int = 0
    refused: int = 0
    dropped_seqs: int = 0
    duplicated: int = 0
    late_ticks: int = 0  # health rounds that started late (the generator could not keep up)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"devices": self.devices, "published": self.published, "acked": self.acked, "refused": self.refused,
                "dropped_seqs": self.dropped_seqs, "duplicated": self.duplicated, "late_ticks": self.late_ticks,
                "seconds": round(self.seconds, 3)}


def health_body(i: int, tick: int, interval_s: float) -> dict[str, Any]:
    """A health body of a plausible Pi (the keys of :class:`HealthRecord`'s three parts)."""
    return {**_static_health(i, interval_s), **_dynamic_health(i, tick, interval_s)}


def _dynamic_health(i: int, tick: int, interval_s: float) -> dict[str, Any]:
    """The figures that change from one message to the next."""
    inferred = int(tick * interval_s * (10.0 + i % 7))
    return {"uptime_s": round(tick * interval_s, 1), "system_uptime_s": round(1000.0 + tick * interval_s, 1),
            "frames_in": inferred, "frames_inferred": inferred, "results_published": inferred,
            "run_s": round(tick * interval_s, 1)}


def _static_health(i: int, interval_s: float) -> dict[str, Any]:
    """The figures that stay the same for a simulated device."""
    fps = 10.0 + (i % 7)
    return {
        "cpu_temp_c": 48.0 + (i % 10), "throttled": None, "cpu_percent": 35.0 + (i % 20),
        "process_cpu_percent": 30.0, "mem": {"total_bytes": 4_000_000_000, "available_bytes": 3_000_000_000,
                                            "rss_bytes": 60_000_000 + i},
        "disk_free_bytes": 10_000_000_000, "state_files_set_aside": {},
        "fps_in": fps, "fps_inferred": fps, "frames_dropped": 0,
        "frames_skipped": 0, "frames_skipped_motion": 0, "errors": 0,
        "queue_depth": 0, "mean_fps_inferred": fps,
        "latency_ms": {"invoke": {"p50": 6.0, "p95": 7.5, "p99": 9.0, "mean": 6.2, "n": 1000},
                       "total": {"p50": 9.0, "p95": 11.0, "p99": 14.0, "mean": 9.3, "n": 1000}},
        "source": {"type": "camera", "state": "connected"}, "model_sha256": SIM_MODEL["sha256"],
        "manifest_sha256": SIM_MODEL["manifest_sha256"], "config_version": 0, "model_fallback": None,
        "connected": True, "reconnects": 0, "connects": 1, "refused": 0,
        "outbox": {"depth": 0, "bytes": 0, "inflight": 0, "oldest_age_s": None, "evicted": 0},
        "health_interval_s": interval_s,
    }


def _encode(env: EnvelopeFactory, dynamic: dict[str, Any], static_json: str) -> bytes:
    """The envelope (next seq) with the changing figures, then the pre-encoded constant ones."""
    head = json.dumps(env.wrap(dynamic), separators=(",", ":"))
    return (head[:-1] + "," + static_json[1:]).encode()


class _Connection:
    """One MQTT connection with a window of QoS 1 messages in flight."""

    def __init__(self, settings: MqttSettings, client_id: str, report: SimReport, lock: threading.Lock) -> None:
        self.link = MqttLink(settings, client_id, max_queued=WINDOW * 2)
        self._free = threading.Semaphore(WINDOW)
        self._report = report
        self._lock = lock
        self.link.callbacks.on_published = self._on_published

    def _on_published(self, mid: int, ok: bool, reason: str) -> None:
        with self._lock:
            if ok:
                self._report.acked += 1
            else:
                self._report.refused += 1
        self._free.release()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._free.acquire()
        if self.link.publish(topic, payload, qos=1, retain=retain) is None:
            self._free.release()
            with self._lock:
                self._report.refused += 1

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for _ in range(WINDOW):
            if not self._free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
        for _ in range(WINDOW):
            self._free.release()
        return True


def simulate(settings: MqttSettings, devices: int, rate: float, duration: float, *, prefix: str = "sim-",
             connections: int = 2, drop_every: int = 0, duplicate_every: int = 0,
             leave_online: bool = False) -> SimReport:
    """Run the simulated fleet for ``duration`` seconds; returns what was published."""
    if not 1 <= devices <= MAX_DEVICES:
        raise EdgeError(f"--devices must be 1..{MAX_DEVICES}")
    if not 0.01 <= rate <= 100:
        raise EdgeError("--rate must be 0.01..100 Hz")
    if duration <= 0:
        raise EdgeError("--duration must be positive")
    if not prefix or len(prefix) > 64 or any(c in prefix for c in "/+#\x00"):
        raise EdgeError("--prefix must be a short topic-safe string (no / + #)")
    interval = 1.0 / rate
    report = SimReport(devices)
    lock = threading.Lock()
    tag = uuid.uuid4().hex[:6]
    settings = MqttSettings.from_any(settings, max_inflight=max(settings.max_inflight, 20))
    conns = [_Connection(settings, f"sim-{tag}-{n}", report, lock) for n in range(max(1, connections))]
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="edge-sim-", dir=shm if shm.is_dir() else None) as tmp:
        ids = [f"{prefix}{i:05d}" for i in range(devices)]
        envelopes = [EnvelopeFactory(d, Path(tmp) / d) for d in ids]
        for conn in conns:
            conn.link.start()
        try:
            for conn in conns:
                if not conn.link.wait_connected(30):
                    raise EdgeError(f"cannot connect to {settings.broker}")
            started = time.monotonic()
            status = {"state": "online", "agent_version": __version__, "model": SIM_MODEL, "task": "classify",
                      "config_version": 0, "model_fallback": None, "health_interval_s": interval}
            for i, env in enumerate(envelopes):
                _send(conns[i % len(conns)], env, "status", status, report, retain=True)
            threads = [threading.Thread(target=_health_loop, daemon=True, name=f"sim-{n}",
                                        args=(conns[n], envelopes[n::len(conns)], n, len(conns), interval,
                                              started + duration, report, lock, drop_every, duplicate_every))
                       for n in range(len(conns))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            offline = {"state": "offline", "agent_version": __version__}
            for i, env in enumerate(envelopes if not leave_online else []):
                _send(conns[i % len(conns)], env, "status", offline, report, retain=True)
            for conn in conns:
                conn.drain(60)
            report.seconds = time.monotonic() - started
        finally:
            for conn in conns:
                conn.link.stop()
    return report


def _send(conn: _Connection, env: EnvelopeFactory, kind: str, body: dict[str, Any], report: SimReport,
          retain: bool = False) -> bytes:
    data = json.dumps(env.wrap(body), separators=(",", ":")).encode()
    conn.publish(f"{topic_root(env.device_id)}/{kind}", data, retain)
    report.published[kind] += 1
    return data


def _health_loop(conn: _Connection, envelopes: list[EnvelopeFactory], first: int, step: int, interval: float,
                 end: float, report: SimReport, lock: threading.Lock, drop_every: int, duplicate_every: int) -> None:
    """Every ``interval``: one health per device, spread evenly over the interval."""
    n = len(envelopes)
    statics = [json.dumps(_static_health(first + k * step, interval), separators=(",", ":")) for k in range(n)]
    topics = [f"{topic_root(env.device_id)}/health" for env in envelopes]
    begin = time.monotonic()
    tick = 0
    while True:
        start = begin + tick * interval  # on schedule, whatever the last round took
        now = time.monotonic()
        if start >= end:
            return
        if now > start + interval / 4:
            with lock:
                report.late_ticks += 1  # this round starts late: the generator did not keep up
        elif now < start:
            time.sleep(start - now)
        for k, env in enumerate(envelopes):
            due = start + interval * k / n
            delay = due - time.monotonic()
            if delay > 0.002:
                time.sleep(delay)
            if drop_every and (tick + 1) % drop_every == 0:
                env.wrap({})  # this seq is taken and never published: a real gap
                with lock:
                    report.dropped_seqs += 1
            data = _encode(env, _dynamic_health(first + k * step, tick, interval), statics[k])
            conn.publish(topics[k], data)
            copies = 2 if duplicate_every and (tick + 1) % duplicate_every == 0 else 1
            if copies == 2:
                conn.publish(topics[k], data)  # the same seq again
            with lock:
                report.published["health"] += copies
                report.duplicated += copies - 1
        tick += 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, required=True, help="how many simulated devices")
    p.add_argument("--rate", type=float, default=1.0, help="health messages per second per device (default 1)")
    p.add_argument("--duration", type=float, required=True, help="seconds of health before the offline")
    p.add_argument("--prefix", default="sim-", help="device id prefix (default sim-)")
    p.add_argument("--connections", type=int, default=2, help="MQTT connections to publish through (default 2)")
    p.add_argument("--drop-every", type=int, default=0, metavar="K",
                   help="tests/benchmarks: skip one seq every K health rounds per device (a real gap)")
    p.add_argument("--duplicate-every", type=int, default=0, metavar="K",
                   help="tests/benchmarks: publish every K-th health round twice (a duplicate)")
    p.add_argument("--leave-online", action="store_true",
                   help="tests/benchmarks: no offline at the end (the devices then go stale)")
