"""The agent as OTA's model host (``edge_agent.control.ModelHost``), without starting it: what it
tells the updater, its one updater, and what OTA refuses before touching the store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.control import ProbeSample
from edge_agent.model.bundle import BundleLimits, read_bundle
from edge_agent.remote import ota
from edge_agent.remote.handler import CommandHandler
from edge_agent.remote.protocol import Ack, Route, command_registry, sign_command
from edge_agent.store import install as store_install
from edge_agent.store.layout import active_model
from edge_agent.util.fs import sha256_file
from tests.tiny_store import make_bundle, shared


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


# --------------------------------------------------------------------------- issue 11: acks through the handler


class _Signed:
    """The real command handler with OTA's commands and a pinned command key; signs what it sends."""

    def __init__(self, control: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = Ed25519PrivateKey.generate()
        self.acks: list[Ack] = []
        self.reply: Callable[[Ack, Route], None] = lambda ack, route: self.acks.append(ack)
        self.handler = CommandHandler("dev1", control=control, reply=self._send,
                                      public_key=self.key.public_key(), registry=command_registry(ota.commands()))

    def _send(self, ack: Ack, route: Route) -> None:
        self.reply(ack, route)  # looked up at each ack: a test may replace it

    def send(self, name: str, cmd_id: str, args: dict[str, Any]) -> None:
        now = time.time()
        body: dict[str, Any] = {"id": cmd_id, "ts": now, "expires": now + 60, "args": args}
        body["sig"] = sign_command(self.key, "dev1", name, body)
        self.handler.handle(name, json.dumps(body).encode())


def test_in_progress_is_sent_before_the_worker_can_answer(tmp_path: Path) -> None:
    """The update's worker fails at once (the agent runs a fixed model file). While the handler
    is still sending ``in_progress`` (held here for up to a second, as a slow broker link would),
    no ``failed`` may get out first: the worker starts only after the ack was sent."""
    agent = _agent(tmp_path, tmp_path / "model.bundle")
    signed = _Signed(agent)
    worker_answered = threading.Event()

    def slow_first_ack(ack: Ack, route: Route) -> None:
        if ack.status == "in_progress":
            worker_answered.wait(1.0)  # before the fix the worker's failed ack got out meanwhile
        else:
            worker_answered.set()
        signed.acks.append(ack)

    signed.reply = slow_first_ack
    signed.send("update_model", "u1", {"url": "https://h/m.bundle", "sha256": "a" * 64, "size": 10})
    agent.updater.join(60)
    assert [(a.id, a.status) for a in signed.acks] == [("u1", "in_progress"), ("u1", "failed")], signed.acks
    assert "fixed model file" in signed.acks[1].reason and not agent.updater.busy


def test_file_urls_are_refused_without_a_file_root(tmp_path: Path) -> None:
    """``file:///etc/shadow`` with the command key once revealed the file's size and sha256."""
    signed = _Signed(_agent(tmp_path, None))
    signed.send("update_model", "u1", {"url": "file:///etc/shadow", "sha256": "a" * 64, "size": 10})
    assert signed.acks == [Ack("u1", "rejected", "invalid_args: file:// URLs are refused: no [ota] file_root "
                                                 "is configured on the device")]
    config = {"state_dir": str(tmp_path / "s2"), "ota": {"file_root": str(tmp_path)}}
    signed = _Signed(Agent(AgentConfig.model_validate(config)))
    signed.send("update_model", "u2", {"url": "file:///etc/shadow", "sha256": "a" * 64, "size": 10})
    assert signed.acks == [Ack("u2", "rejected", f"invalid_args: file:// path /etc/shadow is outside ota.file_root "
                                                 f"{tmp_path}")]


class _UnloadableHost:
    """A store with a previous model the agent cannot load: its reload raises what a non-UTF-8
    ``labels.txt`` raised (not an EdgeError)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.bundle_key: Path | None = None
        self.fixed_model: Path | None = None

    def reload_model(self) -> dict[str, str]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    def probe(self) -> ProbeSample:
        return ProbeSample(0, 0, None)


def test_a_signed_rollback_onto_a_model_that_cannot_load_acks_with_its_id(tmp_path: Path) -> None:
    v1 = shared("ota-unit-v1", lambda d: make_bundle(d / "v1.bundle", version="1.0"))
    v2 = shared("ota-unit-v2", lambda d: make_bundle(d / "v2.bundle", version="2.0"))
    state = tmp_path / "state"
    store_install.install_model(v1, state, signal_agent=False)
    store_install.install_model(v2, state, signal_agent=False)

    class Control:
        updater = ota.OtaUpdater(_UnloadableHost(state))  # type: ignore[arg-type]

    signed = _Signed(Control())
    signed.send("rollback", "r1", {})
    assert signed.acks == [Ack("r1", "failed", "internal_error: UnicodeDecodeError")]


def test_updates_use_the_agents_model_size_limit(tmp_path: Path) -> None:
    """``[model] max_model_mb`` bounds what OTA installs, as it bounds ``install-model`` and ``run``."""
    config = AgentConfig.model_validate({"state_dir": str(tmp_path / "state"),
                                         "model": {"max_model_mb": 3, "latency_budget_ms": 250},
                                         "ota": {"file_root": str(tmp_path)}})
    agent = Agent(config)
    assert agent.updater.limits == BundleLimits(model_bytes=3 * 1024 * 1024)
    assert agent.updater.latency_budget_ms == 250
    v1 = shared("ota-unit-v1", lambda d: make_bundle(d / "v1.bundle", version="1.0"))
    offered = tmp_path / "v1.bundle"
    offered.write_bytes(v1.read_bytes())
    model_size = len(read_bundle(v1, require_signature=False).model_bytes)
    updater = ota.OtaUpdater(agent, settings=config.ota, limits=BundleLimits(model_bytes=model_size - 1))
    request = ota.parse_update_args({"url": f"file://{offered}", "sha256": sha256_file(offered),
                                     "size": offered.stat().st_size, "probation_s": 0})
    ack = updater.update(request, "u1", lambda ack: None)
    assert (ack.id, ack.status) == ("u1", "failed")
    assert f"model.tflite is {model_size} bytes, more than the {model_size - 1} bytes a device accepts" \
        in ack.reason, ack.reason
    assert active_model(tmp_path / "state") is None
