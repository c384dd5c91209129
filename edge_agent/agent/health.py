"""The ``health`` message: system figures read from the kernel (and ``vcgencmd`` on a Raspberry
Pi), the typed :class:`HealthRecord` the agent publishes and readers parse, and its reporter.

A figure the board does not report is ``None`` (JSON null), never invented.
Only the standard library: ``/proc``, ``/sys`` and ``shutil.disk_usage``; the state files
set aside come from :mod:`edge_agent.util.statefiles`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from edge_agent.agent.stats import StatsSnapshot
from edge_agent.control import ProbeSample
from edge_agent.util.statefiles import set_aside_counts

if TYPE_CHECKING:
    from edge_agent.agent.sdnotify import Notifier
    from edge_agent.messaging.publishers import Publisher

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")
# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    "undervoltage": 0,
    "freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
    "undervoltage_occurred": 16,
    "freq_capped_occurred": 17,
    "throttled_occurred": 18,
    "soft_temp_limit_occurred": 19,
}


def read_cpu_temp(root: Path = THERMAL_ROOT) -> float | None:
    """CPU temperature in °C from the first CPU-like thermal zone, or None."""
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    fallback: float | None = None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            value = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if any(word in kind for word in ("cpu", "soc", "x86_pkg", "arm")):
            return round(value, 1)
        if fallback is None:
            fallback = round(value, 1)
    return fallback


def parse_throttled(text: str) -> dict[str, Any] | None:
    """Decode ``throttled=0x50005`` into named flags (None if unparseable)."""
    _, _, value = text.strip().partition("=")
    try:
        bits = int(value, 16)
    except ValueError:
        return None
    flags: dict[str, Any] = {name: bool(bits >> bit & 1) for name, bit in THROTTLE_BITS.items()}
    flags["raw"] = hex(bits)
    return flags


def read_throttled(vcgencmd: str | None) -> dict[str, Any] | None:
    """Throttling/undervoltage flags from ``vcgencmd get_throttled``, or None where absent."""
    if vcgencmd is None:
        return None
    try:
        out = subprocess.run(
            [vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2.0, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_throttled(out.stdout) if out.returncode == 0 else None


def _read_meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def _read_rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _read_cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [float(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    return total - idle, total


def _read_uptime() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class MemoryFigures(TypedDict):
    total_bytes: int | None
    available_bytes: int | None
    rss_bytes: int | None


class SystemHealth(TypedDict):
    """:meth:`HealthSampler.sample`: the board's figures (None where it does not report them)."""

    cpu_temp_c: float | None
    throttled: dict[str, Any] | None
    cpu_percent: float | None
    process_cpu_percent: float | None
    mem: MemoryFigures
    disk_free_bytes: int | None
    state_files_set_aside: dict[str, int]  # damaged state files renamed aside, by file name
    uptime_s: float
    system_uptime_s: float | None


