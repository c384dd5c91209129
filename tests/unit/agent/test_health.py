"""The health message as one typed record: the wire JSON the agent publishes, and how readers
(edge-fleet, the OTA probe) read it back."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.agent.health import HealthRecord, HealthSampler, PipelineHealth
from edge_agent.agent.stats import PipelineStats
from edge_agent.control import ProbeSample


def _pipeline() -> PipelineHealth:
    stats = PipelineStats()
    stats.frames_inferred, stats.errors = 4, 1
    stats.add("invoke", 0.002)
    snap = stats.snapshot()
    snap["queue_depth"] = 2
    return PipelineHealth(**snap, source={"type": "folder"}, model_sha256="a" * 64, manifest_sha256="b" * 64,
                          model_fallback=None, config_version=3, health_interval_s=30.0)


def test_to_json_is_the_flat_merge_in_order(tmp_path: Any) -> None:
    system = HealthSampler(tmp_path).sample()
    pipeline = _pipeline()
    publisher = {"connected": True, "outbox": {"depth": 5}}
    body = HealthRecord(system, pipeline, publisher).to_json()
    expected: dict[str, Any] = dict(system)
    expected.update(pipeline)
    expected.update(publisher)
    assert json.dumps(body) == json.dumps(expected)  # same keys, values and order
    assert list(body)[: len(system)] == list(system) and list(body)[-2:] == ["connected", "outbox"]


def test_from_json_reads_what_to_json_wrote(tmp_path: Any) -> None:
    record = HealthRecord(HealthSampler(tmp_path).sample(), _pipeline(), {"outbox": {"depth": 5}})
    back = HealthRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert back.to_json() == json.loads(json.dumps(record.to_json()))
    assert back.publisher == {"outbox": {"depth": 5}} and back.outbox_depth == 5
    assert back.fps_inferred == 0.0 and back.p95_ms("total", "invoke") == 2.0
    assert back.probe_sample() == record.probe_sample() == ProbeSample(4, 1, 2.0)


def test_readers_return_none_for_missing_or_mistyped_figures() -> None:
    record = HealthRecord.from_json({"fps_inferred": "fast", "cpu_temp_c": True, "latency_ms": {"invoke": 3},
                                     "outbox_depth": 7})
    assert (record.fps_inferred, record.cpu_temp_c, record.p95_ms("invoke")) == (None, None, None)
    assert record.outbox_depth == 7  # the stdout publisher's queue
    assert HealthRecord().to_json() == {} and HealthRecord().probe_sample() == ProbeSample(0, 0, None)
