"""The agent's Prometheus endpoint on 127.0.0.1: the collector reads the real pipeline stats, a real
publisher's counters and a board described by files (a sysfs thermal zone, a ``vcgencmd`` script);
and a real in-process agent with ``[metrics] listen`` whose model info follows a model swap."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent.agent import Agent
from edge_agent.agent.metrics import BUCKETS, BoardReader, MetricsServer, Sources, process_start_time
from edge_agent.agent.stats import MAX_RESULT_LABELS, OTHER_LABEL, PipelineStats, result_labels
from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.publishers.stdout import StdoutPublisher
from tests.tiny_store import make_bundle, shared

HANG = 60.0  # only bounds a hang


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=HANG) as answer:
        assert answer.status == 200
        return str(answer.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, metric: str, /, **labels: str) -> float | None:
    return samples(text).get((metric, tuple(sorted(labels.items()))))


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def assert_port_free(address: tuple[str, int]) -> None:
    """Nobody listens there any more: a new server can (the scrape's own connection may linger in TIME_WAIT)."""
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(address)
        again.listen()


def board(tmp_path: Path, temp_millic: int | None, throttled: str | None) -> BoardReader:
    """A board described by files: a thermal zone (or none) and a ``vcgencmd`` that prints
    ``throttled`` (or fails, as off a Pi)."""
    root = tmp_path / "thermal"
    root.mkdir()
    if temp_millic is not None:
        zone = root / "thermal_zone0"
        zone.mkdir()
        (zone / "type").write_text("cpu-thermal\n")
        (zone / "temp").write_text(f"{temp_millic}\n")
    script = tmp_path / "vcgencmd"
    script.write_text(f"#!/bin/sh\necho '{throttled}'\n" if throttled else "#!/bin/sh\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return BoardReader(str(script), thermal_root=root)


@pytest.fixture
def serve() -> Iterator[Callable[[Sources], MetricsServer]]:
    made: list[MetricsServer] = []

    def start(sources: Sources) -> MetricsServer:
        server = MetricsServer(sources, "127.0.0.1", 0)
        server.start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


def _sources(stats: PipelineStats, reader: BoardReader, publisher: Callable[[], Mapping[str, Any]],
             model: Mapping[str, str] | None = None) -> Sources:
    return Sources(stats, publisher, lambda: model, lambda: 2.5, reader, 1_700_000_000.0)


def test_counters_histograms_and_board_figures_are_read_at_scrape_time(
        tmp_path: Path, serve: Callable[[Sources], MetricsServer]) -> None:
    stats = PipelineStats()
    publisher = StdoutPublisher(EnvelopeFactory("dev1", tmp_path), stream=io.StringIO())
    model = {"name": "colours", "version": "1.0", "sha256": "a" * 64, "manifest_sha256": "b" * 64}
    server = serve(_sources(stats, board(tmp_path, 51234, "throttled=0x50005"), publisher.stats, model))

    first = scrape(server.address)
    assert value(first, "edge_agent_frames_in_total") == 0
    assert value(first, "edge_agent_inference_seconds_count") == 0
    assert value(first, "edge_agent_cpu_temperature_celsius") == 51.2
    # 0x50005: undervoltage and throttled now (bits 0, 2), and in the past (16, 18)
    assert {flag: value(first, "edge_agent_throttled", flag=flag)
            for flag in ("undervoltage", "freq_capped", "throttled", "soft_temp_limit")} == {
        "undervoltage": 1, "freq_capped": 0, "throttled": 1, "soft_temp_limit": 0}
    assert value(first, "edge_agent_model_info", name="colours", version="1.0", sha256="a" * 64,
                 manifest_sha256="b" * 64) == 1
    assert value(first, "edge_agent_health_interval_seconds") == 2.5
    assert value(first, "edge_agent_start_time_seconds") == 1_700_000_000.0

    for _ in range(3):
        stats.record_in(time.monotonic())
    stats.record_inferred(time.monotonic())
    stats.frames_dropped, stats.frames_skipped, stats.frames_skipped_motion, stats.errors = 1, 4, 5, 6
    stats.add("invoke", 0.004)  # in the 0.005 bucket
    stats.add("invoke", 0.2)  # exactly a bound: counted in le="0.2"
    stats.add("invoke", 30.0)  # above every bound: +Inf only
    stats.add("capture", 0.0001)
    stats.record_published("classification", {"classes": [{"label": "red", "score": 0.9},
                                                           {"label": "blue", "score": 0.1}]})
    stats.record_published("detection", {"detections": [{"label": "cat"}, {"label": "cat"}, {"label": "dog"}]})
    publisher.publish("health", {})  # not started: stays queued

    later = scrape(server.address)
    assert (value(later, "edge_agent_frames_in_total"), value(later, "edge_agent_frames_inferred_total"),
            value(later, "edge_agent_frames_dropped_total"), value(later, "edge_agent_inference_errors_total")) == (
        3, 1, 1, 6)
    assert value(later, "edge_agent_frames_skipped_total", reason="stride") == 4
    assert value(later, "edge_agent_frames_skipped_total", reason="motion") == 5
    assert {label: value(later, "edge_agent_results_total", label=label) for label in ("red", "blue", "cat", "dog")} \
        == {"red": 1, "blue": None, "cat": 2, "dog": 1}
    invoke = {le: value(later, "edge_agent_inference_seconds_bucket", le=le) for le in ("0.0025", "0.005", "0.2",
                                                                                          "10.0", "+Inf")}
    assert invoke == {"0.0025": 0, "0.005": 1, "0.2": 2, "10.0": 2, "+Inf": 3}
    assert value(later, "edge_agent_inference_seconds_count") == 3
    assert value(later, "edge_agent_inference_seconds_sum") == pytest.approx(30.204)
    assert value(later, "edge_agent_stage_seconds_count", stage="invoke") == 3
    assert value(later, "edge_agent_stage_seconds_bucket", stage="capture", le=repr(BUCKETS[0])) == 1
    assert value(later, "edge_agent_stage_seconds_count", stage="publish") == 0
    assert value(later, "edge_agent_outbox_depth_messages") == 1
    assert value(later, "edge_agent_reconnects_total") == 0
    assert value(later, "edge_agent_outbox_evicted_total", kind="health") == 0
    assert "edge_agent_outbox_bytes" not in families(later)  # the stdout queue does not count bytes
    promtool = shutil.which("promtool")  # Debian's prometheus package; not on a device
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "metrics"], input=later, capture_output=True, text=True,
                                 timeout=HANG, check=False)
        assert checked.returncode == 0 and checked.stdout == checked.stderr == "", checked.stdout + checked.stderr

    server.stop()  # the histograms are no longer fed, the port is free
    assert all(window.observer is None for window in stats.stages.values())
    assert_port_free(server.address)


