"""Shared helpers for benchmarks: cached example models, subprocess timing, results.

Benchmarks are not tests: they measure and write figures (as ratios measured in
one run wherever possible) to ``docs/benchmarks.md``; they never assert timings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", ROOT / ".bench-cache"))
RESULTS = ROOT / "docs" / "bench-results"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a console script installed next to this interpreter."""
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, raising with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _status_mb(pid: int, keys: tuple[str, ...]) -> dict[str, float]:
    """Fields of /proc/PID/status in MB (missing when the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) / 1024.0 for line in lines if line.split(":")[0] in keys}


def evict_shared_libraries() -> int:
    """Drop this environment's shared libraries from the page cache; returns how many files.

    File-backed pages count in RSS, and how many a process maps depends on how
    the kernel cached the file: on kernels with large page-cache folios (ext4
    on 6.16+), libraries just written by ``pip install`` sit in the cache as
    large folios that are mapped whole, adding tens of MB of (shared, clean)
    file RSS that a device starting from its SD card never sees. Evicting them
    first (``posix_fadvise(DONTNEED)``, no root needed) makes the figure
    reproducible: it is the memory of an agent starting cold.
    """
    os.sync()
    roots = {Path(sys.prefix), Path(sys.base_prefix) / "lib"}
    count = 0
    for root in roots:
        for path in root.rglob("*.so*"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
            finally:
                os.close(fd)
    return count


class RssWatcher:
    """Polls a process's peak RSS until it exits (VmHWM only grows)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        self.peak_sample: dict[str, float] = {}  # VmRSS, RssAnon, RssFile at the largest sample
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._interval):
            status = _status_mb(self.pid, ("VmHWM", "VmRSS", "RssAnon", "RssFile"))
            if "VmRSS" not in status:
                continue
            self.peak_mb = max(self.peak_mb, status["VmHWM"])
            self.samples.append((time.monotonic() - start, status["VmRSS"]))
            if status["VmRSS"] >= self.peak_sample.get("VmRSS", 0.0):
                self.peak_sample = status

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class BenchResult:
    """One benchmark's figures and its markdown section."""

    name: str
    title: str
    figures: dict[str, Any]
    markdown: str
    targets: dict[str, str] = field(default_factory=dict)

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        data = {"name": self.name, "title": self.title, "figures": self.figures, "targets": self.targets,
                "markdown": self.markdown, "machine": machine_info(),
                "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def machine_info() -> str:
    cpus = os.cpu_count() or 0
    return f"{platform.machine()}, {cpus} CPUs, Python {platform.python_version()}, {platform.system()}"


def write_docs() -> Path:
    """Assemble docs/benchmarks.md from every saved result."""
    sections = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        sections.append(
            f"## {data['title']}\n\n_Measured {data['measured_utc']} on {data['machine']}._\n\n"
            f"{data['markdown'].strip()}\n"
        )
    text = (
        "# Benchmarks\n\n"
        "Produced by `make bench` (`python -m bench.run`). Figures are ratios measured in one run "
        "where possible, so they compare like with like on the same machine; absolute times are "
        "for this machine only. Tests never assert timings; these are the figures.\n\n"
        + "\n".join(sections)
    )
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text(text)
    return out
