"""Model store: installs, refusals, rollback, probation and the agent signal, with real models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent import modelstore
from edge_agent.bundle import read_bundle, sha256_file
from edge_agent.cli import main as agent_main
from tests.fixtures_ssh import BundleSet, DeployKeys


@pytest.fixture
def store(tmp_path: Path, deploy_keys: DeployKeys) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)  # pinned key
    return state


def _active_sha(state: Path) -> str | None:
    model = modelstore.active_model(state)
    return model.sha256 if model else None


def test_install_then_upgrade_then_rollback(store: Path, test_bundles: BundleSet) -> None:
    first = modelstore.install_model(test_bundles.good, store)
    assert first.status == "installed"
    assert first.previous is None
    assert _active_sha(store) == sha256_file(test_bundles.good)
    assert first.smoke["passed"] is True
    assert os.readlink(store / "models" / "current") == first.active.sha256

    second = modelstore.install_model(test_bundles.good_v2, store)
    assert second.previous is not None and second.previous.sha256 == first.active.sha256
    assert _active_sha(store) == sha256_file(test_bundles.good_v2)
    # the active model's bundle re-verifies end to end with the pinned key
    read_bundle(second.active.bundle_path, store / modelstore.TRUSTED_KEY)

    back = modelstore.rollback(store)
    assert back.active.sha256 == first.active.sha256
    assert _active_sha(store) == first.active.sha256
    assert modelstore.previous_model(store).sha256 == second.active.sha256  # type: ignore[union-attr]
    assert back.timings_ms["rollback"] < 1000

    again = modelstore.install_model(test_bundles.good, store)
    assert again.status == "already_active"
    assert not list((store / "tmp").iterdir())


@pytest.mark.parametrize(
    ("kind", "step", "words"),
    [
        ("tampered", "verify", "sha256"),
        ("truncated", "verify", "not a bundle"),
        ("unsigned", "verify", "not signed"),
        ("wrong_signature", "verify", "does not verify"),
        ("wrong_input", "verify", "input"),
        ("too_slow", "smoke", "latency"),
    ],
)
def test_bad_bundle_refused_previous_stays(
    store: Path, test_bundles: BundleSet, kind: str, step: str, words: str
) -> None:
    modelstore.install_model(test_bundles.good, store)
    before = _active_sha(store)
    given = getattr(test_bundles, kind)
    with pytest.raises(modelstore.InstallError) as info:
        modelstore.install_model(given, store)
    assert info.value.step == step
    assert words in str(info.value)
    # the refusal names the bundle the user gave, never the store's private copy
    assert ".part" not in str(info.value) and "incoming-" not in str(info.value), str(info.value)
    if kind in ("tampered", "truncated", "unsigned", "wrong_signature"):
        assert str(info.value).startswith(str(given)) or f"bundle {given}" in str(info.value), str(info.value)
    assert _active_sha(store) == before
    assert modelstore.previous_model(store) is None
    assert not list((store / "tmp").iterdir())
    assert sorted(p.name for p in (store / "models").iterdir()) == sorted([before, "current"])


def test_unsigned_accepted_without_pinned_key(tmp_path: Path, test_bundles: BundleSet) -> None:
    result = modelstore.install_model(test_bundles.unsigned, tmp_path / "s")
    assert result.status == "installed"


def test_new_input_allowed_on_request(store: Path, test_bundles: BundleSet) -> None:
    modelstore.install_model(test_bundles.good, store)
    result = modelstore.install_model(test_bundles.wrong_input, store, allow_new_input=True)
    assert result.active.manifest.name == "other"


def test_downgrade_refused_when_asked(store: Path, test_bundles: BundleSet) -> None:
    modelstore.install_model(test_bundles.good_v2, store)
    with pytest.raises(modelstore.InstallError, match="downgrades need a signed rollback"):
        modelstore.install_model(test_bundles.good, store, allow_downgrade=False)


def test_expected_hash_and_size_checked(store: Path, test_bundles: BundleSet) -> None:
    with pytest.raises(modelstore.InstallError, match="sha256 mismatch"):
        modelstore.install_model(test_bundles.good, store, expected_sha256="0" * 64)
    size = test_bundles.good.stat().st_size
    with pytest.raises(modelstore.InstallError, match="expected"):
        modelstore.install_model(test_bundles.good, store, expected_size=size + 1)
    assert modelstore.active_model(store) is None


def test_rollback_without_previous(store: Path, test_bundles: BundleSet) -> None:
    with pytest.raises(modelstore.InstallError, match="no previous"):
        modelstore.rollback(store)
    modelstore.install_model(test_bundles.good, store)
    with pytest.raises(modelstore.InstallError, match="no previous"):
        modelstore.rollback(store)


def test_damaged_current_falls_back_to_previous(store: Path, test_bundles: BundleSet) -> None:
    first = modelstore.install_model(test_bundles.good, store)
    second = modelstore.install_model(test_bundles.good_v2, store)
    model = second.active.model_path
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    assert _active_sha(store) == first.active.sha256


def test_probation_crash_counter_rolls_back(store: Path, test_bundles: BundleSet) -> None:
    first = modelstore.install_model(test_bundles.good, store)
    second = modelstore.install_model(test_bundles.good_v2, store)
    modelstore.start_probation(store, second.active, duration_s=60, max_crashes=2)
    # a clean stop and restart is not a crash
    modelstore.note_agent_stop(store)
    assert modelstore.note_agent_start(store) is None
    assert modelstore.read_probation(store).crashes == 0  # type: ignore[union-attr]
    # two crashes are tolerated, the third start after a crash rolls back
    assert modelstore.note_agent_start(store) is None
    assert modelstore.note_agent_start(store) is None
    assert modelstore.read_probation(store).crashes == 2  # type: ignore[union-attr]
    result = modelstore.note_agent_start(store)
    assert result is not None and result.active.sha256 == first.active.sha256
    assert _active_sha(store) == first.active.sha256
    assert modelstore.read_probation(store) is None


def test_expired_probation_is_cleared(store: Path, test_bundles: BundleSet) -> None:
    modelstore.install_model(test_bundles.good, store)
    second = modelstore.install_model(test_bundles.good_v2, store)
    probation = modelstore.start_probation(store, second.active, duration_s=60, max_crashes=0)
    probation.until = time.time() - 1
    modelstore.write_probation(store, probation)
    assert modelstore.note_agent_start(store) is None  # a crash after the period does not count
    assert modelstore.read_probation(store) is None
    assert _active_sha(store) == second.active.sha256


_FAKE_AGENT = """
import os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
(state / "agent.pid").write_text(str(os.getpid()))
def hup(signum, frame):
    (state / "hup").write_text("1")
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
time.sleep(30)
"""


def test_install_signals_running_agent(store: Path, test_bundles: BundleSet) -> None:
    # argv contains "edge" (the script name) like a real edge-agent process
    script = store.parent / "fake_edge_agent.py"
    script.write_text(_FAKE_AGENT)
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        result = modelstore.install_model(test_bundles.good, store)
        assert result.agent_signalled
        assert proc.wait(timeout=10) == 0
        assert (store / "hup").read_text() == "1"
    finally:
        proc.kill()
        proc.wait()
    # a stale pid file (process gone) is not signalled
    assert not modelstore.signal_running_agent(store)


def test_cli_install_models_rollback_json(
    store: Path, test_bundles: BundleSet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main(["install-model", str(test_bundles.good), "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    assert agent_main(["install-model", str(test_bundles.tampered), "--state-dir", str(store),
                       "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["step"] == "verify"
    assert out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    assert agent_main(["install-model", str(test_bundles.good_v2), "--state-dir", str(store)]) == 0
    assert "installed: active" in capsys.readouterr().out
    assert agent_main(["models", "--state-dir", str(store)]) == 0
    text = capsys.readouterr().out
    assert "active:" in text and "previous:" in text
    assert agent_main(["rollback", "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    # plain (non-JSON) errors are one line on stderr with exit code 2
    assert agent_main(["install-model", str(test_bundles.truncated), "--state-dir", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: error:") and err.count("\n") == 1


def test_smoke_child_timeout_and_time(store: Path, test_bundles: BundleSet) -> None:
    t0 = time.perf_counter()
    report = modelstore.run_smoke_child(test_bundles.good)
    assert report["passed"] and report["vectors"] >= 1
    assert time.perf_counter() - t0 < 30
    with pytest.raises(modelstore.InstallError, match="did not finish"):
        modelstore.run_smoke_child(test_bundles.good, timeout_s=0.01)



def test_signed_bundle_whose_outputs_do_not_fit_is_refused_at_install(
    store: Path, test_bundles: BundleSet, deploy_keys: DeployKeys, tmp_path: Path
) -> None:
    """A correctly signed bundle the agent could not load (labels that do not fit the model's
    output) fails the install's smoke step instead of becoming the active model."""
    from edge_agent.manifest import OutputSpec
    from tests.deploy_helpers import private_key, repack

    modelstore.install_model(test_bundles.good, store)
    before = _active_sha(store)
    manifest = read_bundle(test_bundles.good, require_signature=False).manifest
    labels = list(manifest.output.labels)[:-1] or ["a", "b", "c"]
    bad = repack(test_bundles.good, tmp_path / "labels.bundle", private_key(deploy_keys.private),
                 output=OutputSpec(labels=labels))
    with pytest.raises(modelstore.InstallError) as info:
        modelstore.install_model(bad, store)
    assert info.value.step == "smoke"
    assert f"{list(manifest.outputs[0].shape)}" in str(info.value) and "labels" in str(info.value)
    assert _active_sha(store) == before