def test_a_board_that_reports_nothing_gives_no_figures(tmp_path: Path,
                                                       serve: Callable[[Sources], MetricsServer]) -> None:
    text = scrape(serve(_sources(PipelineStats(), board(tmp_path, None, None), dict)).address)
    names = families(text)
    assert "edge_agent_cpu_temperature_celsius" not in names and "edge_agent_throttled" not in names
    assert "edge_agent_model_info" not in names  # no model yet
    assert "edge_agent_frames_in" in names  # counters drop the _total suffix in the family name


def test_a_failing_part_is_left_out_and_the_scrape_still_answers(
        tmp_path: Path, serve: Callable[[Sources], MetricsServer]) -> None:
    def broken() -> Mapping[str, Any]:
        raise RuntimeError("publisher gone")

    text = scrape(serve(_sources(PipelineStats(), board(tmp_path, 40000, None), broken)).address)
    assert "edge_agent_outbox_depth_messages" not in families(text)
    assert value(text, "edge_agent_cpu_temperature_celsius") == 40.0 and value(text, "edge_agent_frames_in_total") == 0


def test_the_board_is_read_at_most_once_a_second(tmp_path: Path) -> None:
    now = [100.0]
    reader = board(tmp_path, 50000, "throttled=0x0")
    reader = BoardReader(reader._vcgencmd, thermal_root=tmp_path / "thermal", clock=lambda: now[0])
    assert reader.read().cpu_temp_c == 50.0
    (tmp_path / "thermal" / "thermal_zone0" / "temp").write_text("60000\n")
    now[0] += 0.5
    assert reader.read().cpu_temp_c == 50.0  # the cached reading
    now[0] += 0.6
    assert reader.read().cpu_temp_c == 60.0


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stats = PipelineStats()
        with pytest.raises(ConfigError) as caught:
            MetricsServer(_sources(stats, board(tmp_path, None, None), dict), "127.0.0.1", port)
    assert str(caught.value) == (f"cannot serve metrics on 127.0.0.1:{port}: Address already in use; choose another "
                                 "address with --metrics HOST:PORT ([metrics] listen)")
    assert all(window.observer is None for window in stats.stages.values())


