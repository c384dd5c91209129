"""System health figures read from the kernel (and ``vcgencmd`` on a Raspberry Pi).

A figure the board does not report is ``None`` (JSON null), never invented.
Only the standard library: ``/proc``, ``/sys`` and ``shutil.disk_usage``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

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


class HealthSampler:
    """Samples system figures; CPU percentages are deltas since the previous sample."""

    def __init__(self, disk_path: Path) -> None:
        self._disk_path = disk_path
        self._vcgencmd = shutil.which("vcgencmd")
        self._started = time.monotonic()
        self._last_cpu = _read_cpu_times()
        self._last_proc = (time.monotonic(), _process_cpu_s())

    def sample(self) -> dict[str, Any]:
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
            "uptime_s": round(now - self._started, 1),
            "system_uptime_s": _read_uptime(),
        }


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
