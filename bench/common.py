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


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process in MB, 0 when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RssWatcher:
    """Polls a process's peak RSS until it exits (VmHWM only grows)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._interval):
            value = peak_rss_mb(self.pid)
            if value:
                self.peak_mb = max(self.peak_mb, value)
                try:
                    rss = next(
                        int(line.split()[1]) / 1024.0
                        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")
                    )
                    self.samples.append((time.monotonic() - start, rss))
                except (OSError, StopIteration):
                    pass

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
