"""Model store rules the mutation run (``make mutate``) found untested, with real bundles and the real
smoke child, but no TensorFlow: :mod:`tests.tiny_store` builds the models in milliseconds."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.cli.main import main as agent_main
from edge_agent.errors import BundleError, EdgeError
from edge_agent.model import compat
from edge_agent.model.bundle import MANIFEST, MAX_MODEL_BYTES, MODEL, read_bundle
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

LIMIT_ARGS = ["--max-model-bytes", str(MAX_MODEL_BYTES)]  # the smoke child reads with the install's limits


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
    newline_name = tmp_path / f"{model.sha256}\n"
    shutil.copytree(good, newline_name)
    with pytest.raises(BundleError, match="is not a model directory"):
        store_layout.load_model_dir(newline_name)
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


def test_a_recycled_pid_or_a_look_alike_is_never_signalled(tmp_path: Path) -> None:
    """``b"edge" in cmdline`` once let any process started from /opt/edge-agent/venv be sent
    SIGHUP (which kills it) when it got a stale pid file's pid."""
    venv_python = _child("/opt/edge-agent/venv/lib/helper.py", "--edge")  # "edge" twice, not the agent
    agent = _child("edge-agent", "run")
    try:
        store_pidfile.write_pid_file(tmp_path, venv_python.pid)
        assert store_pidfile.read_agent_pid(tmp_path) is None
        assert store_pidfile.signal_running_agent(tmp_path) is False and venv_python.poll() is None
        store_pidfile.write_pid_file(tmp_path, agent.pid)
        assert store_pidfile.read_agent_pid(tmp_path) == agent.pid
        (tmp_path / "agent.pid").write_text(f"{agent.pid} 12345\n")  # an extra field is ignored
        assert store_pidfile.read_agent_pid(tmp_path) == agent.pid
    finally:
        for proc in (venv_python, agent):
            proc.kill()
            proc.wait()


def test_a_module_agent_needs_dash_m_and_edge_agent_together(tmp_path: Path) -> None:
    """``-m`` before another module, or an ``edge_agent.…`` argument without ``-m``, is not the agent
    (guards ``a == b"-m" and …`` against ``or``); the pid file's first field is the pid."""
    other_module = _child("-m", "http.server")
    not_after_dash_m = _child("edge_agent.sleeper", "run")
    agent = _child("/usr/bin/qemu-aarch64", "/opt/venv/bin/edge-agent", "run")
    try:
        for proc in (other_module, not_after_dash_m):
            store_pidfile.write_pid_file(tmp_path, proc.pid)
            assert store_pidfile.read_agent_pid(tmp_path) is None
        (tmp_path / "agent.pid").write_text(f"{agent.pid}\n")
        assert store_pidfile.read_agent_pid(tmp_path) == agent.pid
    finally:
        for proc in (other_module, not_after_dash_m, agent):
            proc.kill()
            proc.wait()


def test_an_agent_started_as_a_module_is_recognised(tmp_path: Path) -> None:
    """``python -m edge_agent …`` (a package named edge_agent that sleeps, run from its parent)."""
    package = tmp_path / "pkg" / "edge_agent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sleeper.py").write_text("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.sleeper", "run"], cwd=package.parent,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        store_pidfile.write_pid_file(tmp_path, proc.pid)
        assert store_pidfile.read_agent_pid(tmp_path) == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_pid_file_defaults_to_this_process_and_is_removed_only_by_it(tmp_path: Path) -> None:
    path = store_pidfile.write_pid_file(tmp_path)
    assert path.read_text() == f"{os.getpid()}\n"
    store_pidfile.remove_pid_file(tmp_path)  # ours by the pid in it (the agent's own check needs no /proc)
    assert not path.exists()
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
    assert info.value.step == "verify" and "is not an Ed25519 public key" in str(info.value)


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


# --------------------------------------------------------------------------- fault injection
# Faults are injected from the test only: a replaced os/tempfile/bundle function that fails the way a full
# disk or a broken filesystem does, a bundle file changed between two steps, a smoke child that is a real
# process dying of a signal. The shipped store has no switch for any of them.

PASSING_SMOKE = 'echo "not json"; echo \'{"passed": true, "summary": "PASS: fake"}\''


def _fake_python(monkeypatch: pytest.MonkeyPatch, directory: Path, body: str) -> Path:
    """Make the store start ``body`` (a shell script) as its smoke child instead of the real interpreter.

    The script's arguments are written one per line to the returned file, so a test can check them.
    """
    args = directory / "smoke-args.txt"
    script = directory / "fake-python"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\nulimit -c 0\n{body}\n')
    script.chmod(0o755)
    view = types.SimpleNamespace(**{k: getattr(sys, k) for k in dir(sys) if not k.startswith("__")})
    view.executable = str(script)
    monkeypatch.setattr(store_install, "sys", view)
    return args


