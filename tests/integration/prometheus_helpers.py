"""The shipped Prometheus and Grafana files (deploy/prometheus, deploy/grafana) and a real Prometheus.

- :func:`dashboard_queries`: every panel target of the dashboard, dashboard variables substituted.
- :func:`render_config`: the shipped ``prometheus.yml`` with only targets, file_sd paths, rule file
  paths and intervals replaced (its relabelling is kept, so a test exercises it).
- :class:`Prometheus`: ``prometheus`` in a child process on a free loopback port, and its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.broker import free_port

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "edge-fleet.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
EXPORTER_JOB = "edge-fleet-exporter"
AGENT_JOB = "edge-agent"

# What Grafana puts in place of its variables when every device is selected; 15 s is at least four
# scrapes at the test's 1 s interval, so rate() always has two samples.
VARIABLES = {"device_id": ".*", "__rate_interval": "15s", "__interval": "15s", "__range": "5m"}


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref}: {self.expr}"


def substitute(expr: str, variables: dict[str, str] = VARIABLES) -> str:
    """``$name`` and ``${name}`` replaced (longest names first, so ``$__rate_interval`` is not ``$__r…``)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    dashboard = json.loads(path.read_text())
    return [Query(p["title"], t["refId"], substitute(t["expr"]))
            for p in panels(dashboard) for t in p.get("targets", [])]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def render_config(out_dir: Path, exporters: list[str], agents: list[dict[str, Any]] | None = None,
                  interval: str = "1s") -> Path:
    """The shipped config for a test, written to ``out_dir/prometheus.yml``: the exporter job's targets
    replaced, the agent job's file_sd reading ``out_dir/agents/*.yml`` (``agents`` = file_sd target
    groups), the rule files copied beside it, and every interval set to ``interval``. Nothing else changes."""
    config = load_yaml(CONFIG)
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    for name in config.get("rule_files", []):
        shutil.copy(PROMETHEUS_DIR / name, out_dir / name)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {EXPORTER_JOB, AGENT_JOB}, jobs
    exporter = jobs[EXPORTER_JOB]
    exporter["static_configs"] = [{"targets": exporters}]
    agent = jobs[AGENT_JOB]
    for job in jobs.values():
        for key in ("scrape_interval", "scrape_timeout"):
            job.pop(key, None)
    (sd,) = agent["file_sd_configs"]
    sd["files"] = [str(out_dir / "agents" / "*.yml")]
    sd["refresh_interval"] = interval
    (out_dir / "agents").mkdir(exist_ok=True)
    (out_dir / "agents" / "fleet.yml").write_text(yaml.safe_dump(agents or []))
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """A real ``prometheus`` on 127.0.0.1 with its own TSDB; :meth:`stop` at the end."""

    def __init__(self, config: Path, workdir: Path, binary: str = "prometheus") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the ``data`` of a ``success`` answer, else AssertionError."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        assert body.get("status") == "success", (url, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

