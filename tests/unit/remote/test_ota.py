"""The agent as OTA's model host (``edge_agent.control.ModelHost``), without starting it: what it
tells the updater, its one updater, and what OTA refuses before touching the store."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.control import ProbeSample
from edge_agent.remote import ota
from edge_agent.remote.protocol import Ack


def _agent(tmp_path: Path, bundle: Path | None) -> Agent:
    model = {"bundle": str(bundle)} if bundle is not None else {}
    return Agent(AgentConfig.model_validate({"state_dir": str(tmp_path / "state"), "model": model}))


def test_the_agent_is_the_model_host(tmp_path: Path) -> None:
    agent = _agent(tmp_path, None)
    assert agent.state_dir == tmp_path / "state" and agent.fixed_model is None and agent.bundle_key is None
    assert agent.probe() == ProbeSample(0, 0, None)  # no inferences, no errors, no latency yet
    agent.stats.frames_inferred, agent.stats.errors = 7, 1
    agent.stats.add("invoke", 0.0025)
    assert agent.probe() == ProbeSample(7, 1, 2.5)


def test_one_updater_per_agent_created_once(tmp_path: Path) -> None:
    a, b = _agent(tmp_path, None), _agent(tmp_path, None)
    seen: list[ota.OtaUpdater] = []
    threads = [threading.Thread(target=lambda: seen.append(a.updater)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(u is seen[0] for u in seen) and a.updater is seen[0]
    assert a.updater.host is a and b.updater is not a.updater and b.updater.host is b


def test_fixed_bundle_agent_refuses_update_and_rollback(tmp_path: Path) -> None:
    fixed = tmp_path / "model.bundle"
    agent = _agent(tmp_path, fixed)
    assert agent.fixed_model == fixed
    updater = agent.updater
    request = ota.parse_update_args({"url": f"file://{tmp_path}/missing.bundle", "sha256": "a" * 64, "size": 10})
    replies: list[Ack] = []
    ack = updater.update(request, "c1", replies.append)
    assert ack.status == "failed" and "fixed model file" in ack.reason and str(fixed) in ack.reason
    assert replies == [] and not (tmp_path / "state" / ota.DOWNLOADS).exists()  # nothing downloaded
    ack = updater.rollback("c2")
    assert ack.status == "failed" and "fixed model file" in ack.reason
