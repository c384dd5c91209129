"""``edge-agent run --metrics`` as a real child process publishing to a real Mosquitto: ``/metrics``
scraped over HTTP, counters that grow with frames, the model info of the bundle it runs, Debian's
``promtool check metrics`` clean on what it serves, the outbox and reconnect figures through a broker
outage; a port in use is one line and a failed start."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.broker import Mosquitto, free_port
from edge_agent.model.bundle import read_bundle
from edge_agent.model.loader import bundle_identity
from tests.integration.agent_helpers import ROOT, agent_env
from tests.integration.mqtt_helpers import RealAgent
from tests.tiny_store import make_bundle, shared

pytestmark = pytest.mark.integration

HANG = 60.0  # only bounds a hang
PROMTOOL = shutil.which("promtool")


def _frames(path: Path) -> Path:
    path.mkdir()
    for i, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        cv2.imwrite(str(path / f"{i}.png"), np.full((48, 64, 3), colour, np.uint8))
    return path


def _bundle() -> Path:
    return shared("metrics-colours", lambda d: make_bundle(d / "colours.bundle"))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=HANG) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        return str(answer.read().decode())


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _wait_scrape(agent: RealAgent, port: int, enough: float, after: float = 0.0) -> str:
    """The first scrape with more than ``after`` and at least ``enough`` frames inferred."""
    deadline = time.monotonic() + HANG
    while True:
        assert agent.alive, agent.log()
        try:
            text = _scrape(port)
            inferred = _samples(text).get(("edge_agent_frames_inferred_total", ()), 0.0)
            if inferred >= enough and inferred > after:
                return text
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"no scrape with {enough} frames inferred: {agent.log()}"
        time.sleep(0.1)


@pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's prometheus package (promtool)")
def test_metrics_of_a_running_agent_grow_name_its_model_and_pass_promtool(
        tmp_path: Path, mqtt_broker: Mosquitto, unique_id: str) -> None:
    bundle = _bundle()
    port = free_port()
    agent = RealAgent(mqtt_broker.url, unique_id, tmp_path / "state", bundle, _frames(tmp_path / "frames"),
                      "--metrics", f"127.0.0.1:{port}", fps=50, health_interval=0.5)
    try:
        first = _wait_scrape(agent, port, 5)
        second = _wait_scrape(agent, port, 5, after=_samples(first)[("edge_agent_frames_inferred_total", ())])
        before, after = _samples(first), _samples(second)
        for counter in ("edge_agent_frames_in_total", "edge_agent_frames_inferred_total",
                        "edge_agent_inference_seconds_count"):
            assert after[(counter, ())] > before[(counter, ())], counter
        labels = ("red", "green", "blue")
        published = sum(after.get(("edge_agent_results_total", (("label", c),)), 0.0) for c in labels)
        assert published > sum(before.get(("edge_agent_results_total", (("label", c),)), 0.0) for c in labels)

        verified = read_bundle(bundle)
        model = {"name": "colours", "version": "1.0", "sha256": hashlib.sha256(verified.model_bytes).hexdigest(),
                 "manifest_sha256": bundle_identity(verified.manifest_bytes)}
        assert after[("edge_agent_model_info", tuple(sorted(model.items())))] == 1
        assert after[("edge_agent_health_interval_seconds", ())] == 0.5
        assert ("edge_agent_outbox_depth_messages", ()) in after and ("edge_agent_outbox_bytes", ()) in after
        assert after[("edge_agent_reconnects_total", ())] == 0
        assert {kind for (name, labels_), _ in after.items() if name == "edge_agent_outbox_evicted_total"
                for _, kind in labels_} == {"health", "results", "age"}
        started = after[("edge_agent_start_time_seconds", ())]
        assert started <= time.time()

        t0 = time.perf_counter()
        text = _scrape(port)
        print(f"one scrape: {(time.perf_counter() - t0) * 1000:.1f} ms, {len(text)} bytes")  # measured, not asserted
        checked = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=HANG, check=False)
        assert checked.returncode == 0 and checked.stdout == checked.stderr == "", checked.stdout + checked.stderr
        assert agent.terminate() == 0, agent.log()
        with socket.socket() as again:  # the port is free once the agent has stopped
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
    finally:
        agent.close()


def test_a_metrics_port_in_use_is_one_line_and_the_agent_does_not_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent", "run", "--bundle", str(_bundle()),
             "--source", str(_frames(tmp_path / "frames")), "--state-dir", str(tmp_path / "state"),
             "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=HANG, cwd=ROOT, env=agent_env(), check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"edge-agent: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use; "
                           "choose another address with --metrics HOST:PORT ([metrics] listen)\n")
    assert not (tmp_path / "state" / "agent.pid").exists()  # nothing left behind


def test_outbox_and_reconnects_follow_a_broker_outage(tmp_path: Path, mqtt_broker_fn: Mosquitto,
                                                      unique_id: str) -> None:
    port = free_port()
    agent = RealAgent(mqtt_broker_fn.url, unique_id, tmp_path / "state", _bundle(), _frames(tmp_path / "frames"),
                      "--metrics", f"127.0.0.1:{port}", fps=20, health_interval=0.2, keepalive=5)
    try:
        def metric(name: str, text: str) -> float:
            return _samples(text).get((name, ()), -1.0)

        def wait(predicate: Callable[[str], bool], what: str) -> str:
            deadline = time.monotonic() + HANG
            while True:
                assert agent.alive, agent.log()
                try:
                    text = _scrape(port)
                    if predicate(text):
                        return text
                except OSError:
                    pass  # not listening yet
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {agent.log()}"
                time.sleep(0.1)

        wait(lambda t: metric("edge_agent_frames_inferred_total", t) >= 5, "inferences")
        mqtt_broker_fn.kill()
        down = wait(lambda t: metric("edge_agent_outbox_depth_messages", t) >= 5, "messages waiting in the outbox")
        assert metric("edge_agent_outbox_bytes", down) > 0 and metric("edge_agent_reconnects_total", down) == 0
        mqtt_broker_fn.start()
        wait(lambda t: metric("edge_agent_reconnects_total", t) >= 1, "the reconnection to be counted")
        assert agent.terminate() == 0, agent.log()
    finally:
        agent.close()