class PipelineHealth(StatsSnapshot):
    """The pipeline's figures in the health message: the stats plus source, model and config version."""

    source: dict[str, Any] | None
    model_sha256: str | None
    manifest_sha256: str | None
    config_version: int
    health_interval_s: float  # the interval in force (a consumer judges staleness by it)
    model_fallback: str | None  # why the agent runs `previous` instead of `current` (None: it does not)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class HealthRecord:
    """One ``health`` message: system figures, pipeline figures and the publisher's delivery counters.

    On the wire the three parts are one flat JSON object (:meth:`to_json`). A reader of
    messages from the network parses them with :meth:`from_json`, whose values are not
    validated: read them through the properties, which return None for a missing or
    mistyped figure.
    """

    system: SystemHealth | None = None
    pipeline: StatsSnapshot | None = None
    publisher: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The message body (before the envelope): system, then pipeline, then publisher keys."""
        body: dict[str, Any] = {}
        body.update(self.system or {})
        body.update(self.pipeline or {})
        body.update(self.publisher)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> HealthRecord:
        """Split a received health body into its parts (values as received)."""
        system_keys = SystemHealth.__required_keys__
        pipeline_keys = PipelineHealth.__required_keys__
        return cls(
            system=cast(SystemHealth, {k: v for k, v in body.items() if k in system_keys}),
            pipeline=cast(PipelineHealth, {k: v for k, v in body.items() if k in pipeline_keys}),
            publisher={k: v for k, v in body.items() if k not in system_keys and k not in pipeline_keys},
        )

    @property
    def fps_inferred(self) -> float | None:
        return _num(self.pipeline.get("fps_inferred")) if self.pipeline else None

    @property
    def health_interval_s(self) -> float | None:
        """The interval the device publishes health at (None from agents that do not say)."""
        return _num(self.pipeline.get("health_interval_s")) if self.pipeline else None

    @property
    def cpu_temp_c(self) -> float | None:
        return _num(self.system.get("cpu_temp_c")) if self.system else None

    def p95_ms(self, *stages: str) -> float | None:
        """The p95 latency of the first of ``stages`` that reports one."""
        latency: object = self.pipeline.get("latency_ms") if self.pipeline else None
        if not isinstance(latency, dict):
            return None
        for stage in stages:
            entry = latency.get(stage)
            if isinstance(entry, dict):
                p95 = _num(entry.get("p95"))
                if p95 is not None:
                    return p95
        return None

    @property
    def outbox_depth(self) -> int | None:
        """Messages waiting for delivery: the MQTT outbox's ``depth`` or the stdout queue's."""
        outbox = self.publisher.get("outbox")
        depth = outbox.get("depth") if isinstance(outbox, dict) else self.publisher.get("outbox_depth")
        return int(depth) if isinstance(depth, int) else None

    def probe_sample(self) -> ProbeSample:
        """What the OTA probation monitor watches: inferences, errors, invoke p95."""
        pipeline = self.pipeline
        inferences = _num(pipeline.get("frames_inferred")) if pipeline else None
        errors = _num(pipeline.get("errors")) if pipeline else None
        return ProbeSample(int(inferences or 0), int(errors or 0), self.p95_ms("invoke"))


class HealthReporter:
    """Publishes a :class:`HealthRecord` every interval and tells systemd (``STATUS=``) the gist.

    Args:
        sampler: the system figures (None: none in the message).
        pipeline: returns the pipeline's figures.
        publisher: where the message goes; its counters join it.
        interval_s: returns the interval in force (a runtime setting).
    """

    def __init__(self, sampler: HealthSampler | None, pipeline: Callable[[], PipelineHealth],
                 publisher: Publisher, interval_s: Callable[[], float]) -> None:
        self._sampler = sampler
        self._pipeline = pipeline
        self._publisher = publisher
        self._interval_s = interval_s
        self.notifier: Notifier | None = None
        self._thread: threading.Thread | None = None

    def record(self) -> HealthRecord:
        return HealthRecord(self._sampler.sample() if self._sampler is not None else None,
                            self._pipeline(), self._publisher.stats())

    def publish(self) -> None:
        record = self.record()
        self._publisher.publish("health", record.to_json())
        if self.notifier is not None:
            broker = "connected" if self._publisher.connected else "disconnected"
            pipeline = record.pipeline
            fps, dropped = (pipeline["fps_inferred"], pipeline["frames_dropped"]) if pipeline else (0, 0)
            self.notifier.status(f"{fps} fps inferred, {dropped} dropped, publisher {broker}")

    def start(self, stop: threading.Event) -> None:
        """Start the health thread; it ends when ``stop`` is set."""
        self._thread = threading.Thread(target=self._run, args=(stop,), name="health", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        """Publish every interval until ``stop`` is set."""
        last = time.monotonic()
        while not stop.wait(0.05):
            if time.monotonic() - last < self._interval_s():
                continue
            last = time.monotonic()
            try:
                self.publish()
            except Exception:
                log.exception("health sampling failed")


class HealthSampler:
    """Samples system figures; CPU percentages are deltas since the previous sample."""

    def __init__(self, disk_path: Path) -> None:
        self._disk_path = disk_path
        self._vcgencmd = shutil.which("vcgencmd")
        self._started = time.monotonic()
        self._last_cpu = _read_cpu_times()
        self._last_proc = (time.monotonic(), _process_cpu_s())

    def sample(self) -> SystemHealth:
        """System figures for the health payload (None where the board does not report them)."""
        cpu_now = _read_cpu_times()
        cpu_percent: float | None = None
        if cpu_now is not None and self._last_cpu is not None:
            busy = cpu_now[0] - self._last_cpu[0]
            total = cpu_now[1] - self._last_cpu[1]
            cpu_percent = round(100.0 * busy / total, 1) if total > 0 else None
        self._last_cpu = cpu_now
        now, proc = time.monotonic(), _process_cpu_s()
        wall = now - self._last_proc[0]
        proc_percent = round(100.0 * (proc - self._last_proc[1]) / wall, 1) if wall > 0 else None
        self._last_proc = (now, proc)

        meminfo = _read_meminfo()
        try:
            disk_free: int | None = shutil.disk_usage(self._disk_path).free
        except OSError:
            disk_free = None
        return {
            "cpu_temp_c": read_cpu_temp(),
            "throttled": read_throttled(self._vcgencmd),
            "cpu_percent": cpu_percent,
            "process_cpu_percent": proc_percent,
            "mem": {
                "total_bytes": meminfo.get("MemTotal"),
                "available_bytes": meminfo.get("MemAvailable"),
                "rss_bytes": _read_rss_bytes(),
            },
            "disk_free_bytes": disk_free,
            "state_files_set_aside": set_aside_counts(),
            "uptime_s": round(now - self._started, 1),
            "system_uptime_s": _read_uptime(),
        }


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
