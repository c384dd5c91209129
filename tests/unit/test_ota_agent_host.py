"""ota.AgentHost against a stand-in for the pipeline's Agent: what OTA refuses before touching the store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edge_agent.control import ProbeSample
from edge_agent.remote import ota
from edge_agent.remote.protocol import Ack


def _agent(tmp_path: Path, bundle: Path | None) -> Any:
    model = SimpleNamespace(bundle=bundle, public_key=None)
    stats = SimpleNamespace(snapshot=lambda: {"frames_inferred": 7, "errors": 1,
                                              "latency_ms": {"invoke": {"p95": 2.5}}})
    return SimpleNamespace(config=SimpleNamespace(state_dir=tmp_path / "state", model=model), stats=stats,
                           reload_model=lambda: {"sha256": "0" * 64, "manifest_sha256": "1" * 64})


def test_agent_host_adapts_the_agent(tmp_path: Path) -> None:
    host = ota.AgentHost(_agent(tmp_path, None))
    assert host.state_dir == tmp_path / "state" and host.fixed_model is None and host.bundle_key is None
    assert host.probe() == ProbeSample(7, 1, 2.5)


def test_fixed_bundle_agent_refuses_update_and_rollback(tmp_path: Path) -> None:
    fixed = tmp_path / "model.bundle"
    updater = ota.OtaUpdater(ota.AgentHost(_agent(tmp_path, fixed)))
    request = ota.parse_update_args({"url": f"file://{tmp_path}/missing.bundle", "sha256": "a" * 64, "size": 10})
    replies: list[Ack] = []
    ack = updater.update(request, "c1", replies.append)
    assert ack.status == "failed" and "fixed model file" in ack.reason and str(fixed) in ack.reason
    assert replies == [] and not (tmp_path / "state" / ota.DOWNLOADS).exists()  # nothing downloaded
    ack = updater.rollback("c2")
    assert ack.status == "failed" and "fixed model file" in ack.reason
