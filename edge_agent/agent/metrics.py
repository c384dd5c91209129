"""Prometheus metrics of the running agent: ``edge-agent run --metrics HOST:PORT`` (``[metrics] listen``)
serves ``/metrics`` from a registry of its own.

Nothing is counted twice: a collector reads the pipeline's counters (:class:`PipelineStats`), the
publisher's ``stats()``, the running model and the board's temperature and throttling flags when
Prometheus scrapes. Only the latency histograms are fed per observation, by a hook on each stage's
:class:`~edge_agent.agent.stats.LatencyWindow` (one bisect and two additions per duration).
Names follow the fleet contract (docs/agent.md, "Metrics"); a figure the board does not report
is absent, never 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge_agent.agent.health import THERMAL_ROOT, read_cpu_temp, read_throttled
from edge_agent.agent.stats import PipelineStats
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "edge_agent"
# Seconds: from a fast capture (0.5 ms) to a slow model on a Pi Zero (10 s); dense around 10-300 ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
           0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
THROTTLE_FLAGS = ("undervoltage", "freq_capped", "throttled", "soft_temp_limit")  # the current ones
MAX_CONNECTIONS = 8  # scrapes served at once; more are closed unanswered
CLIENT_TIMEOUT_S = 10.0
BOARD_CACHE_S = 1.0  # scrapes closer together than this share one reading of the board


class Histogram:
    """Bucket counts of one stage's durations. One thread writes (the stage's own); a scrape reads a copy."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """Prometheus buckets (``le`` → cumulative count, ending with ``+Inf``) and the sum."""
        counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass(frozen=True)
class BoardFigures:
    """CPU temperature (°C) and the current throttling flags, None where the board reports none."""

    cpu_temp_c: float | None
    throttled: Mapping[str, Any] | None


class BoardReader:
    """Reads the board at scrape time: the thermal zone and ``vcgencmd get_throttled`` (2 s timeout),
    at most once per :data:`BOARD_CACHE_S` however many scrape at once. Never raises."""

    def __init__(self, vcgencmd: str | None = None, thermal_root: Path = THERMAL_ROOT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._vcgencmd = vcgencmd if vcgencmd is not None else shutil.which("vcgencmd")
        self._thermal_root = thermal_root
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, BoardFigures] | None = None

    def read(self) -> BoardFigures:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last[0] < BOARD_CACHE_S:
                return self._last[1]
            try:
                figures = BoardFigures(read_cpu_temp(self._thermal_root), read_throttled(self._vcgencmd))
            except Exception:  # a scrape never fails on the board
                log.exception("reading the board's temperature and throttling failed")
                figures = BoardFigures(None, None)
            self._last = (now, figures)
            return figures


def process_start_time(now: Callable[[], float] = time.time) -> float:
    """Unix time this process started (from /proc), or now where /proc does not say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return now()


@dataclass(frozen=True)
class Sources:
    """What the collector reads at scrape time (all callables are the running agent's)."""

    stats: PipelineStats
    publisher_stats: Callable[[], Mapping[str, Any]]
    model_info: Callable[[], Mapping[str, str] | None]
    health_interval_s: Callable[[], float]
    board: BoardReader
    start_time: float


