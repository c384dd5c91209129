"""A real Prometheus, configured from the shipped ``deploy/prometheus/prometheus.yml``, scraping two
real agents (``edge-agent run --metrics``) and a real ``edge-fleet exporter`` fed by those agents and
by ``edge-fleet simulate`` through a real Mosquitto: every query of every panel of the shipped
Grafana dashboard returns data, the shipped rules load and evaluate, and a simulated device that
goes away puts ``EdgeDeviceDown`` in the pending (or firing) state.

The test's config differs from the shipped one only in its targets, its file_sd path and its
intervals (1 s, see :func:`tests.integration.prometheus_helpers.render_config`); the alert rules are
the shipped ones, ``for:`` included (pending is checked, which needs no shortening).
The agents find a stand-in ``vcgencmd`` on their PATH that answers ``throttled=0x0`` (the board's
firmware tool, absent off a Raspberry Pi), so they report real throttling flags, all clear.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.broker import Mosquitto, free_port
from tests.integration.mqtt_helpers import RealAgent, fleet_cli_bg, wait_until
from tests.integration.prometheus_helpers import (
    AGENT_JOB,
    ALERTS,
    EXPORTER_JOB,
    Prometheus,
    Query,
    dashboard_queries,
    load_yaml,
    render_config,
)
from tests.tiny_store import make_bundle, shared

pytestmark = pytest.mark.integration

HANG = 180.0  # bounds each wait on a loaded machine; never a measurement
SIM_DEVICES = 3


def _frames(path: Path) -> Path:
    path.mkdir()
    for i, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        cv2.imwrite(str(path / f"{i}.png"), np.full((48, 64, 3), colour, np.uint8))
    return path


def _vcgencmd(bin_dir: Path) -> Path:
    bin_dir.mkdir()
    tool = bin_dir / "vcgencmd"
    tool.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] && echo throttled=0x0\n")
    tool.chmod(0o755)
    return bin_dir


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Fleet:
    """What runs for the test; everything is stopped at teardown."""

    def __init__(self) -> None:
        self.agents: list[RealAgent] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.prometheus: Prometheus | None = None

    def logs(self) -> str:
        out = [f"--- agent {a.log_path.name}\n{a.log()[-1500:]}" for a in self.agents]
        out += [f"--- {p.args!r}: exit {p.poll()}" for p in self.procs]
        if self.prometheus is not None:
            out.append(f"--- prometheus\n{self.prometheus.log()[-2000:]}")
        return "\n".join(out)

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for proc in self.procs:
            _stop(proc)
        for agent in self.agents:
            agent.close()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    made = Fleet()
    yield made
    made.close()


def _empty(prometheus: Prometheus, queries: list[Query]) -> list[Query]:
    return [q for q in queries if not prometheus.query(q.expr)]


def test_dashboard_queries_return_data_and_alerts_evaluate(
        fleet: Fleet, mqtt_broker_fn: Mosquitto, unique_id: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = mqtt_broker_fn.url
    monkeypatch.setenv("PATH", f"{_vcgencmd(tmp_path / 'bin')}:{os.environ['PATH']}")
    bundle = shared("metrics-colours", lambda d: make_bundle(d / "colours.bundle"))
    frames = _frames(tmp_path / "frames")

    exporter_port = free_port()
    fleet.procs.append(fleet_cli_bg("exporter", "--broker", url, "--listen", f"127.0.0.1:{exporter_port}"))
    agents: dict[str, int] = {}
    for n in range(2):
        device, port = f"{unique_id}-cam{n}", free_port()
        fleet.agents.append(RealAgent(url, device, tmp_path / f"state-{n}", bundle, frames,
                                      "--metrics", f"127.0.0.1:{port}", fps=10, health_interval=1.0))
        agents[device] = port
    fleet.procs.append(fleet_cli_bg("simulate", "--broker", url, "--devices", str(SIM_DEVICES), "--rate", "1",
                                    "--duration", "3600", "--prefix", f"{unique_id}-sim-"))
    gone = fleet_cli_bg("simulate", "--broker", url, "--devices", "1", "--rate", "1", "--duration", "3600",
                        "--prefix", f"{unique_id}-gone-")
    fleet.procs.append(gone)

    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    config = render_config(workdir, [f"127.0.0.1:{exporter_port}"],
                           [{"targets": [f"127.0.0.1:{port}"], "labels": {"device_id": device}}
                            for device, port in agents.items()])
    prometheus = fleet.prometheus = Prometheus(config, workdir)
    assert wait_until(prometheus.ready, HANG), fleet.logs()

    # Every target up: the exporter and both agents, each agent target labelled with its device id.
    def targets_up() -> bool:
        active = prometheus.api("targets")["activeTargets"]
        return len(active) == 3 and all(t["health"] == "up" for t in active)

    assert wait_until(targets_up, HANG), (prometheus.api("targets"), fleet.logs())
    active = prometheus.api("targets")["activeTargets"]
    assert {t["labels"]["job"] for t in active} == {EXPORTER_JOB, AGENT_JOB}
    assert {t["labels"].get("device_id") for t in active if t["labels"]["job"] == AGENT_JOB} == set(agents)

    # Every device known to the exporter and up, the one about to go away included.
    sims = {f"{unique_id}-sim-{i:05d}" for i in range(SIM_DEVICES)}
    gone_id = f"{unique_id}-gone-00000"
    devices = set(agents) | sims | {gone_id}

    def all_up() -> bool:
        up = {r["metric"]["device_id"]: r["value"][1] for r in prometheus.query("device_id:edge_device_up:max")}
        return all(up.get(d) == "1" for d in devices)

    assert wait_until(all_up, HANG), (prometheus.query("edge_device_up"), fleet.logs())
    # The dashboard's device variable: label_values(edge_device_up, device_id).
    values = prometheus.api("label/device_id/values", **{"match[]": "edge_device_up"})
    assert devices <= set(values)
    # The agents' own series carry device_id (relabelling) and so join the exporter's series.
    joined = prometheus.query(f'edge_agent_frames_inferred_total{{job="{AGENT_JOB}"}} '
                              "* on (device_id) group_left max by (device_id) (edge_device_up)")
    assert {r["metric"]["device_id"] for r in joined} == set(agents)

    # Every query of every panel returns data.
    queries = dashboard_queries()
    empty: list[Query] = []

    def all_answer() -> bool:
        empty[:] = _empty(prometheus, queries)
        return not empty

    assert wait_until(all_answer, HANG, step=1.0), "\n".join(map(str, empty)) + "\n" + fleet.logs()

    # The shipped rules are loaded and evaluate without error.
    shipped = {r.get("alert") or r.get("record") for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}

    def rules_ok() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules) \
            else None

    assert wait_until(lambda: rules_ok() is not None, HANG), json.dumps(prometheus.api("rules"))[:4000]
    rules = rules_ok() or []
    assert {r["name"] for r in rules} == shipped

    # A simulated device goes away (killed: no clean offline): stale after 2.5 health intervals, so
    # edge_device_up 0, so EdgeDeviceDown pending (firing only after its 5 minutes).
    gone.kill()
    gone.wait(10)

    def down_alert() -> dict[str, Any] | None:
        for alert in prometheus.api("alerts")["alerts"]:
            if alert["labels"]["alertname"] == "EdgeDeviceDown" and alert["labels"].get("device_id") == gone_id:
                return dict(alert)
        return None

    assert wait_until(lambda: down_alert() is not None, HANG), (prometheus.api("alerts"), fleet.logs())
    alert = down_alert() or {}
    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["severity"] == "critical"
