"""Pipeline statistics: percentiles, rates, pure snapshots; health figure parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent.health import HealthSampler, parse_throttled, read_cpu_temp
from edge_agent.agent.stats import LatencyWindow, PipelineStats, RateMeter


def test_latency_percentiles_in_ms() -> None:
    window = LatencyWindow()
    for v in range(1, 101):
        window.add(v / 1000.0)
    snap = window.snapshot()
    assert snap["p50"] == pytest.approx(50.5)
    assert snap["p95"] == pytest.approx(95.05)
    assert snap["p99"] == pytest.approx(99.01)
    assert snap["n"] == 100


def test_latency_window_is_bounded_but_counts_everything() -> None:
    window = LatencyWindow(size=10)
    for _ in range(100):
        window.add(1.0)
    for _ in range(10):
        window.add(0.001)
    snap = window.snapshot()
    assert snap["p99"] == pytest.approx(1.0) and snap["n"] == 110


def test_empty_latency_is_null() -> None:
    assert LatencyWindow().snapshot()["p50"] is None


def test_rate_meter_over_recent_window() -> None:
    meter = RateMeter()
    for i in range(11):
        meter.mark(100.0 + i * 0.1)  # 10 per second
    assert meter.rate(101.0) == pytest.approx(10.0)
    assert meter.rate(200.0) == 0.0  # all stale


def test_rate_meter_says_zero_once_events_stop() -> None:
    """A camera that is reconnecting delivers nothing: fps_in must not coast on the last seconds."""
    meter = RateMeter()
    for i in range(11):
        meter.mark(100.0 + i * 0.1)  # 10 per second, then nothing
    assert meter.rate(101.05) == pytest.approx(10 / 1.05, abs=0.01)  # still flowing: one interval late
    assert meter.rate(102.5) == 0.0  # 1.5 s (15 intervals) without a frame, inside the 5 s window
    slow = RateMeter()
    for i in range(3):
        slow.mark(100.0 + i * 2.0)  # one every 2 s
    assert slow.rate(105.0) == pytest.approx(0.4, abs=0.01)  # 1 s late is not "stopped" at this rate
    assert slow.rate(110.5) == 0.0


def test_snapshot_is_pure_and_complete() -> None:
    stats = PipelineStats()
    for i in range(5):
        stats.record_in(10.0 + i)
        stats.record_inferred(10.0 + i)
        stats.add("invoke", 0.002)
    stats.frames_dropped = 2
    a = stats.snapshot(now=14.0)
    b = stats.snapshot(now=14.0)
    assert a == b
    assert a["frames_in"] == 5 and a["frames_dropped"] == 2
    assert set(a["latency_ms"]) == {"capture", "preprocess", "invoke", "decode", "publish"}
    assert a["latency_ms"]["invoke"]["p50"] == pytest.approx(2.0)
    assert a["fps_inferred"] == pytest.approx(1.0)
    assert "5 inferred" in stats.summary(now=14.0)
    assert stats.summary(now=14.0).endswith("; invoke p50 2.0 ms p95 2.0 ms")


def test_summary_without_inferences_says_so() -> None:
    stats = PipelineStats()
    stats.record_in(10.0)
    line = stats.summary(now=11.0)
    assert line.endswith("; no inferences") and "None" not in line, line
    assert line.startswith("1 in, 0 inferred, 0 dropped, 0 published")


def test_parse_throttled_flags() -> None:
    flags = parse_throttled("throttled=0x50005\n")
    assert flags is not None
    assert flags["undervoltage"] and flags["throttled"] and not flags["freq_capped"]
    assert flags["undervoltage_occurred"] and flags["throttled_occurred"]
    assert parse_throttled("garbage") is None


def test_cpu_temp_from_thermal_zones(tmp_path: Path) -> None:
    assert read_cpu_temp(tmp_path) is None  # no zones: null, never invented
    for name, kind, temp in (("thermal_zone0", "acpitz", "30000"), ("thermal_zone1", "cpu-thermal", "48312")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "temp").write_text(temp + "\n")
    assert read_cpu_temp(tmp_path) == pytest.approx(48.3)


def test_health_sample_has_all_fields(tmp_path: Path) -> None:
    sampler = HealthSampler(tmp_path)
    np.ones(10000).sum()
    sample = sampler.sample()
    for key in ("cpu_temp_c", "throttled", "cpu_percent", "mem", "disk_free_bytes", "uptime_s"):
        assert key in sample
    assert sample["disk_free_bytes"] > 0
    assert sample["mem"]["rss_bytes"] > 0


def test_model_swap_forgets_model_latency_but_keeps_counts() -> None:
    stats = PipelineStats()
    for _ in range(50):
        stats.add("invoke", 0.100)  # a slow old model
        stats.add("capture", 0.010)
    stats.forget_model_latency()
    stats.add("invoke", 0.002)
    snap = stats.snapshot()
    assert snap["latency_ms"]["invoke"]["p95"] == 2.0
    assert snap["latency_ms"]["invoke"]["n"] == 51
    assert snap["latency_ms"]["capture"]["p95"] == 10.0  # not model-dependent: kept


def test_frames_skipped_for_a_still_scene_are_counted_and_summarised() -> None:
    stats = PipelineStats()
    assert stats.snapshot()["frames_skipped_motion"] == 0
    assert "no motion" not in stats.summary()
    stats.frames_skipped_motion = 7
    assert stats.snapshot()["frames_skipped_motion"] == 7
    assert "7 skipped (no motion)" in stats.summary()