class AgentCollector(Collector):
    """Every ``edge_agent_*`` metric, read from :class:`Sources` at each scrape; the stage
    histograms are attached to the stats' latency windows on creation."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.histograms: dict[str, Histogram] = {}
        for name, window in sources.stats.stages.items():
            histogram = Histogram()
            window.observer = histogram.observe
            self.histograms[name] = histogram

    def detach(self) -> None:
        """Stop feeding the histograms (the agent stops serving metrics)."""
        for window in self.sources.stats.stages.values():
            window.observer = None

    def collect(self) -> Iterator[Metric]:
        """Every family; a part that fails is logged and left out, the scrape still answers."""
        src = self.sources
        # The counters before the histograms: the pipeline observes a frame's invoke time, then
        # counts it inferred, so read in this order the histogram's count is never behind the
        # counter in one scrape (read the other way, a frame finishing in between made it so).
        parts: tuple[Callable[[], Iterator[Metric]], ...] = (
            lambda: self._pipeline(src.stats), self._latency, lambda: self._publisher(src),
            lambda: self._board(src.board), lambda: self._model(src), lambda: self._process(src))
        for part in parts:
            try:
                families = list(part())
            except Exception:
                log.exception("collecting metrics failed")
                continue
            yield from families

    @staticmethod
    def _process(src: Sources) -> Iterator[Metric]:
        interval = GaugeMetricFamily(f"{PREFIX}_health_interval_seconds",
                                     "Seconds between health messages (the interval in force).")
        interval.add_metric([], float(src.health_interval_s()))
        yield interval
        start = GaugeMetricFamily(f"{PREFIX}_start_time_seconds", "Unix time the agent process started.")
        start.add_metric([], src.start_time)
        yield start

    def _latency(self) -> Iterator[Metric]:
        invoke = self.histograms.get("invoke")
        if invoke is not None:
            family = HistogramMetricFamily(f"{PREFIX}_inference_seconds",
                                           "Time of one model invocation (interpreter invoke).")
            family.add_metric([], *invoke.cumulative())
            yield family
        stages = HistogramMetricFamily(f"{PREFIX}_stage_seconds", "Time spent per frame in each pipeline stage.",
                                       labels=["stage"])
        for name, histogram in self.histograms.items():
            stages.add_metric([name], *histogram.cumulative())
        yield stages

    @staticmethod
    def _pipeline(stats: PipelineStats) -> Iterator[Metric]:
        for name, value, text in (
            ("frames_in", stats.frames_in, "Frames (or audio windows) read from the source."),
            ("frames_inferred", stats.frames_inferred, "Frames the model ran on."),
            ("frames_dropped", stats.frames_dropped, "Frames dropped because inference lagged (queue full)."),
            ("inference_errors", stats.errors, "Frames whose inference failed."),
        ):
            yield _counter(name, text, [([], value)])
        yield _counter("frames_skipped", "Frames skipped before inference, by reason (stride: over the fps cap; "
                       "motion: still scene).", [(["stride"], stats.frames_skipped),
                                                 (["motion"], stats.frames_skipped_motion)], ["reason"])
        by_label = dict(stats.results_by_label)  # a copy: the inference thread adds labels
        yield _counter("results", "Results published, by label (each detection counts its label).",
                       [([label], count) for label, count in sorted(by_label.items())], ["label"])

    @staticmethod
    def _publisher(src: Sources) -> Iterator[Metric]:
        stats = dict(src.publisher_stats())
        outbox = stats.get("outbox")
        outbox = outbox if isinstance(outbox, Mapping) else {}
        for name, key, text in (("outbox_depth_messages", "depth", "Messages waiting for delivery."),
                                ("outbox_bytes", "bytes", "Bytes the outbox holds.")):
            value = _number(outbox.get(key))
            if value is not None:
                gauge = GaugeMetricFamily(f"{PREFIX}_{name}", text)
                gauge.add_metric([], value)
                yield gauge
        evicted = [([kind], _number(outbox.get(f"evicted_{kind}"))) for kind in ("health", "results", "age")]
        present = [(labels, value) for labels, value in evicted if value is not None]
        if present:
            yield _counter("outbox_evicted", "Messages evicted from the outbox unsent, by kind "
                           "(health, results, age).", present, ["kind"])
        reconnects = _number(stats.get("reconnects"))
        if reconnects is not None:
            yield _counter("reconnects", "Reconnections to the broker.", [([], reconnects)])

    @staticmethod
    def _board(board: BoardReader) -> Iterator[Metric]:
        figures = board.read()
        if figures.cpu_temp_c is not None:
            temp = GaugeMetricFamily(f"{PREFIX}_cpu_temperature_celsius", "CPU temperature.")
            temp.add_metric([], figures.cpu_temp_c)
            yield temp
        if figures.throttled is not None:
            flags = GaugeMetricFamily(f"{PREFIX}_throttled", "1 while the firmware reports the condition now "
                                      "(vcgencmd get_throttled).", labels=["flag"])
            for flag in THROTTLE_FLAGS:
                flags.add_metric([flag], 1.0 if figures.throttled.get(flag) else 0.0)
            yield flags

    @staticmethod
    def _model(src: Sources) -> Iterator[Metric]:
        info = src.model_info()
        if info is None:
            return
        family = GaugeMetricFamily(f"{PREFIX}_model_info", "The running model (1).",
                                   labels=["name", "version", "sha256", "manifest_sha256"])
        family.add_metric([str(info.get(key, "")) for key in ("name", "version", "sha256", "manifest_sha256")], 1.0)
        yield family


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _counter(name: str, text: str, samples: Iterable[tuple[list[str], float | None]],
             labels: list[str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=labels)
    for values, value in samples:
        if value is not None:
            family.add_metric(values, float(value))
    return family


class MetricsServer:
    """``/metrics`` over HTTP (prometheus_client's WSGI app) for one :class:`AgentCollector`.

    Args:
        sources: what the metrics are read from.
        host, port: where to listen (port 0: any free port, see :attr:`address`).

    Raises:
        ConfigError: the address cannot be listened on (one line).
    """

    def __init__(self, sources: Sources, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = AgentCollector(sources)
        self.registry.register(self.collector)
        try:
            self._server = make_server(host, port, make_wsgi_app(self.registry),
                                       _server_class(host), handler_class=_QuietHandler)
        except OSError as exc:
            self.collector.detach()
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                              "choose another address with --metrics HOST:PORT ([metrics] listen)") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        log.info("Prometheus metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self.collector.detach()


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    class Server(ThreadingWSGIServer):
        """One thread per connection, at most :data:`MAX_CONNECTIONS` at once (more are closed)."""

        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_address = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._open = threading.BoundedSemaphore(MAX_CONNECTIONS)
            super().__init__(*args, **kwargs)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._open.acquire(blocking=False):
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._open.release()

    return Server


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S  # a client that sends (or takes) nothing this long is dropped

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s: " + format, self.client_address[0], *args)