def test_result_labels_per_task_and_the_cap_on_distinct_labels() -> None:
    assert result_labels("classification", {"classes": [{"label": "a"}, {"label": "b"}]}) == ["a"]
    assert result_labels("classification", {"classes": []}) == []
    assert result_labels("detection", {"detections": [{"label": "a"}, {"label": "a"}]}) == ["a", "a"]
    assert result_labels("audio", {"label": "yes", "classes": [{"label": "yes"}, {"label": "no"}]}) == ["yes"]
    assert result_labels("audio", {"classes": [{"label": "dog"}, {"label": "siren"}]}) == ["dog", "siren"]
    stats = PipelineStats()
    for i in range(MAX_RESULT_LABELS + 5):
        stats.record_published("detection", {"detections": [{"label": f"l{i}"}]})
    stats.record_published("detection", {"detections": [{"label": "l0"}]})
    assert len(stats.results_by_label) == MAX_RESULT_LABELS + 1 and stats.results_by_label[OTHER_LABEL] == 5
    assert stats.results_by_label["l0"] == 2 and stats.results_published == MAX_RESULT_LABELS + 6


def test_process_start_time_is_before_now() -> None:
    started = process_start_time()
    assert started <= time.time() and started > time.time() - 86400 * 365  # this process started this year


def _folder(path: Path) -> Path:
    path.mkdir()
    for i, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        cv2.imwrite(str(path / f"{i}.png"), np.full((48, 64, 3), colour, np.uint8))
    return path


def test_a_running_agent_serves_its_metrics_and_the_model_after_a_swap(tmp_path: Path) -> None:
    bundle = tmp_path / "model.bundle"
    bundle.write_bytes(shared("metrics-colours", lambda d: make_bundle(d / "c.bundle")).read_bytes())
    cli = {"model": {"bundle": bundle}, "state_dir": tmp_path / "state", "publisher": "stdout",
           "source": {"uri": str(_folder(tmp_path / "frames")), "loop": True, "fps": 200},
           "events": {"policy": "every"}, "metrics": {"listen": "127.0.0.1:0"}}
    agent = Agent(load_config(None, cli, environ={}))
    agent.start()
    try:
        address = agent.metrics_address
        assert address is not None and address[1] > 0
        deadline = time.monotonic() + HANG
        while agent.progress_counter < 10:
            assert time.monotonic() < deadline, "no inferences"
            time.sleep(0.02)
        text = scrape(address)
        inferred = value(text, "edge_agent_frames_inferred_total")
        assert inferred is not None and inferred >= 10
        assert value(text, "edge_agent_inference_seconds_count") >= inferred  # type: ignore[operator]
        results = sum(value(text, "edge_agent_results_total", label=c) or 0 for c in ("red", "green", "blue"))
        assert results >= 10 and value(text, "edge_agent_health_interval_seconds") == 30.0
        info = agent.model.info()
        assert value(text, "edge_agent_model_info", **info) == 1

        make_bundle(tmp_path / "v2.bundle", version="2.0", size=24)  # OTA-like: a new model at the path
        os.replace(tmp_path / "v2.bundle", bundle)
        new = agent.reload_model()
        assert new["version"] == "2.0" and new["sha256"] != info["sha256"]
        swapped = scrape(address)
        assert value(swapped, "edge_agent_model_info", **new) == 1
        assert value(swapped, "edge_agent_model_info", **info) is None  # one model_info series: the running one
    finally:
        agent.request_stop("test")
        agent.stop()
    assert agent.metrics_address is None
    assert_port_free(address)
