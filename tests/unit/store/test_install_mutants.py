"""Model store rules the mutation run (``make mutate``) found untested, with real bundles and the real
smoke child, but no TensorFlow: :mod:`tests.tiny_store` builds the models in milliseconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.cli.main import main as agent_main
from edge_agent.errors import BundleError
from edge_agent.model import compat
from edge_agent.model.bundle import MANIFEST, MODEL, read_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.store import pidfile as store_pidfile
from edge_agent.store import probation as store_probation
from edge_agent.store.install import InstallError
from edge_agent.store.probation import Probation
from edge_agent.util import fs
from edge_agent.util.fs import sha256_file
from tests.tiny_store import make_bundle, shared


class Bundles:
    def __init__(self, base: Path) -> None:
        self.private, self.public = base / "k.pem", base / "k.pub"
        generate_keypair(self.private, self.public)
        key = load_private_key(self.private)
        self.v1 = make_bundle(base / "v1.bundle", version="1.9", sign_key=key)
        self.v2 = make_bundle(base / "v2.bundle", version="1.10", sign_key=key)
        self.v3 = make_bundle(base / "v3.bundle", version="2.0", sign_key=key)
        self.older = make_bundle(base / "older.bundle", version="1.2", sign_key=key)
        self.unsigned = make_bundle(base / "unsigned.bundle", version="3.0")
        self.other_input = make_bundle(base / "small.bundle", name="small", size=8, sign_key=key)
        self.bad_golden = make_bundle(base / "bad.bundle", version="4.0", sign_key=key, wrong_golden=True)
        self.other_key = make_bundle(base / "other-key.bundle", version="5.0", sign_key=Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def bundles() -> Bundles:
    return shared("modelstore-bundles", Bundles)


@pytest.fixture
def store(tmp_path: Path, bundles: Bundles) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(bundles.public, state / store_layout.TRUSTED_KEY)
    return state


@pytest.fixture(scope="module")
def installed(bundles: Bundles) -> Path:
    """A store with v1 installed, to copy (never modified by the tests)."""

    def install(directory: Path) -> Path:
        store_install.install_model(bundles.v1, directory / "state", bundles.public)
        return directory / "state"

    return shared("modelstore-installed", install)


def _copy_store(installed: Path, tmp_path: Path) -> Path:
    state = tmp_path / "copy"
    shutil.copytree(installed, state, symlinks=True)
    return state


def _links(state: Path) -> dict[str, str]:
    models = state / "models"
    return {name: os.readlink(models / name) for name in ("current", "previous") if (models / name).is_symlink()}


def _dirs(state: Path) -> set[str]:
    return {p.name for p in (state / "models").iterdir() if p.is_dir() and not p.is_symlink()}


# --------------------------------------------------------------------------- install and rollback


def test_install_upgrade_collect_and_roll_back(store: Path, bundles: Bundles) -> None:
    sha1, sha2, sha3 = (sha256_file(b) for b in (bundles.v1, bundles.v2, bundles.v3))
    store_probation.write_probation(store, Probation(sha256="x", started=0.0, until=time.time() + 60))
    first = store_install.install_model(bundles.v1, store)
    assert (first.status, first.previous, first.agent_signalled) == ("installed", None, False)
    assert first.active.sha256 == sha1 and first.active.directory == store / "models" / sha1
    assert first.smoke["passed"] is True
    assert set(first.timings_ms) == {"copy", "verify", "smoke", "swap"}
    assert _links(store) == {"current": sha1}  # relative links
    assert store_probation.read_probation(store) is None  # an install ends any probation
    assert not list((store / "tmp").iterdir())

    second = store_install.install_model(bundles.v2, store)
    assert second.previous is not None and second.previous.sha256 == sha1
    assert _links(store) == {"current": sha2, "previous": sha1}
    data = second.to_json()
    assert (data["ok"], data["status"], data["agent_signalled"]) == (True, "installed", False)
    assert data["active"] == second.active.describe()
    assert data["previous"]["bundle_sha256"] == sha1
    assert set(data["timings_ms"]) == {"copy", "verify", "smoke", "swap"}

    store_install.install_model(bundles.v3, store)
    assert _links(store) == {"current": sha3, "previous": sha2}
    assert _dirs(store) == {sha2, sha3}  # v1 is neither current nor previous: collected

    back = store_install.rollback(store)
    assert (back.status, back.active.sha256, back.previous.sha256) == ("rolled_back", sha2, sha3)  # type: ignore[union-attr]
    assert set(back.timings_ms) == {"rollback"} and back.agent_signalled is False
    assert _links(store) == {"current": sha2, "previous": sha3}
    assert back.to_json()["status"] == "rolled_back"
    again = store_install.rollback(store)
    assert _links(store) == {"current": sha3, "previous": sha2} and again.active.sha256 == sha3


def test_describe_names_the_model(installed: Path, bundles: Bundles) -> None:
    model = store_layout.active_model(installed)
    assert model is not None
    manifest = model.manifest
    assert model.describe() == {
        "name": "colours", "version": "1.9", "task": "classify", "sha256": manifest.model.sha256,
        "short_sha": manifest.model.sha256[:12], "bundle_sha256": sha256_file(bundles.v1),
        "input_shape": [1, 16, 16, 3],
    }
    assert model.bundle_path == model.directory / "bundle.zip"
    assert model.model_path == model.directory / MODEL


def test_reinstalling_the_active_bundle_changes_nothing(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    result = store_install.install_model(bundles.v1, state, bundles.public)
    assert result.status == "already_active" and result.smoke == {}
    assert result.previous is None and set(result.timings_ms) == {"copy", "verify"}
    assert _links(state) == {"current": sha256_file(bundles.v1)}


def _refused(state: Path, bundle: Path, **kw: Any) -> InstallError:
    before = _links(state)
    with pytest.raises(InstallError) as info:
        store_install.install_model(bundle, state, **kw)
    assert _links(state) == before
    assert not list((state / "tmp").iterdir())
    return info.value


def test_refusals_name_the_step_and_keep_the_active_model(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    shutil.copy(bundles.public, state / store_layout.TRUSTED_KEY)
    err = _refused(state, bundles.other_input)
    assert err.step == "verify"
    assert str(err) == ("the new model does not fit the active model's input (input shape [1, 8, 8, 3] != "
                        "[1, 16, 16, 3]; image 8x8x3 != 16x16x3); use --allow-new-input if the agent's source "
                        "and config fit it")
    err = _refused(state, bundles.older, allow_downgrade=False)
    assert (err.step, str(err)) == ("verify", "colours 1.2 is older than the active 1.9; downgrades need a "
                                              "signed rollback command")
    err = _refused(state, bundles.unsigned)
    assert err.step == "verify" and "is not signed" in str(err)
    assert str(bundles.unsigned) in str(err) and "incoming-" not in str(err)  # the user's file, not the copy
    err = _refused(state, bundles.other_key)
    assert err.step == "verify" and "does not verify" in str(err)
    err = _refused(state, bundles.v2, expected_sha256="0" * 64)
    assert err.step == "copy" and str(err).startswith(f"sha256 mismatch: got {sha256_file(bundles.v2)}, expected ")
    size = bundles.v2.stat().st_size
    err = _refused(state, bundles.v2, expected_size=size + 1)
    assert (err.step, str(err)) == ("copy", f"bundle is {size} bytes, expected {size + 1}")
    missing = tmp_path / "missing.bundle"
    err = _refused(state, missing)
    assert (err.step, str(err)) == ("copy", f"bundle {missing}: No such file or directory")


def test_expected_checksum_and_size_that_match_are_accepted(installed: Path, tmp_path: Path,
                                                            bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    result = store_install.install_model(bundles.v2, state, bundles.public,
                                      expected_sha256=sha256_file(bundles.v2).upper(),
                                      expected_size=bundles.v2.stat().st_size, allow_downgrade=False)
    assert result.status == "installed"


def test_failed_smoke_test_names_the_given_bundle(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    err = _refused(state, bundles.bad_golden, public_key=bundles.public)
    assert err.step == "smoke"
    assert str(err).startswith("smoke test failed: FAIL: 2 golden vector(s)")
    err = _refused(state, bundles.v2, public_key=bundles.public, smoke_timeout_s=0.001)
    assert (err.step, str(err)) == ("smoke", "smoke test did not finish within 0.001 s")


def test_a_new_input_is_accepted_when_allowed(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    result = store_install.install_model(bundles.other_input, state, bundles.public, allow_new_input=True)
    assert result.active.manifest.name == "small"


def test_version_order_is_numeric_per_part() -> None:
    key = compat.version_key
    assert key("1.10") > key("1.9") > key("1.2") > key("1.1.9")
    assert key("2.0-rc1") < key("2.0-1")  # words sort below numbers
    assert key("1.0+b") == ((1, ""), (0, ""), (-1, "b"))


def test_rollback_refusals(store: Path, installed: Path, tmp_path: Path) -> None:
    with pytest.raises(InstallError) as info:
        store_install.rollback(store)
    assert (info.value.step, str(info.value)) == ("rollback", "there is no previous model to roll back to")
    state = _copy_store(installed, tmp_path)
    with pytest.raises(InstallError):
        store_install.rollback(state)
    current = os.readlink(state / "models" / "current")
    os.symlink(current, state / "models" / "previous")
    with pytest.raises(InstallError) as info:
        store_install.rollback(state)
    assert (info.value.step, str(info.value)) == ("rollback", "the previous model is the active one already")


def test_free_space_is_checked_with_a_margin(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    fs.check_free_space(tmp_path, 0)
    needed = free - fs.FREE_SPACE_MARGIN + 1024 * 1024 * 1024
    with pytest.raises(InstallError) as info:
        fs.check_free_space(tmp_path, needed)
    message = str(info.value)
    assert info.value.step == "copy"
    assert message.startswith(f"not enough free space in {tmp_path}: ")
    assert message.endswith(" MiB needed") and f"{(needed + fs.FREE_SPACE_MARGIN) // 1_048_576} MiB" in message


def test_leftovers_of_a_killed_install_are_cleaned(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    (state / "tmp" / "incoming-x.part").write_bytes(b"half")
    (state / "tmp" / "stage-abc").mkdir()
    (state / "tmp" / "stage-abc" / MODEL).write_bytes(b"half")
    os.symlink("nowhere", state / "models" / ".current.1234.link")
    stray = state / "models" / ("e" * 64)
    stray.mkdir()
    (state / "models" / "notes").mkdir()  # not a model directory name: kept
    with pytest.raises(InstallError):
        store_install.rollback(state)  # nothing to roll back to, but the store is tidied under the lock
    assert list((state / "tmp").iterdir()) == []
    assert not (state / "models" / ".current.1234.link").is_symlink()
    assert not stray.exists()
    assert (state / "models" / "notes").is_dir()
    assert store_layout.active_model(state) is not None


def test_files_are_handed_to_the_owner_of_the_state_dir(store: Path, bundles: Bundles) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands files to another user")
    os.chown(store, 4321, 4322)
    result = store_install.install_model(bundles.v1, store)
    for path in (store / "models", store / "tmp", result.active.directory, result.active.directory / MODEL,
                 store / "models" / "current"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (4321, 4322), path


# --------------------------------------------------------------------------- reading the store


def test_model_directory_checks(installed: Path, tmp_path: Path) -> None:
    model = store_layout.active_model(installed)
    assert model is not None
    good = tmp_path / model.sha256
    shutil.copytree(model.directory, good)
    assert store_layout.load_model_dir(good).sha256 == model.sha256

    def broken(change: Any) -> str:
        target = tmp_path / "broken" / model.sha256
        shutil.rmtree(target.parent, ignore_errors=True)
        shutil.copytree(good, target)
        change(target)
        with pytest.raises(BundleError) as info:
            store_layout.load_model_dir(target)
        return str(info.value)

    wrong_name = tmp_path / "not-a-sha"
    shutil.copytree(good, wrong_name)
    with pytest.raises(BundleError, match="is not a model directory"):
        store_layout.load_model_dir(wrong_name)
    assert broken(lambda d: (d / MANIFEST).unlink()).endswith("manifest missing or invalid (FileNotFoundError)")
    assert broken(lambda d: (d / MODEL).unlink()).endswith(": model.tflite missing")
    assert broken(lambda d: (d / MODEL).write_bytes(b"short")).endswith(
        "model.tflite has the wrong size (altered or corrupt)")
    assert broken(lambda d: (d / "bundle.zip").unlink()).endswith(": bundle.zip missing")
    size = (good / MODEL).stat().st_size
    flipped = broken(lambda d: (d / MODEL).write_bytes(b"\x00" * size))
    assert flipped.endswith("model.tflite does not match the manifest sha256")
    # a shallow check trusts the size only
    target = tmp_path / "shallow" / model.sha256
    shutil.copytree(good, target)
    (target / MODEL).write_bytes(b"\x00" * size)
    assert store_layout.load_model_dir(target, deep=False).sha256 == model.sha256


def test_damaged_current_falls_back_to_previous_and_status_lists_models(installed: Path, tmp_path: Path,
                                                                        bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    store_install.install_model(bundles.v2, state, bundles.public)
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    (state / "models" / "odd-dir").mkdir()
    status = store_layout.store_status(state)
    assert status["state_dir"] == str(state)
    assert status["active"]["bundle_sha256"] == sha2 and status["previous"]["bundle_sha256"] == sha1
    assert status["installed"] == sorted([sha1, sha2])
    assert status["probation"] is None and status["agent_pid"] is None
    (state / "models" / sha2 / MODEL).write_bytes(b"damaged")
    assert store_layout.active_model(state).sha256 == sha1  # type: ignore[union-attr]
    assert store_layout.store_status(state)["active"] is None
    assert store_layout.previous_model(state).sha256 == sha1  # type: ignore[union-attr]
    (state / "models" / "previous").unlink()
    assert store_layout.active_model(state) is None
    empty = tmp_path / "empty"
    assert store_layout.store_status(empty)["installed"] == [] and store_layout.active_model(empty) is None


def test_absolute_links_are_followed(installed: Path, tmp_path: Path) -> None:
    state = _copy_store(installed, tmp_path)
    link = state / "models" / "current"
    target = os.readlink(link)
    link.unlink()
    os.symlink(state / "models" / target, link)
    assert store_layout.active_model(state).sha256 == target  # type: ignore[union-attr]


def test_resolve_public_key_prefers_the_explicit_one(tmp_path: Path, bundles: Bundles) -> None:
    if not store_layout.SYSTEM_TRUSTED_KEY.is_file():
        assert store_layout.resolve_public_key(tmp_path) is None
    key = store_layout.resolve_public_key(tmp_path, bundles.public)
    assert store_layout.resolve_public_key(tmp_path, key) is key
    shutil.copy(bundles.public, tmp_path / store_layout.TRUSTED_KEY)
    pinned = store_layout.resolve_public_key(tmp_path)
    assert pinned is not None and pinned.public_bytes_raw() == key.public_bytes_raw()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the running agent


def _child(*args: str) -> subprocess.Popen[bytes]:
    """A sleeping process whose command line holds ``args``; returns once it runs its own program
    (before the exec its /proc cmdline would still be this process's)."""
    # SIGHUP exits with 7 even where the test runner inherited an ignored SIGHUP (nohup).
    code = ("import signal, sys, time; signal.signal(signal.SIGHUP, lambda *_: sys.exit(7)); "
            "print('ready', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_only_a_running_edge_agent_is_signalled(tmp_path: Path) -> None:
    assert store_pidfile.signal_running_agent(tmp_path) is False  # no pid file
    agent = _child("edge-agent", "run")
    other = _child("something-else")
    try:
        path = store_pidfile.write_pid_file(tmp_path, agent.pid)
        assert path == tmp_path / "agent.pid" and path.read_text() == f"{agent.pid}\n"
        assert store_layout.store_status(tmp_path)["agent_pid"] == agent.pid
        assert store_pidfile.signal_running_agent(tmp_path) is True
        assert agent.wait(timeout=60) == 7  # it got SIGHUP
        assert store_pidfile.signal_running_agent(tmp_path) is False  # that pid is gone now
        store_pidfile.write_pid_file(tmp_path, other.pid)  # a recycled pid: not ours
        assert store_pidfile.signal_running_agent(tmp_path) is False
        assert other.poll() is None
    finally:
        for proc in (agent, other):
            proc.kill()
            proc.wait()
    (tmp_path / "agent.pid").write_text("garbage\n")
    assert store_pidfile.signal_running_agent(tmp_path) is False


def test_pid_file_defaults_to_this_process_and_is_removed_only_by_it(tmp_path: Path) -> None:
    path = store_pidfile.write_pid_file(tmp_path)
    assert path.read_text() == f"{os.getpid()}\n"
    store_pidfile.remove_pid_file(tmp_path)  # ours only if /proc says so; either way no exception
    other = tmp_path / "other"
    other.mkdir()
    agent = _child("edge-agent")
    try:
        store_pidfile.write_pid_file(other, agent.pid)
        store_pidfile.remove_pid_file(other)
        assert (other / "agent.pid").is_file()  # another process's file is left alone
    finally:
        agent.kill()
        agent.wait()


# --------------------------------------------------------------------------- probation


def test_probation_file_round_trip_and_clear(tmp_path: Path) -> None:
    assert store_probation.read_probation(tmp_path) is None
    probation = Probation(sha256="a" * 64, started=1.0, until=2.0, max_crashes=3, crashes=1, running=True,
                          command_id="c9")
    store_probation.write_probation(tmp_path, probation)
    assert json.loads((tmp_path / "probation.json").read_text()) == asdict(probation)
    assert store_probation.read_probation(tmp_path) == probation
    (tmp_path / "probation.json").write_text('{"sha256": "x"}')
    assert store_probation.read_probation(tmp_path) is None
    store_probation.clear_probation(tmp_path)
    assert not (tmp_path / "probation.json").exists()
    store_probation.clear_probation(tmp_path)  # nothing to clear: fine


def test_probation_counts_crashes_then_rolls_back(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    result = store_install.install_model(bundles.v2, state, bundles.public)
    before = time.time()
    started = store_probation.start_probation(state, result.active, 600.0, max_crashes=1, command_id="u1")
    assert (started.sha256, started.max_crashes, started.crashes, started.running, started.command_id) == (
        result.active.sha256, 1, 0, True, "u1")
    assert before <= started.started <= time.time() and started.until == started.started + 600.0
    assert store_probation.read_probation(state) == started
    # the agent starts while the probation says running: the previous run crashed
    assert store_probation.note_agent_start(state) is None
    assert store_probation.read_probation(state).crashes == 1  # type: ignore[union-attr]
    store_probation.note_agent_stop(state)  # a clean stop is no crash
    assert store_probation.read_probation(state).running is False  # type: ignore[union-attr]
    assert store_probation.note_agent_start(state) is None
    probation = store_probation.read_probation(state)
    assert probation is not None and (probation.crashes, probation.running) == (1, True)
    back = store_probation.note_agent_start(state)  # crash #2 > max_crashes 1
    assert back is not None and back.status == "rolled_back" and back.agent_signalled is False
    assert back.active.sha256 == sha256_file(bundles.v1)
    assert store_probation.read_probation(state) is None


def test_probation_of_another_model_or_past_its_deadline_is_dropped(installed: Path, tmp_path: Path) -> None:
    state = _copy_store(installed, tmp_path)
    current = store_layout.active_model(state)
    assert current is not None
    store_probation.write_probation(state, Probation(sha256="f" * 64, started=0.0, until=time.time() + 600))
    assert store_probation.note_agent_start(state) is None and store_probation.read_probation(state) is None
    store_probation.write_probation(state, Probation(sha256=current.sha256, started=0.0, until=time.time() - 1))
    assert store_probation.note_agent_start(state) is None and store_probation.read_probation(state) is None
    # crashes beyond the limit with nothing to roll back to: probation dropped, no exception
    store_probation.write_probation(state, Probation(sha256=current.sha256, started=0.0, until=time.time() + 600,
                                                max_crashes=0, running=True))
    assert store_probation.note_agent_start(state) is None
    assert store_probation.read_probation(state) is None
    store_probation.note_agent_stop(state)  # no probation: nothing happens
    assert store_probation.read_probation(state) is None


# --------------------------------------------------------------------------- command line


def test_cli_install_rollback_and_models(store: Path, bundles: Bundles, capsys) -> None:
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    assert agent_main(["install-model", str(bundles.v1), "--state-dir", str(store)]) == 0
    short = read_bundle(bundles.v1, require_signature=False).manifest.short_sha
    assert capsys.readouterr().out == f"installed: active colours 1.9 ({short}), previous none\n"
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["status"], out["active"]["bundle_sha256"], out["previous"]["bundle_sha256"]) == (
        True, "installed", sha2, sha1)
    assert agent_main(["install-model", str(bundles.older), "--state-dir", str(store), "--no-downgrade",
                       "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["step"], out["active"]["bundle_sha256"]) == (False, "verify", sha2)
    assert "older than" in out["error"]
    assert agent_main(["install-model", str(bundles.older), "--state-dir", str(store), "--no-downgrade"]) == 2
    assert "older than" in capsys.readouterr().err
    assert agent_main(["models", "--state-dir", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"]["bundle_sha256"] == sha2
    assert agent_main(["rollback", "--state-dir", str(store)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("rolled back: active colours 1.9 (") and "previous colours 1.10 (" in text
    assert agent_main(["rollback", "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["active"]["bundle_sha256"]) == ("rolled_back", sha2)
    store_probation.start_probation(store, store_layout.active_model(store), 600.0)  # type: ignore[arg-type]
    assert agent_main(["models", "--state-dir", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("active:   colours 1.10 (") and lines[1].startswith("previous: colours 1.9 (")
    assert lines[2].startswith("probation: ") and lines[2].endswith(" s left, 0 crash(es)")


def test_cli_rollback_refusal(store: Path, capsys) -> None:
    assert agent_main(["rollback", "--state-dir", str(store), "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "ok": False, "error": "there is no previous model to roll back to", "step": "rollback", "active": None}
    assert agent_main(["rollback", "--state-dir", str(store)]) == 2
    assert "there is no previous model" in capsys.readouterr().err
    assert agent_main(["models", "--state-dir", str(store)]) == 0
    assert capsys.readouterr().out == "active:   none\nprevious: none\n"


# --------------------------------------------------------------------------- more refusals


def _audio_manifest(rate: int) -> Any:
    from edge_agent.model.manifest import Manifest

    return Manifest.model_validate({
        "name": "kw", "version": "1", "task": "audio_classify", "model": {"sha256": "0" * 64, "size_bytes": 1},
        "inputs": [{"shape": [1, rate // 10], "dtype": "float32"}], "outputs": [{"shape": [1, 2], "dtype": "float32"}],
        "preprocess": {"kind": "audio", "sample_rate": rate, "window_s": 0.1, "feature": "waveform",
                       "fmax": rate / 2},
    })


def test_audio_models_must_keep_the_sample_rate(tmp_path: Path) -> None:
    current = store_layout.InstalledModel("a" * 64, tmp_path, _audio_manifest(16000))
    with pytest.raises(InstallError) as info:
        store_install._check_compatible(_audio_manifest(8000), current, False, True)
    assert str(info.value) == ("the new model does not fit the active model's input (input shape [1, 800] != "
                               "[1, 1600]; sample rate 8000 != 16000); use --allow-new-input if the agent's source "
                               "and config fit it")
    store_install._check_compatible(_audio_manifest(8000), current, True, True)  # allowed
    store_install._check_compatible(_audio_manifest(16000), current, False, True)  # the same input


def test_unusable_state_dir_and_bad_pinned_key(tmp_path: Path, bundles: Bundles) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InstallError) as info:
        store_install.install_model(bundles.v1, blocker / "state")
    assert str(info.value) == f"cannot use state directory {blocker / 'state'}: Not a directory"
    assert info.value.step == ""  # before any install step
    state = tmp_path / "state"
    state.mkdir()
    (state / store_layout.TRUSTED_KEY).write_text("not a key")
    with pytest.raises(InstallError) as info:
        store_install.install_model(bundles.v1, state)
    assert info.value.step == "verify" and "is not a PEM public key" in str(info.value)


def test_a_same_size_damaged_model_is_found_by_its_hash(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    store_install.install_model(bundles.v2, state, bundles.public)
    current = store_layout.active_model(state)
    assert current is not None
    size = current.model_path.stat().st_size
    current.model_path.write_bytes(b"\x00" * size)
    assert store_layout.active_model(state).sha256 == sha256_file(bundles.v1)  # type: ignore[union-attr]
    assert store_layout.active_model(state, deep=False).sha256 == current.sha256  # type: ignore[union-attr]


def test_free_space_message_is_in_whole_mib(tmp_path: Path) -> None:
    import re

    with pytest.raises(InstallError) as info:
        fs.check_free_space(tmp_path, shutil.disk_usage(tmp_path).free)
    assert re.fullmatch(rf"not enough free space in {re.escape(str(tmp_path))}: \d+ MiB free, \d+ MiB needed",
                        str(info.value))


def test_rollback_signals_a_running_agent(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    state = _copy_store(installed, tmp_path)
    store_install.install_model(bundles.v2, state, bundles.public, signal_agent=False)
    agent = _child("edge-agent", "run")
    try:
        store_pidfile.write_pid_file(state, agent.pid)
        result = store_install.rollback(state)
        assert result.agent_signalled is True
        assert agent.wait(timeout=60) == 7
    finally:
        agent.kill()
        agent.wait()


def test_cli_flags(store: Path, bundles: Bundles, capsys) -> None:
    assert agent_main(["install-model", str(bundles.v1), "--state-dir", str(store), "--json"]) == 0
    capsys.readouterr()
    assert agent_main(["install-model", str(bundles.other_input), "--state-dir", str(store), "--allow-new-input",
                       "--threads", "2", "--public-key", str(bundles.public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"]["name"] == "small"


def test_bundle_size_bound_is_inclusive(installed: Path, tmp_path: Path, bundles: Bundles, monkeypatch) -> None:
    state = _copy_store(installed, tmp_path)
    size = bundles.v2.stat().st_size
    monkeypatch.setattr(store_install, "MAX_BUNDLE_BYTES", size - 1)
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("copy", f"bundle is {size} bytes, more than the store accepts ({size - 1} bytes)")
    monkeypatch.setattr(store_install, "MAX_BUNDLE_BYTES", size)
    before = time.perf_counter()
    result = store_install.install_model(bundles.v2, state, bundles.public)
    elapsed_ms = (time.perf_counter() - before) * 1000.0
    assert result.status == "installed"
    # each step's time lies between clock readings taken around the call
    assert all(0.0 <= v <= elapsed_ms for v in result.timings_ms.values())
    again = store_install.install_model(bundles.v2, state, bundles.public)
    assert again.status == "already_active" and again.previous is not None
    assert again.previous.sha256 == sha256_file(bundles.v1)