def _nospace(*_args: Any, **_kw: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _store_entries(state: Path) -> set[str]:
    return set(os.listdir(state / "models"))


def test_a_smoke_child_killed_by_a_signal_is_a_crash(installed: Path, tmp_path: Path, bundles: Bundles,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    before = _store_entries(state)
    args = _fake_python(monkeypatch, tmp_path, 'echo \'{"passed": true}\'; kill -SEGV $$')
    err = _refused(state, bundles.v2, public_key=bundles.public, threads=3)
    assert (err.step, str(err)) == ("smoke", "smoke test crashed the interpreter (SIGSEGV)")
    assert _store_entries(state) == before  # nothing extracted, no link touched
    copy_arg = args.read_text().splitlines()
    # the child checks the unpacked staging directory in tmp/ (as `run` will load it), with the requested threads
    assert copy_arg[:2] == ["-m", "edge_agent.model.smoke_child"] and copy_arg[3:] == ["--threads", "3", *LIMIT_ARGS]
    assert Path(copy_arg[2]).parent == state / "tmp" and Path(copy_arg[2]).name.startswith("stage-")
    assert not Path(copy_arg[2]).exists()  # removed after the refusal


def test_crash_site_reads_the_innermost_frame() -> None:
    """faulthandler's dump of a crashed smoke child: the crashing thread's first frame, nothing else."""
    stderr = ('Fatal Python error: Segmentation fault\n\nThread 0x01 (most recent call first):\n'
              '  File "/x/other.py", line 3 in idle\n\nCurrent thread 0x02 (most recent call first):\n'
              '  File "/x/litert.py", line 153 in __init__\n  File "/x/startup.py", line 9 in start\n')
    assert store_install.crash_site(stderr) == "/x/litert.py:153 in __init__"  # not the other thread's
    # the frame is the very last line (lines[:-2] would not look at its header)
    assert store_install.crash_site('Current thread 0x7f (most recent call first):\n'
                                    '  File "/opt/m.py", line 7 in load\n') == "/opt/m.py:7 in load"
    assert store_install.crash_site("Segmentation fault\n") is None
    assert store_install.crash_site("Current thread 0x02 (most recent call first):\n  <no Python frame>\n") is None
    assert store_install.crash_site("Current thread 0x02 (most recent call first):\n") is None  # cut off
    assert store_install.crash_site("") is None


def test_smoke_child_output_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "any.bundle"

    def outcome(body: str) -> str:
        _fake_python(monkeypatch, tmp_path, body)
        with pytest.raises(InstallError) as info:
            store_install.run_smoke_child(bundle)
        assert info.value.step == "smoke"
        return str(info.value)

    # the last JSON object on stdout is the report; other lines (and JSON that is no object) are skipped
    _fake_python(monkeypatch, tmp_path, 'echo \'{"passed": false}\'; echo \'{"passed": true, "n": 1}\'; '
                                        'echo "[1, 2]"; echo "{oops"')
    assert store_install.run_smoke_child(bundle) == {"passed": True, "n": 1}
    assert outcome('echo \'{"passed": true}\'; exit 1') == "smoke test failed: "  # exit code counts too
    assert outcome('echo \'{"passed": false, "summary": "FAIL: s", "error": "e"}\'') == "smoke test failed: FAIL: s"
    assert outcome('echo \'{"passed": false, "error": "no model"}\'; exit 1') == "smoke test failed: no model"
    long = "x" * 290 + "0123456789abcdef"
    assert outcome(f'echo "first line" >&2; echo "  {long}  " >&2; exit 3') == f"smoke test failed: {long[-300:]}"
    assert outcome("kill -KILL $$") == "smoke test crashed the interpreter (SIGKILL)"
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    assert store_install.run_smoke_child(bundle)["summary"] == "PASS: fake"
    assert args.read_text().splitlines() == ["-m", "edge_agent.model.smoke_child", str(bundle), "--threads", "1",
                                              *LIMIT_ARGS]


def test_a_smoke_child_that_cannot_start_names_the_interpreter(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. an interpreter built for another CPU: exec fails with ENOEXEC. Kills run_smoke_child mutants
    # 42 and 44 (no message), 43, 45, 47 and 48 (another step) and 46 (`strerror and exc`: the errno text).
    _fake_python(monkeypatch, tmp_path, "")
    script = tmp_path / "fake-python"
    script.write_text("no #! line: not a program the kernel can run\n")  # still executable (0755)
    with pytest.raises(InstallError) as info:
        store_install.run_smoke_child(tmp_path / "any.bundle")
    assert (info.value.step, str(info.value)) == ("smoke", f"cannot start the smoke test ({script}): Exec format error")


def test_a_crashed_smoke_child_names_where_it_crashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # faulthandler's dump on stderr gives the crashing frame. Kills run_smoke_child mutants 61 (crash site
    # not read) and 68 (crash site never shown).
    dump = ["Fatal Python error: Segmentation fault", "", "Current thread 0x01 (most recent call first):",
            '  File "/x/litert.py", line 153 in __init__']
    _fake_python(monkeypatch, tmp_path, "printf '%s\\n' " + " ".join(f"'{line}'" for line in dump)
                 + " >&2; kill -SEGV $$")
    with pytest.raises(InstallError) as info:
        store_install.run_smoke_child(tmp_path / "any.bundle")
    assert (info.value.step, str(info.value)) == (
        "smoke", "smoke test crashed the interpreter (SIGSEGV) at /x/litert.py:153 in __init__")


def test_a_bundle_that_grows_or_shrinks_while_copied_is_refused(installed: Path, tmp_path: Path,
                                                                bundles: Bundles,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    source = tmp_path / "changing.bundle"
    size = bundles.v2.stat().st_size
    real_mkstemp = tempfile.mkstemp
    change: list[Any] = []

    def mkstemp(*args: Any, **kw: Any) -> Any:
        result = real_mkstemp(*args, **kw)
        if kw.get("prefix") == "incoming-" and change:  # the size is known, the copy not begun
            change.pop()(source)
        return result

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    shutil.copy(bundles.v2, source)
    change.append(lambda p: p.open("ab").write(b"more"))
    err = _refused(state, source, public_key=bundles.public)
    assert (err.step, str(err)) == ("copy", "bundle grew while it was copied")
    shutil.copy(bundles.v2, source)
    change.append(lambda p: os.truncate(p, size // 2))
    err = _refused(state, source, public_key=bundles.public)
    assert (err.step, str(err)) == ("copy", f"bundle changed while it was copied ({size // 2} != {size} bytes)")


def test_a_bundle_of_several_blocks_is_copied_whole(installed: Path, tmp_path: Path, bundles: Bundles) -> None:
    # more than one 1 MiB read: every block counts toward the size (a mutant counting only the last
    # block would report "bundle changed while it was copied"); the file is no zip, so verify refuses it
    state = _copy_store(installed, tmp_path)
    big = tmp_path / "big.bundle"
    big.write_bytes(b"\x01" * (3 * 1024 * 1024 // 2))
    err = _refused(state, big, public_key=bundles.public)
    assert err.step == "verify" and str(big) in str(err)


def test_a_write_failure_while_copying_is_reported(installed: Path, tmp_path: Path, bundles: Bundles,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, raw: Any) -> None:
            self.raw = raw

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.raw.close()

        def write(self, data: bytes) -> int:
            _nospace()
            return 0

    def fdopen(fd: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
        raw = real_fdopen(fd, mode, *args, **kw)
        return FullDisk(raw) if mode == "wb" else raw

    monkeypatch.setattr(os, "fdopen", fdopen)
    err = _refused(state, bundles.v2, public_key=bundles.public)  # _refused: tmp/ is empty again
    assert (err.step, str(err)) == ("copy", "cannot copy bundle: No space left on device")


def test_a_write_failure_while_extracting_leaves_the_store_as_it_was(installed: Path, tmp_path: Path,
                                                                     bundles: Bundles,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    before = _store_entries(state)
    staged: list[Path] = []
    real_unpack = store_install.unpack_bundle

    def unpack_then_fail(path: Path, directory: Path, *args: Any, **kw: Any) -> None:
        staged.append(directory)
        assert directory.is_dir() and (directory.stat().st_mode & 0o777) == 0o755
        real_unpack(path, directory, *args, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_install, "unpack_bundle", unpack_then_fail)
    err = _refused(state, bundles.v2, public_key=bundles.public)  # staging removed: tmp/ is empty
    assert (err.step, str(err)) == ("extract", "cannot write the model store: No space left on device")
    assert _store_entries(state) == before
    sha2 = sha256_file(bundles.v2)
    # staged in tmp/ (same filesystem as models/), named after the bundle
    assert staged[0].parent == state / "tmp"
    assert re.fullmatch(rf"stage-{sha2[:16]}-[0-9a-f]{{8}}", staged[0].name)

    def fail_plainly(*_args: Any, **_kw: Any) -> None:
        raise OSError("disk gone")  # no errno: the message is the exception's text

    monkeypatch.setattr(store_install, "unpack_bundle", fail_plainly)
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("extract", "cannot write the model store: disk gone")


def test_a_write_failure_while_moving_into_the_store_leaves_it_as_it_was(installed: Path, tmp_path: Path,
                                                                         bundles: Bundles,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # After the smoke test the staging directory gets the bundle file and is renamed to models/<sha>/;
    # a failure there is an "extract" error with the OS reason, and nothing is left behind.
    # Kills install._materialise mutants 31 and 33 (no message), 32, 34, 36 and 37 (another step)
    # and 35 (`strerror and exc`: "[Errno 5] ..." instead of the reason).
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    before = _store_entries(state)
    _failing_replace(monkeypatch, state / "models" / sha256_file(bundles.v2))
    err = _refused(state, bundles.v2, public_key=bundles.public)  # staging removed: tmp/ is empty
    assert (err.step, str(err)) == ("extract", "cannot write the model store: Input/output error")
    assert _store_entries(state) == before
    monkeypatch.undo()
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    real_copyfile = shutil.copyfile

    def copyfile(src: Any, dst: Any, **kw: Any) -> Any:
        if Path(dst).name == store_layout.BUNDLE_FILE:
            raise OSError("disk gone")  # no errno: the message is the exception's text
        return real_copyfile(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("extract", "cannot write the model store: disk gone")
    assert _store_entries(state) == before


def test_a_model_directory_that_fails_its_check_after_extraction_is_an_error(
        installed: Path, tmp_path: Path, bundles: Bundles, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # an extraction that silently writes nothing: the final check of models/<sha>/ refuses it, the links stay,
    # and the CLI reports the error with no install step (it is a BundleError, not an InstallError)
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    # verified but nothing written
    monkeypatch.setattr(store_install, "unpack_bundle", lambda path, directory, *a, **kw: read_bundle(path, *a, **kw))
    before = _links(state)
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    assert (out["ok"], out["step"], out["active"]["bundle_sha256"]) == (False, "", sha1)
    assert out["error"] == f"{state / 'models' / sha2}: manifest missing or invalid (FileNotFoundError)"
    assert _links(state) == before


def test_a_damaged_copy_of_the_same_bundle_is_replaced(installed: Path, tmp_path: Path, bundles: Bundles,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    store_install.install_model(bundles.v2, state, bundles.public)
    store_install.rollback(state)  # current v1, previous v2 (kept on disk)
    (state / "models" / sha2 / MODEL).write_bytes(b"damaged")
    result = store_install.install_model(bundles.v2, state, bundles.public)
    assert result.status == "installed" and _links(state) == {"current": sha2, "previous": sha1}
    assert store_layout.load_model_dir(state / "models" / sha2).sha256 == sha2  # extracted again, intact
    assert (state / "models" / sha2).stat().st_mode & 0o777 == 0o755
    # an intact copy is reused as it is: the directory is not replaced
    store_install.rollback(state)
    inode = (state / "models" / sha2).stat().st_ino
    assert store_install.install_model(bundles.v2, state, bundles.public).status == "installed"
    assert _links(state) == {"current": sha2, "previous": sha1}
    assert (state / "models" / sha2).stat().st_ino == inode


def _failing_replace(monkeypatch: pytest.MonkeyPatch, link: Path) -> None:
    """os.replace fails (EIO) when it would rename a new link over ``link``."""
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if Path(dst) == link:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_an_install_that_cannot_switch_links_keeps_the_active_model(installed: Path, tmp_path: Path,
                                                                     bundles: Bundles,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # An install links `previous` before `current` (current_first=False): when the first rename fails,
    # `current` must still name the old model (a mutant linking `current` first would activate the new model
    # and still report a failure).
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    _failing_replace(monkeypatch, state / "models" / "previous")
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("swap", "cannot switch the model: Input/output error")
    assert _links(state) == {"current": sha1}
    assert store_layout.active_model(state).sha256 == sha1  # type: ignore[union-attr]
    monkeypatch.undo()
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    # the next install cleans the half-made link and the unused model directory, and succeeds
    store_install.install_model(bundles.v2, state, bundles.public)
    assert _links(state) == {"current": sha2, "previous": sha1}
    assert _store_entries(state) == {"current", "previous", sha1, sha2}


def test_a_rollback_that_cannot_switch_links_keeps_its_target_reachable(installed: Path, tmp_path: Path,
                                                                        bundles: Bundles,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A rollback links `current` first: if that fails, `previous` must still name the rollback target
    # (linking `previous` first would point both links at the model rolled back from).
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    store_install.install_model(bundles.v2, state, bundles.public)
    _failing_replace(monkeypatch, state / "models" / "current")
    with pytest.raises(InstallError) as info:
        store_install.rollback(state)
    assert (info.value.step, str(info.value)) == ("swap", "cannot switch the model: Input/output error")
    assert _links(state) == {"current": sha2, "previous": sha1}
    monkeypatch.undo()
    assert store_install.rollback(state).active.sha256 == sha1
    assert _links(state) == {"current": sha1, "previous": sha2}
    assert _store_entries(state) == {"current", "previous", sha1, sha2}  # the half-made link was cleaned


def test_each_rename_is_made_durable_before_the_next_step(installed: Path, tmp_path: Path, bundles: Bundles,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # fsyncs are not observable without a power cut, so the test records them (by the path of the fd)
    # together with every rename, and checks the order the store promises.
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    sizes: dict[str, int] = {}

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", path))
        sizes[path] = os.fstat(fd).st_size  # what is on disk when it is synced
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store_probation.write_probation(state, Probation(sha256="x", started=0.0, until=time.time() + 60))
    store_install.install_model(bundles.v2, state, bundles.public)
    models = state / "models"
    sha2 = sha256_file(bundles.v2)
    synced = [path for kind, path in events if kind == "fsync"]
    copies = [p for p in synced if re.fullmatch(rf"{state}/tmp/incoming-.*\.part", p)]
    assert copies and sizes[copies[0]] == bundles.v2.stat().st_size  # the whole copy, flushed, then synced
    # the end of the probation (an install ends it) is made durable too
    assert ("fsync", str(state)) in events[max(i for i, e in enumerate(events) if e[0] == "replace"):]
    renames = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    into_models = [i for i in renames if re.search(rf" -> {models}/({sha2}|previous|current)$", events[i][1])]
    assert len(into_models) == 3  # the model directory, then previous, then current
    stage = events[into_models[0]][1].split(" -> ")[0]
    before_stage = [p for kind, p in events[:into_models[0]] if kind == "fsync"]
    assert f"{stage}/bundle.zip" in before_stage and stage in before_stage
    for i in into_models:
        later = [j for j in renames if j > i]
        window = events[i + 1:later[0]] if later else events[i + 1:]
        assert ("fsync", str(models)) in window, events[i]


def test_the_store_lock_is_held_while_links_change(installed: Path, tmp_path: Path, bundles: Bundles,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "fresh"  # no lock file yet: the store creates it
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    lock = state / "store.lock"
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if Path(dst).name == "current":
            fd = os.open(lock, os.O_RDONLY)
            try:  # even a shared lock is refused while an install or rollback holds the store
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
            finally:
                os.close(fd)
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    store_install.install_model(bundles.v1, state, bundles.public)
    store_install.install_model(bundles.v2, state, bundles.public)
    store_install.rollback(state)
    assert seen == ["held", "held", "held"]
    assert lock.stat().st_mode & 0o777 == 0o644
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after each call
    finally:
        os.close(fd)


def test_a_store_in_a_new_directory_tree_is_created(tmp_path: Path, bundles: Bundles,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    monkeypatch.setattr(store_layout, "SYSTEM_TRUSTED_KEY", tmp_path / "no-such.pub")
    state = tmp_path / "a" / "b" / "state"
    # no pinned key anywhere: an unsigned bundle is accepted
    result = store_install.install_model(bundles.unsigned, state)
    assert result.status == "installed" and _links(state) == {"current": sha256_file(bundles.unsigned)}
    assert sorted(os.listdir(state)) == ["models", "store.lock", "tmp"]


def test_the_default_state_dir_is_used_everywhere(installed: Path, tmp_path: Path, bundles: Bundles,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    sha1, sha2 = sha256_file(bundles.v1), sha256_file(bundles.v2)
    assert store_layout.active_model().sha256 == sha1  # type: ignore[union-attr]
    assert store_layout.previous_model() is None
    assert store_layout.store_status()["state_dir"] == str(state)
    assert store_install.install_model(bundles.v2, public_key=str(bundles.public)).active.sha256 == sha2
    assert store_layout.previous_model().sha256 == sha1  # type: ignore[union-attr]
    assert store_install.rollback().active.sha256 == sha1
    assert _links(state) == {"current": sha1, "previous": sha2}


def test_an_install_signals_a_running_agent(installed: Path, tmp_path: Path, bundles: Bundles,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    agent = _child("edge-agent", "run")
    try:
        store_pidfile.write_pid_file(state, agent.pid)
        result = store_install.install_model(bundles.v2, state, bundles.public)
        assert result.agent_signalled is True and result.to_json()["agent_signalled"] is True
        assert agent.wait(timeout=60) == 7
    finally:
        agent.kill()
        agent.wait()


def test_leftover_symlinks_in_tmp_are_removed_not_followed(installed: Path, tmp_path: Path) -> None:
    state = _copy_store(installed, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, state / "tmp" / "stage-link")
    with pytest.raises(InstallError):
        store_install.rollback(state)  # nothing to roll back to, but tidied under the lock first
    assert list((state / "tmp").iterdir()) == []
    assert (outside / "keep").read_text() == "x"
    assert store_layout.active_model(state) is not None


def test_a_link_that_is_not_a_symlink_names_no_model(installed: Path, tmp_path: Path) -> None:
    state = _copy_store(installed, tmp_path)
    (state / "models" / "previous").write_text("not a link")
    assert store_layout.previous_model(state) is None
    assert store_layout.store_status(state)["previous"] is None


def test_timings_are_milliseconds_rounded_to_two_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_install, "time", types.SimpleNamespace(perf_counter=lambda: 12.5))
    assert store_install._ms_since(10.0) == 2500.0
    model = store_layout.InstalledModel("a" * 64, Path("/nonexistent"), _audio_manifest(16000))
    data = store_install.InstallResult(status="installed", active=model, previous=None,
                                    timings_ms={"copy": 1.23456}).to_json()
    assert (data["timings_ms"], data["smoke"], data["previous"], data["agent_signalled"]) == (
        {"copy": 1.23}, {}, None, False)


# --------------------------------------------------------------------------- files owned by the agent


@pytest.mark.parametrize("owner", [(4321, 0), (0, 4322), (1, 0), (0, 1)])  # uid or gid 0 (or 1): not root:root
def test_files_go_to_the_state_dir_owner_unless_it_is_root_root(store: Path, bundles: Bundles, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                owner: tuple[int, int]) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands files to another user")
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    os.chown(store, *owner)
    result = store_install.install_model(bundles.v1, store)
    for path in (store / "models", result.active.directory / MODEL, store / "models" / "current"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == owner, path
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir()
    os.chown(root_owned, 0, 0)
    shutil.copy(bundles.public, root_owned / store_layout.TRUSTED_KEY)
    result = store_install.install_model(bundles.v1, root_owned)
    st = (result.active.directory / MODEL).lstat()
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_files_of_a_vanished_state_dir_are_not_handed_over(tmp_path: Path) -> None:
    # adopt cannot stat the state dir: it leaves the file alone (and raises nothing)
    path = tmp_path / "f"
    path.write_text("x")
    before = path.lstat()
    store_layout.adopt(path, tmp_path / "missing")
    after = path.lstat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


# --------------------------------------------------------------------------- the running agent, pid file


def test_the_agent_never_signals_itself_and_removes_only_its_own_pid_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _child("edge-agent", "run")
    try:
        # this process is "the agent": its pid is the child's, whose command line names edge-agent
        monkeypatch.setattr(os, "getpid", lambda: agent.pid)
        path = store_pidfile.write_pid_file(tmp_path)
        assert path.read_text() == f"{agent.pid}\n"
        assert store_pidfile.signal_running_agent(tmp_path) is False
        store_pidfile.remove_pid_file(tmp_path)
        assert not path.exists()
        store_pidfile.remove_pid_file(tmp_path)  # already gone: fine
        monkeypatch.undo()
        assert agent.poll() is None  # never signalled
    finally:
        agent.kill()
        agent.wait()


# --------------------------------------------------------------------------- probation


def test_probation_defaults_and_the_exact_deadline(installed: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    monkeypatch.setattr(store_probation, "time", types.SimpleNamespace(time=lambda: 1000.0,
                                                                  perf_counter=time.perf_counter))
    started = store_probation.start_probation(state, model, 50.0)
    assert started == Probation(sha256=model.sha256, started=1000.0, until=1050.0, max_crashes=2, crashes=0,
                                running=True, command_id="")
    # at the deadline itself the model is still on probation: the unclean start is counted
    monkeypatch.setattr(store_probation, "time", types.SimpleNamespace(time=lambda: 1050.0,
                                                                  perf_counter=time.perf_counter))
    assert store_probation.note_agent_start(state) is None
    assert store_probation.read_probation(state).crashes == 1  # type: ignore[union-attr]
    monkeypatch.setattr(store_probation, "time", types.SimpleNamespace(time=lambda: 1050.5,
                                                                  perf_counter=time.perf_counter))
    assert store_probation.note_agent_start(state) is None and store_probation.read_probation(state) is None


def test_probation_rollback_at_agent_start_does_not_signal_an_agent(installed: Path, tmp_path: Path,
                                                                    bundles: Bundles,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # the agent calls note_agent_start itself, before it loads a model: the rollback must not SIGHUP
    # whatever process the pid file names
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    result = store_install.install_model(bundles.v2, state, bundles.public)
    store_probation.write_probation(state, Probation(sha256=result.active.sha256, started=0.0,
                                                until=time.time() + 600, max_crashes=0, running=True))
    agent = _child("edge-agent", "run")
    try:
        store_pidfile.write_pid_file(state, agent.pid)
        back = store_probation.note_agent_start(state)
        assert back is not None and back.active.sha256 == sha256_file(bundles.v1)
        assert back.agent_signalled is False and agent.poll() is None
    finally:
        agent.kill()
        agent.wait()


def test_cli_models_shows_an_expired_probation_as_zero_seconds(installed: Path, tmp_path: Path, capsys) -> None:
    state = _copy_store(installed, tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    store_probation.write_probation(state, Probation(sha256=model.sha256, started=0.0, until=time.time() - 100,
                                                crashes=2))
    assert agent_main(["models", "--state-dir", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["previous: none", "probation: 0 s left, 2 crash(es)"]


# --------------------------------------------------------------------------- command line


def test_cli_threads_default_and_key_option(installed: Path, tmp_path: Path, bundles: Bundles,
                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    state = _copy_store(installed, tmp_path)
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--public-key",
                       str(bundles.public)]) == 0
    assert args.read_text().splitlines()[3:] == ["--threads", "1", *LIMIT_ARGS]
    capsys.readouterr()
    # the option's key is used: a bundle signed by another key is refused
    assert agent_main(["install-model", str(bundles.other_key), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == "verify" and "does not verify" in out["error"]


HELP = {
    (): ["install-model verify, smoke-test and activate a model bundle",
         "rollback activate the previous model again",
         "models show the active and previous model"],
    ("install-model",): [
        "Install a bundle into the model store; the previous model is kept for rollback.",
        "usage: edge-agent install-model [-h] [--state-dir STATE_DIR] [--public-key PUBLIC_KEY] "
        "[--allow-new-input] [--no-downgrade] [--threads THREADS] [--max-model-mb MAX_MODEL_MB] "
        "[--latency-budget-ms LATENCY_BUDGET_MS] [--json] BUNDLE",
        "  --state-dir STATE_DIR  model store (default: the agent's, see edge-agent run --help)",
        f"  --public-key PUBLIC_KEY  Ed25519 public key (PEM); default the pinned state-dir/trusted.pub or "
        f"{store_layout.SYSTEM_TRUSTED_KEY}",
        "  --allow-new-input     accept a model whose input differs from the active model's",
        "  --no-downgrade        refuse a lower version of the active model",
        "  --threads THREADS     interpreter threads for the smoke test",
        "  --max-model-mb MAX_MODEL_MB largest model.tflite accepted (default 256 MiB, as the agent's "
        "[model] max_model_mb)",
        "  --latency-budget-ms LATENCY_BUDGET_MS this device's budget for one inference in the smoke test "
        "(default the bundle's, set from the converting host; 0: not judged), as the agent's [model] "
        "latency_budget_ms",
        "  --json                print the result as JSON on stdout",
    ],
    ("rollback",): ["  --state-dir STATE_DIR  model store (default: the agent's, see edge-agent run --help)",
                    "  --json                print the result as JSON on stdout"],
    ("models",): ["  --state-dir STATE_DIR  model store (default: the agent's, see edge-agent run --help)",
                  "  --json                print the status as JSON on stdout"],
}


@pytest.mark.parametrize("command", sorted(HELP))
def test_cli_help_texts(command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # what `edge-agent [COMMAND] --help` prints is the commands' documentation
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as info:
        agent_main([*command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # however argparse wraps the lines
    for expected in HELP[command]:
        assert f" {' '.join(expected.split())} " in f" {text} ", (expected, text)


def test_cli_install_options_and_outputs(installed: Path, tmp_path: Path, bundles: Bundles,
                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    state = _copy_store(installed, tmp_path)
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    v1 = read_bundle(bundles.v1, require_signature=False).manifest.short_sha
    v2 = read_bundle(bundles.v2, require_signature=False).manifest.short_sha
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--threads", "2"]) == 0
    assert args.read_text().splitlines()[3:] == ["--threads", "2", *LIMIT_ARGS]
    assert capsys.readouterr().out == f"installed: active colours 1.10 ({v2}), previous colours 1.9 ({v1})\n"
    # without --no-downgrade a lower version is accepted
    assert agent_main(["install-model", str(bundles.older), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"]["version"] == "1.2"
    # a refusal on an empty store names no active model
    empty = tmp_path / "empty"
    assert agent_main(["install-model", str(bundles.other_key), "--state-dir", str(empty), "--public-key",
                       str(bundles.public), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["step"], out["active"]) == (False, "verify", None)


def test_cli_latency_budget_reaches_the_smoke_child(installed: Path, tmp_path: Path, bundles: Bundles,
                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    state = _copy_store(installed, tmp_path)
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--latency-budget-ms", "2.5"]) == 0
    assert args.read_text().splitlines()[3:] == ["--threads", "1", *LIMIT_ARGS, "--latency-budget-ms", "2.5"]
    capsys.readouterr()
    # type=float: a value that is no number is refused by argparse, before the store is touched
    # (without it, "fast" would reach the install and fail there with a traceback)
    args.unlink()
    with pytest.raises(SystemExit) as info:
        agent_main(["install-model", str(bundles.older), "--state-dir", str(state), "--public-key",
                    str(bundles.public), "--latency-budget-ms", "fast"])
    assert info.value.code == 2
    assert "argument --latency-budget-ms: invalid float value: 'fast'" in capsys.readouterr().err
    assert not args.exists() and store_layout.active_model(state).sha256 == sha256_file(bundles.v2)  # type: ignore[union-attr]


def test_cli_rollback_refusal_names_the_active_model(installed: Path, tmp_path: Path, bundles: Bundles,
                                                     capsys) -> None:
    state = _copy_store(installed, tmp_path)
    assert agent_main(["rollback", "--state-dir", str(state), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["step"], out["active"]["bundle_sha256"]) == (False, "rollback", sha256_file(bundles.v1))


def test_probation_start_check_is_shallow(installed: Path, tmp_path: Path) -> None:
    # at agent start only sizes are checked (deep=False): a same-size damaged model on probation is still
    # the model on probation, and its crash is counted (the agent's own load then finds the damage)
    state = _copy_store(installed, tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    store_probation.write_probation(state, Probation(sha256=model.sha256, started=0.0, until=time.time() + 600,
                                                running=True))
    model.model_path.write_bytes(b"\x00" * model.model_path.stat().st_size)
    assert store_probation.note_agent_start(state) is None
    probation = store_probation.read_probation(state)
    assert probation is not None and (probation.crashes, probation.running) == (1, True)


def test_a_pid_file_that_cannot_be_removed_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _child("edge-agent", "run")
    try:
        monkeypatch.setattr(os, "getpid", lambda: agent.pid)
        path = store_pidfile.write_pid_file(tmp_path)

        def read_only(self: Path, missing_ok: bool = False) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(Path, "unlink", read_only)
        store_pidfile.remove_pid_file(tmp_path)  # a read-only filesystem: no exception at agent stop
        monkeypatch.undo()
        assert path.is_file()
    finally:
        agent.kill()
        agent.wait()


def test_the_free_space_needed_is_three_bundles_plus_the_margin(installed: Path, tmp_path: Path, bundles: Bundles,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # room for the incoming copy, the extracted members and the bundle kept in the model directory
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    need = 3 * bundles.v2.stat().st_size + fs.FREE_SPACE_MARGIN
    real_usage = shutil.disk_usage
    free = [need - 1]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=free[0]))
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("copy", f"not enough free space in {state}: {(need - 1) // 1_048_576} MiB free, "
                                            f"{need // 1_048_576} MiB needed")
    free[0] = need
    assert store_install.install_model(bundles.v2, state, bundles.public).status == "installed"


def test_an_old_model_that_cannot_be_deleted_does_not_fail_the_install(installed: Path, tmp_path: Path,
                                                                       bundles: Bundles,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    sha1, sha2, sha3 = (sha256_file(b) for b in (bundles.v1, bundles.v2, bundles.v3))
    store_install.install_model(bundles.v2, state, bundles.public)
    real_rmdir = os.rmdir

    def busy(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path).name == sha1:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_rmdir(path, *args, **kw)

    monkeypatch.setattr(os, "rmdir", busy)
    result = store_install.install_model(bundles.v3, state, bundles.public)
    assert result.status == "installed" and _links(state) == {"current": sha3, "previous": sha2}


@pytest.mark.parametrize("error", [ProcessLookupError, PermissionError])
def test_an_agent_that_cannot_be_signalled_is_reported_as_not_signalled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[OSError]) -> None:
    agent = _child("edge-agent", "run")
    try:
        store_pidfile.write_pid_file(tmp_path, agent.pid)

        def kill(pid: int, signum: int) -> None:
            raise error(errno.ESRCH if error is ProcessLookupError else errno.EPERM, "refused")

        monkeypatch.setattr(os, "kill", kill)  # the agent exits, or is another user's, just before the signal
        assert store_pidfile.signal_running_agent(tmp_path) is False
    finally:
        monkeypatch.undo()
        agent.kill()
        agent.wait()


def test_unreadable_probation_files_mean_no_probation(tmp_path: Path) -> None:
    for text in ("{", "[]", '{"sha256": "x", "started": 0, "until": 1, "unknown": 2}'):
        (tmp_path / "probation.json").write_text(text)
        assert store_probation.read_probation(tmp_path) is None, text


def test_the_system_key_is_used_when_none_is_pinned_in_the_store(tmp_path: Path, bundles: Bundles,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_layout, "SYSTEM_TRUSTED_KEY", bundles.public)
    key = store_layout.resolve_public_key(tmp_path)
    expected = store_layout.resolve_public_key(tmp_path, bundles.public)
    assert key is not None and key.public_bytes_raw() == expected.public_bytes_raw()  # type: ignore[union-attr]


def test_cli_threads_must_be_a_number(tmp_path: Path, bundles: Bundles, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        agent_main(["install-model", str(bundles.v1), "--state-dir", str(tmp_path / "s"), "--threads", "two"])
    assert info.value.code == 2
    assert "argument --threads: invalid int value: 'two'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before the store is touched


def test_only_new_files_are_handed_to_the_state_dir_owner(tmp_path: Path, bundles: Bundles,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # a model installed while the store was root's stays root's when a later install links it as
    # `previous`: the new link is handed over, not the files it points at (adopt is not recursive by default)
    if os.geteuid() != 0:
        pytest.skip("only root hands files to another user")
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 0, 0)
    first = store_install.install_model(bundles.v1, state, bundles.public)
    os.chown(state, 4321, 4322)
    second = store_install.install_model(bundles.v2, state, bundles.public)
    assert second.previous is not None and second.previous.sha256 == first.active.sha256
    link, old_model = (state / "models" / "previous").lstat(), (first.active.directory / MODEL).lstat()
    assert (link.st_uid, link.st_gid) == (4321, 4322)
    assert (old_model.st_uid, old_model.st_gid) == (0, 0)


def test_a_model_of_another_kind_is_named_by_its_kind(installed: Path) -> None:
    current = store_layout.active_model(installed)
    assert current is not None
    with pytest.raises(InstallError) as info:
        store_install._check_compatible(_audio_manifest(16000), current, False, True)
    assert str(info.value) == ("the new model does not fit the active model's input (input shape [1, 1600] != "
                               "[1, 16, 16, 3]; audio input instead of image); use --allow-new-input if the agent's "
                               "source and config fit it")


def test_a_staging_directory_that_cannot_be_made_is_a_store_error(installed: Path, tmp_path: Path,
                                                                  bundles: Bundles,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # mkdir fails (a full disk): there is no staging directory to remove, and the error is still an InstallError
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path).name.startswith("stage-"):
            _nospace()
        real_mkdir(path, *args, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    err = _refused(state, bundles.v2, public_key=bundles.public)
    assert (err.step, str(err)) == ("extract", "cannot write the model store: No space left on device")


def test_a_filesystem_that_refuses_chown_does_not_fail_the_install(store: Path, bundles: Bundles, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands files to another user")
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    os.chown(store, 4321, 4322)

    def refuse(*_args: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "lchown", refuse)
    result = store_install.install_model(bundles.v1, store)
    assert result.status == "installed" and _links(store) == {"current": result.active.sha256}


def test_a_probation_file_that_cannot_be_removed_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_probation.write_probation(tmp_path, Probation(sha256="a" * 64, started=0.0, until=1.0))

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "unlink", read_only)
    store_probation.clear_probation(tmp_path)  # no exception: an install or rollback still finishes
    monkeypatch.undo()
    assert store_probation.read_probation(tmp_path) is not None


def test_install_defaults_allow_downgrades_and_one_thread(installed: Path, tmp_path: Path, bundles: Bundles,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    assert store_install.install_model(bundles.older, state, bundles.public).active.manifest.version == "1.2"
    assert args.read_text().splitlines()[3:] == ["--threads", "1", *LIMIT_ARGS]


def _unlink_refused_for(monkeypatch: pytest.MonkeyPatch, refuse: Any) -> None:
    """Path.unlink fails (EBUSY) for the paths ``refuse(path)`` selects."""
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if refuse(self):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)


def test_leftovers_that_cannot_be_removed_do_not_block_an_install(installed: Path, tmp_path: Path,
                                                                  bundles: Bundles,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    os.symlink("nowhere", state / "models" / ".current.stuck.link")
    (state / "tmp" / "stuck.part").write_bytes(b"x")
    _unlink_refused_for(monkeypatch, lambda p: "stuck" in p.name)
    assert store_install.install_model(bundles.v2, state, bundles.public).status == "installed"
    assert (state / "tmp" / "stuck.part").exists() and (state / "models" / ".current.stuck.link").is_symlink()


def test_an_incoming_copy_that_cannot_be_removed_does_not_fail_the_install(installed: Path, tmp_path: Path,
                                                                           bundles: Bundles,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    _unlink_refused_for(monkeypatch, lambda p: p.name.startswith("incoming-"))
    assert store_install.install_model(bundles.v2, state, bundles.public).status == "installed"
    assert [p.name.startswith("incoming-") for p in (state / "tmp").iterdir()] == [True]  # left for the next one
    monkeypatch.undo()
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    store_install.install_model(bundles.v3, state, bundles.public)
    assert list((state / "tmp").iterdir()) == []


def test_an_install_that_loses_the_race_to_create_the_store_goes_on(tmp_path: Path, bundles: Bundles,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # two installs start on a new store at once (the layout is made before the lock is taken): the other
    # creates models/ between this one's check and its mkdir
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    state = tmp_path / "state"
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kw: Any) -> None:
        if Path(path) == state / "models" and not Path(path).exists():
            real_mkdir(path, *args, **kw)  # the other installer wins
        real_mkdir(path, *args, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert store_install.install_model(bundles.v1, state, bundles.public).status == "installed"


def test_the_deep_check_applies_to_both_links(installed: Path, tmp_path: Path, bundles: Bundles,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # a same-size damaged model passes the shallow (size) check only: status and rollback look deep,
    # active_model looks as deep as asked, at `current` and at `previous` alike
    state = _copy_store(installed, tmp_path)
    _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    store_install.install_model(bundles.v2, state, bundles.public)
    for link in ("current", "previous"):
        model = state / "models" / os.readlink(state / "models" / link) / MODEL
        model.write_bytes(b"\x00" * model.stat().st_size)
    assert store_layout.store_status(state)["active"] is None and store_layout.previous_model(state) is None
    assert store_layout.active_model(state) is None
    (state / "models" / "current").unlink()
    assert store_layout.active_model(state, deep=False).sha256 == sha256_file(bundles.v1)  # type: ignore[union-attr]


def test_free_space_figures_are_whole_mebibytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 1_048_576
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=64 * mib))
    with pytest.raises(InstallError) as info:
        fs.check_free_space(tmp_path, 64 * mib)
    assert str(info.value) == f"not enough free space in {tmp_path}: 64 MiB free, 80 MiB needed"


def test_cli_max_model_mb_bounds_the_model(installed: Path, tmp_path: Path, bundles: Bundles,
                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``--max-model-mb`` reaches the bundle check and the smoke child (mutants: the limits not passed,
    the option not read as an int)."""
    state = _copy_store(installed, tmp_path)
    before = _links(state)
    args = _fake_python(monkeypatch, tmp_path, PASSING_SMOKE)
    size = len(read_bundle(bundles.v2, require_signature=False).model_bytes)
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--max-model-mb", "0", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["step"]) == (False, "verify"), out
    assert f"model.tflite is {size} bytes, more than the 0 bytes a device accepts (max_model_mb)" in out["error"]
    assert _links(state) == before and not args.exists()
    assert agent_main(["install-model", str(bundles.v2), "--state-dir", str(state), "--public-key",
                       str(bundles.public), "--max-model-mb", "1"]) == 0
    assert args.read_text().splitlines()[3:] == ["--threads", "1", "--max-model-bytes", str(1 << 20)]


def test_name_given_bundle_renames_only_messages_that_name_a_private_copy(tmp_path: Path) -> None:
    """An error naming the internal copy or staging directory gets the user's path in a copy that keeps its
    type and step; one naming neither is the very same error (raised as is, no chain)."""
    temp, staging = tmp_path / "tmp" / "incoming-1.part", tmp_path / "tmp" / "staging-1"
    given = Path("/home/me/colours.bundle")
    plain = InstallError("colours 1.0 is older than the active 1.9", step="verify")
    assert store_install._name_given_bundle(plain, (temp, staging), given) is plain
    smoke = InstallError(f"smoke test of {staging} failed", step="smoke")
    renamed = store_install._name_given_bundle(smoke, (temp, staging), given)
    assert type(renamed) is InstallError and renamed.step == "smoke"  # type: ignore[attr-defined]
    assert str(renamed) == f"smoke test of {given} failed" and str(smoke) == f"smoke test of {staging} failed"
    detailed = EdgeError(f"{temp}: damaged", "a second argument")  # str() is the repr of both args
    assert str(store_install._name_given_bundle(detailed, (temp, staging), given)) == (
        str(detailed).replace(str(temp), str(given)))
