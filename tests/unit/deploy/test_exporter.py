"""The exporter's metric families over a fleet state fed by hand (no broker: the link is never started)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deploy.exporter import Exporter, parse_listen, subscriptions
from edge_agent.errors import EdgeError
from edge_agent.messaging.link import InboundMessage, MqttSettings

CONTRACT = {
    "edge_device_up", "edge_device_stale", "edge_device_info", "edge_fleet_messages_total",
    "edge_device_messages_total", "edge_device_seq_gaps_total", "edge_device_seq_missing",
    "edge_device_duplicates_total", "edge_device_last_seen_timestamp_seconds", "edge_device_fps_inferred",
    "edge_device_inference_p95_seconds", "edge_device_cpu_temperature_celsius", "edge_device_throttled",
    "edge_device_duplicate_id",
    "edge_device_outbox_depth_messages", "edge_device_outbox_evicted_total", "edge_device_reconnects_total",
    "edge_device_memory_rss_bytes", "edge_device_cpu_ratio", "edge_device_results_total",
    "edge_device_health_interval_seconds", "edge_exporter_devices", "edge_exporter_peers",
}


def _msg(seq: int, **body: Any) -> bytes:
    return json.dumps({"schema": "edge/v1", "device_id": "d1", "boot_id": "b", "session": "s", "seq": seq,
                       "ts_ms": 1, "replayed": False, **body}).encode()


def _samples(exporter: Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exporter.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_contract_metric_with_device_figures() -> None:
    now = [1000.0]
    exporter = Exporter(MqttSettings(broker="mqtt://127.0.0.1:1"), clock=lambda: now[0])
    handle = exporter.state.handle
    handle("edge/v1/d1/status", _msg(0, state="online", agent_version="0.9", health_interval_s=2.0,
                                     model={"name": "digits", "version": "3", "sha256": "ab"}))
    handle("edge/v1/d1/health", _msg(1, fps_inferred=12.5, cpu_temp_c=55.0, cpu_percent=40.0,
                                     latency_ms={"invoke": {"p95": 8.0}, "total": {"p95": 12.0}},
                                     throttled={"undervoltage": True}, outbox={"depth": 2, "evicted": 1},
                                     reconnects=3, mem={"rss_bytes": 1000}, health_interval_s=2.0,
                                     duplicate_device_id=True))
    handle("edge/v1/d1/evt/classification", _msg(3, classes=[{"label": "7", "score": 0.9}]))
    handle("edge/v1/d1/evt/classification", _msg(3, classes=[{"label": "7", "score": 0.9}]))
    samples = _samples(exporter)
    assert {name for name, _ in samples} == CONTRACT
    d = (("device_id", "d1"),)
    expect = {
        "edge_device_up": 1.0, "edge_device_stale": 0.0, "edge_device_messages_total": 4.0,
        "edge_device_seq_missing": 1.0, "edge_device_seq_gaps_total": 0.0, "edge_device_duplicates_total": 1.0,
        "edge_device_fps_inferred": 12.5, "edge_device_inference_p95_seconds": 0.008,
        "edge_device_cpu_temperature_celsius": 55.0, "edge_device_throttled": 1.0, "edge_device_duplicate_id": 1.0,
        "edge_device_outbox_depth_messages": 2.0, "edge_device_outbox_evicted_total": 1.0,
        "edge_device_reconnects_total": 3.0, "edge_device_memory_rss_bytes": 1000.0, "edge_device_cpu_ratio": 0.4,
        "edge_device_health_interval_seconds": 2.0, "edge_device_last_seen_timestamp_seconds": 1000.0,
    }
    assert {name: samples[(name, d)] for name in expect} == expect
    assert samples[("edge_device_results_total", (("device_id", "d1"), ("label", "7")))] == 2.0
    info = (("agent_version", "0.9"), ("device_id", "d1"), ("model", "digits"), ("model_sha256", "ab"),
            ("model_version", "3"))
    assert samples[("edge_device_info", info)] == 1.0
    assert samples[("edge_fleet_messages_total", (("kind", "evt"),))] == 2.0
    assert (samples[("edge_exporter_devices", ())], samples[("edge_exporter_peers", ())]) == (1.0, 1.0)
    now[0] += 10 * 2.5 + 0.1  # the seq hole settles; no health for 2.5 intervals: stale
    exporter.state.settle()
    samples = _samples(exporter)
    assert (samples[("edge_device_up", d)], samples[("edge_device_stale", d)]) == (0.0, 1.0)
    assert (samples[("edge_device_seq_gaps_total", d)], samples[("edge_device_seq_missing", d)]) == (1.0, 0.0)


def test_digests_from_peers_are_bounded_and_validated() -> None:
    exporter = Exporter(MqttSettings(broker="mqtt://127.0.0.1:1"), share_group="g", member="me")
    topic = "edgefleet/exporter/g/"
    exporter._on_message(InboundMessage(topic + "other", b"x" * 300_000, 1, False))
    exporter._on_message(InboundMessage(topic + "other", b'{"v": 2, "devices": []}', 1, False))
    exporter._on_message(InboundMessage(topic + "other", b"[not json", 1, False))
    assert (exporter.digests_refused, exporter.digests_received, exporter.peer_count()) == (3, 0, 1)
    entry = {"d": "d1", "s": [["b", "s", 0, 4, [], [], 5]]}
    exporter._on_message(InboundMessage(topic + "me", json.dumps({"v": 1, "devices": [entry]}).encode(), 1, False))
    assert exporter.digests_received == 0  # its own digest
    exporter._on_message(InboundMessage(topic + "other", json.dumps({"v": 1, "devices": [entry]}).encode(), 1, False))
    assert exporter.digests_received == 1 and exporter.peer_count() == 2
    assert exporter.state.devices["d1"].sessions[("b", "s")].distinct == 5


def test_subscriptions_and_arguments() -> None:
    assert "$share/g/edge/v1/+/health" in subscriptions("g") and "edge/v1/+/status" in subscriptions("g")
    assert "edgefleet/exporter/g/+" in subscriptions("g")
    assert not any(t.startswith("$share") or t.startswith("edgefleet") for t in subscriptions(None))
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108) and parse_listen(":0") == ("0.0.0.0", 0)
    settings = MqttSettings(broker="mqtt://127.0.0.1:1")
    for bad in ("nohost", "h:99999", "h:x"):
        with pytest.raises(EdgeError):
            parse_listen(bad)
    with pytest.raises(EdgeError, match="share-group"):
        Exporter(settings, share_group="a/b")
    with pytest.raises(EdgeError, match="share-group"):
        Exporter(settings, share_group="g\n")
    with pytest.raises(EdgeError, match="member"):
        Exporter(settings, share_group="g", member="me\n")
    with pytest.raises(EdgeError, match="settle"):
        Exporter(settings, share_group="g", settle_s=1.0, digest_s=1.0)
    with pytest.raises(EdgeError, match="MQTT 5"):
        Exporter(MqttSettings(broker="mqtt://127.0.0.1:1", protocol="3.1.1"), share_group="g")
