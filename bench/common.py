"""Shared helpers for benchmarks: cached example models, subprocess timing, results.

Benchmarks are not tests: they measure and write figures (as ratios measured in
one run wherever possible) to ``docs/benchmarks.md``; they never assert timings.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from deploy.broker import Mosquitto, free_port, plain_config

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
    """Polls a process's peak RSS until it exits (VmHWM only grows) and its largest RssAnon."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.peak_anon_mb = 0.0  # the largest RssAnon sampled (private memory; no kernel high-water mark)
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
            self.peak_anon_mb = max(self.peak_anon_mb, status.get("RssAnon", 0.0))
            self.samples.append((time.monotonic() - start, status["VmRSS"]))
            if status["VmRSS"] >= self.peak_sample.get("VmRSS", 0.0):
                self.peak_sample = status

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Spread:
    """Median and range of per-round figures (a headline a skeptic can check)."""

    median: float
    low: float
    high: float
    rounds: int

    def text(self, fmt: str = ".2f") -> str:
        """``median (low–high)``, e.g. ``0.99 (0.95–1.02)``."""
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"

    def figures(self, key: str, digits: int = 3) -> dict[str, float]:
        """``key`` (the median), ``key_min``, ``key_max`` rounded for the JSON."""
        return {key: round(self.median, digits), f"{key}_min": round(self.low, digits),
                f"{key}_max": round(self.high, digits)}


def spread(values: Sequence[float]) -> Spread:
    """Median and range of per-round values."""
    if not values:
        raise ValueError("spread() needs at least one round")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def alternate(rounds: int, side_a: Callable[[], float], side_b: Callable[[], float]) -> list[tuple[float, float]]:
    """Run two measurements ``rounds`` times, alternating which goes first (A B, B A, A B, ...).

    Returns one ``(a, b)`` pair per round, so a ratio can be taken within each round:
    load from elsewhere on the machine then falls on both sides of a pair alike, and
    neither side always runs on a warmer (or more loaded) machine.
    """
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            a = side_a()
            b = side_b()
        else:
            b = side_b()
            a = side_a()
        pairs.append((a, b))
    return pairs


@dataclass
class BenchResult:
    """One benchmark's figures and its markdown section."""

    name: str
    title: str
    figures: dict[str, Any]
    markdown: str
    targets: dict[str, str] = field(default_factory=dict)

    def save(self) -> Path:
        """Write the figures, with the commit and machine they were measured on, to docs/bench-results."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        data = {"name": self.name, "title": self.title, "figures": self.figures, "targets": self.targets,
                "markdown": self.markdown, "commit": git_commit(), "machine": machine_info(),
                "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return path


def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout, plus ``+dirty`` when the tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """The machine and software the figures were measured with."""
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": str(os.cpu_count() or 0),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "opencv": _version("opencv-python-headless"),
    }


def describe_machine(machine: dict[str, str] | str) -> str:
    """One line for docs/benchmarks.md (older results stored the machine as a plain string)."""
    if isinstance(machine, str):
        return machine
    return (f"{machine.get('cpu', '?')} ({machine.get('arch', '?')}, {machine.get('cores', '?')} cores), "
            f"{machine.get('kernel', '?')}, Python {machine.get('python', '?')}, "
            f"numpy {machine.get('numpy', '?')}, ai-edge-litert {machine.get('ai_edge_litert', '?')}, "
            f"OpenCV {machine.get('opencv', '?')}")


def write_docs() -> Path:
    """Assemble docs/benchmarks.md from every saved result."""
    sections = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        commit = data.get("commit", "not recorded")
        sections.append(
            f"## {data['title']}\n\n_Measured {data['measured_utc']} at commit `{commit}` on "
            f"{describe_machine(data['machine'])}._\n\n{data['markdown'].strip()}\n"
        )
    text = (
        "# Benchmarks\n\n"
        "Produced by `make bench` (`python -m bench.run`) from `docs/bench-results/*.json`. Where two "
        "things are compared, the two sides are measured in alternating rounds (A B, B A, ...) and the "
        "headline is the median of the per-round ratios with its range, so load from elsewhere on this "
        "shared host falls on both sides of each ratio alike; absolute times are for this machine only. "
        "Each section says which figures come from the real agent (`edge-agent run`) and which are "
        "component figures. A `+dirty` commit means the figures were measured on a working tree with "
        "uncommitted changes on top of that commit. Tests never assert timings; the README's figures are "
        "checked against these results by `tests/unit/bench/test_claims.py`.\n\n"
        + "\n".join(sections)
    )
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text(text)
    return out


# A figure the README quotes is written ``**73.6 MB**<!-- bench:agent_pipeline.digits_peak_rss_mb -->``:
# the number (optionally bold, optionally followed by a unit) right before the marker.
CLAIM = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?:\*\*)?(?:\s*(?:MB|ms|s|%|x|×))?(?:\*\*)?\s*"
                   r"<!-- bench:(?P<bench>[a-z0-9_]+)\.(?P<key>[a-z0-9_]+) -->")


@dataclass(frozen=True)
class Claim:
    """A figure quoted in a document, and the saved result it must equal."""

    bench: str
    key: str
    quoted: str


def find_claims(text: str) -> list[Claim]:
    """Every ``<!-- bench:NAME.KEY -->``-marked figure in ``text``."""
    return [Claim(m["bench"], m["key"], m["number"]) for m in CLAIM.finditer(text)]


def check_claims(text: str, results: Path = RESULTS) -> list[str]:
    """Compare each marked figure in ``text`` with ``results/NAME.json``; returns the mismatches.

    The saved value is rounded to as many decimals as the document shows, so
    ``74<!-- ... -->`` matches 73.6 and ``73.6`` matches 73.62, but ``73.5`` does not.
    A marker that is not preceded by a number is reported too.
    """
    problems = []
    markers = text.count("<!-- bench:")
    claims = find_claims(text)
    if len(claims) != markers:
        problems.append(f"{markers - len(claims)} bench marker(s) not preceded by a number")
    for claim in claims:
        path = results / f"{claim.bench}.json"
        if not path.exists():
            problems.append(f"{claim.bench}.{claim.key}: no {path.name}")
            continue
        figures = json.loads(path.read_text()).get("figures", {})
        if claim.key not in figures:
            problems.append(f"{claim.bench}.{claim.key}: not in {path.name}")
            continue
        decimals = len(claim.quoted.partition(".")[2])
        saved = f"{float(figures[claim.key]):.{decimals}f}"
        if saved != claim.quoted:
            problems.append(f"{claim.bench}.{claim.key}: README says {claim.quoted}, {path.name} has {saved}")
    return problems


@contextmanager
def local_broker(prefix: str = "bench-") -> Iterator[tuple[Mosquitto, Path]]:
    """A Mosquitto on 127.0.0.1 with persistence, and a scratch directory beside it, both gone
    after the block."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        port = free_port()
        broker = Mosquitto(work / "broker", plain_config(work / "broker", port), port)
        broker.start()
        try:
            yield broker, work
        finally:
            broker.stop()
