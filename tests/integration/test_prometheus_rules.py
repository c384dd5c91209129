"""The shipped Prometheus config, alerts and Grafana dashboard, checked with the real ``promtool``.

``promtool check config`` / ``check rules`` / ``test rules`` on the files as shipped; every dashboard
query parsed by promtool (as a recording rule); every metric the files name is one the fleet contract
defines (docs/deploy.md); every alert has a unit test where it fires and one where it does not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.mqtt_helpers import wait_until
from tests.integration.prometheus_helpers import (
    AGENT_JOB,
    ALERTS,
    ALERTS_TEST,
    CONFIG,
    DASHBOARD,
    PROMETHEUS_DIR,
    PROVISIONING,
    Prometheus,
    dashboard_queries,
    load_yaml,
    panels,
    render_config,
)

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # CI installs Debian's prometheus (.ci/sysdeps)

# The names the agent (edge-agent run --metrics) and the exporter (edge-fleet exporter) serve.
AGENT_METRICS = {
    "edge_agent_inference_seconds", "edge_agent_stage_seconds", "edge_agent_frames_in_total",
    "edge_agent_frames_inferred_total", "edge_agent_frames_dropped_total", "edge_agent_frames_skipped_total",
    "edge_agent_inference_errors_total", "edge_agent_results_total", "edge_agent_outbox_depth_messages",
    "edge_agent_outbox_bytes", "edge_agent_outbox_evicted_total", "edge_agent_reconnects_total",
    "edge_agent_cpu_temperature_celsius", "edge_agent_throttled", "edge_agent_model_info",
    "edge_agent_health_interval_seconds", "edge_agent_start_time_seconds",
}
EXPORTER_METRICS = {
    "edge_device_up", "edge_device_stale", "edge_device_info", "edge_fleet_messages_total",
    "edge_device_messages_total", "edge_device_seq_gaps_total", "edge_device_seq_missing",
    "edge_device_duplicates_total", "edge_device_last_seen_timestamp_seconds", "edge_device_fps_inferred",
    "edge_device_inference_p95_seconds", "edge_device_cpu_temperature_celsius", "edge_device_throttled",
    "edge_device_duplicate_id",
    "edge_device_outbox_depth_messages", "edge_device_outbox_evicted_total", "edge_device_reconnects_total",
    "edge_device_memory_rss_bytes", "edge_device_cpu_ratio", "edge_device_results_total",
    "edge_device_health_interval_seconds", "edge_exporter_devices", "edge_exporter_peers",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
HANG = 60.0  # bounds a wait on a loaded machine; never a measurement
NAME = re.compile(r"\b(edge_[a-z0-9_]+)")


def promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


def recorded() -> set[str]:
    return {rule["record"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "record" in rule}


def names_in(expr: str) -> set[str]:
    """Metric names an expression reads (recording rules' names like ``device_id:edge_…:max`` excluded)."""
    expr = re.sub(r"[a-z_]+:edge_[a-z0-9_]+:[a-z0-9_]+", "", expr)
    out = set()
    for found in NAME.findall(expr):
        base = next((found.removesuffix(s) for s in HISTOGRAM_SUFFIXES
                     if found.endswith(s) and found.removesuffix(s) in AGENT_METRICS), found)
        out.add(base)
    return out


def test_promtool_checks_the_shipped_config_and_rules() -> None:
    config = promtool("check", "config", CONFIG.name)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "WARNING" not in config.stdout + config.stderr, config.stdout + config.stderr
    rules = promtool("check", "rules", ALERTS.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_alert_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: the device-down alert with its threshold turned round is caught."""
    down = "max by (device_id) (edge_device_up) == 0"
    broken = ALERTS.read_text().replace(down, down.replace("== 0", "== 1"))
    assert broken != ALERTS.read_text()
    (tmp_path / ALERTS.name).write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "EdgeDeviceDown" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule}
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts == fired, f"alerts never tested firing: {alerts - fired}"
    assert alerts == quiet, f"alerts never tested silent: {alerts - quiet}"
    assert {"EdgeDeviceDown", "EdgeDeviceStale", "EdgeDeviceHot", "EdgeDeviceThrottled", "EdgeOutboxGrowing",
            "EdgeSeqGaps", "EdgeInferenceSlow"} <= alerts


def test_every_rule_reads_only_contract_metrics() -> None:
    known = AGENT_METRICS | EXPORTER_METRICS
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            unknown = names_in(rule["expr"]) - known
            assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_dashboard_shape() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 38
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    device = variables["device_id"]
    assert device["multi"] and device["includeAll"] and device["allValue"] == ".*"
    assert device["query"]["query"] == "label_values(edge_device_up, device_id)"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels(dashboard)}
    for wanted in ("Devices up", "Frames inferred per second", "Inference latency p95", "CPU temperature",
                   "Throttled", "Outbox depth", "Sequence gaps, missing, duplicates", "Results per second by label",
                   "Messages per second by kind"):
        assert wanted in titles
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    # Nothing overlaps on the 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[x, y] = panel["title"]


def test_every_dashboard_query_parses_and_reads_contract_metrics(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    known = AGENT_METRICS | EXPORTER_METRICS
    for query in queries:
        assert "$" not in query.expr, f"a dashboard variable left unsubstituted: {query}"
        unknown = names_in(query.expr) - known - {"ALERTS", "up"}
        assert not unknown, (str(query), unknown)
        for name in re.findall(r"[a-z_]+:edge_[a-z0-9_]+:[a-z0-9_]+", query.expr):
            assert name in recorded(), (str(query), name)
    # promtool parses every expression: each one written as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": q.expr}
                                                         for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bad_dashboard_query_is_refused_by_promtool(tmp_path: Path) -> None:
    """The parse check above can fail: promtool refuses an expression with a syntax error."""
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": "dashboard:bad", "expr": "sum by (x (up)"}]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", "dashboard.yml", cwd=tmp_path).returncode != 0


def test_rendered_test_config_keeps_the_relabelling(tmp_path: Path) -> None:
    """What the Prometheus integration test runs is the shipped config with only targets and intervals changed."""
    path = render_config(tmp_path, ["127.0.0.1:1"], [{"targets": ["127.0.0.1:2"], "labels": {"device_id": "d"}}])
    shipped, rendered = load_yaml(CONFIG), load_yaml(path)
    for before, after in zip(shipped["scrape_configs"], rendered["scrape_configs"], strict=True):
        assert before["job_name"] == after["job_name"]
        assert before.get("relabel_configs") == after.get("relabel_configs")
        assert before.get("metric_relabel_configs") == after.get("metric_relabel_configs")
    check = promtool("check", "config", path.name, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_provisioning_files() -> None:
    datasource = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    provider = load_yaml(PROVISIONING / "dashboards" / "edge-fleet.yml")
    (prov,) = provider["providers"]
    assert prov["type"] == "file" and prov["options"]["path"]


def test_agent_targets_get_their_device_id(tmp_path: Path) -> None:
    """A real Prometheus with the shipped relabelling: an agent target keeps the device_id its file_sd entry
    gives, and one without gets its address's host part (name, IPv4 or IPv6). Scrapes may fail: the
    labels are what is checked. Every address is on loopback."""
    agents: list[dict[str, Any]] = [{"targets": ["localhost:1", "127.0.0.2:1", "[::1]:1"]},
                                    {"targets": ["127.0.0.3:1"], "labels": {"device_id": "cam-x"}}]
    config = render_config(tmp_path, ["127.0.0.1:1"], agents)
    prometheus = Prometheus(config, tmp_path)
    try:
        assert wait_until(prometheus.ready, HANG), prometheus.log()

        def agent_targets() -> dict[str, str]:
            active = prometheus.api("targets")["activeTargets"]
            return {t["labels"]["instance"]: t["labels"].get("device_id", "")
                    for t in active if t["labels"]["job"] == AGENT_JOB}

        assert wait_until(lambda: len(agent_targets()) == 4, HANG), prometheus.api("targets")
        assert agent_targets() == {"localhost:1": "localhost", "127.0.0.2:1": "127.0.0.2", "[::1]:1": "::1",
                                   "127.0.0.3:1": "cam-x"}
    finally:
        prometheus.stop()
