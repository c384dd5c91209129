"""An install or rollback SIGKILLed at each of its steps leaves exactly one valid model active.

The installer is stopped at a step by tests/modelstore_stopper.py (test-only; the shipped
store has no crash switch), the step's artefact on disk is checked, which proves the
installer got there, and only then is it SIGKILLed. One more test kills the unmodified
``edge-agent install-model`` when its incoming copy shows up in ``tmp/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.model.bundle import read_bundle
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.util.fs import sha256_file
from tests.deploy_helpers import private_key, repack
from tests.fixtures_ssh import BundleSet, DeployKeys
from tests.modelstore_stopper import INSTALL_STEPS, NOT_REACHED, ROLLBACK_STEPS

pytestmark = pytest.mark.integration

WAIT_S = 60.0  # a bound for a stuck process, never an assertion on speed


def _install_cmd(bundle: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "install-model", str(bundle), "--state-dir", str(state)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 20), 60 + i * 100, dtype=np.uint8))
    return folder


@dataclass(frozen=True)
class Store:
    state: Path
    old: str  # bundle sha256 active before the interrupted action
    new: str  # bundle sha256 the interrupted action activates
    bundle: bytes = b""  # the bundle being installed
    older: str = ""  # `previous` before an install: collected once the install is done


@pytest.fixture(scope="module")
def older(tmp_path_factory: pytest.TempPathFactory, test_bundles: BundleSet, deploy_keys: DeployKeys) -> Path:
    """Another version of the good model, installed before it."""
    return repack(test_bundles.good, tmp_path_factory.mktemp("older") / "older.bundle",
                  private_key(deploy_keys.private), version="0.0.1")


@pytest.fixture
def state(tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet, older: Path) -> Path:
    """A store with the good model active, an older one as `previous`, the signing key pinned."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / store_layout.TRUSTED_KEY)
    store_install.install_model(older, state, signal_agent=False)
    store_install.install_model(test_bundles.good, state, signal_agent=False)
    return state


# --------------------------------------------------------------------------- observing the installer


def _proc_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc ("T" stopped, "Z" zombie); "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the installer exited with {proc.returncode} before {what}: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.002)


def _links(state: Path) -> dict[str, str]:
    models = state / "models"
    return {name: os.readlink(models / name) for name in ("current", "previous") if (models / name).is_symlink()}


def _link_temps(state: Path, name: str) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in (state / "models").glob(f".{name}.*.link")}


def _incoming(state: Path) -> list[Path]:
    return sorted((state / "tmp").glob("incoming-*.part"))


def _only_incoming(store: Store) -> bytes:
    [part] = _incoming(store.state)
    return part.read_bytes()


# --------------------------------------------------------------------------- what each step leaves on disk
# Each check proves the installer reached the step (and not the next one) when it was killed.


def _copy_partial(s: Store, pid: int) -> None:
    data = _only_incoming(s)
    assert 0 < len(data) < len(s.bundle) and s.bundle.startswith(data)
    assert not (s.state / "models" / s.new).exists() and _links(s.state) == {"current": s.old, "previous": s.older}


def _copied(s: Store, pid: int) -> None:
    assert _only_incoming(s) == s.bundle
    assert not list((s.state / "tmp").glob("stage-*"))
    assert not (s.state / "models" / s.new).exists() and _links(s.state) == {"current": s.old, "previous": s.older}


def _smoking(s: Store, pid: int) -> None:
    assert _only_incoming(s) == s.bundle
    [stage] = list((s.state / "tmp").glob("stage-*"))  # unpacked and verified, the bundle not yet added
    assert {p.name for p in stage.iterdir()} >= {"model.tflite", "manifest.json"}
    assert not (stage / "bundle.zip").exists()
    assert not (s.state / "models" / s.new).exists() and _links(s.state) == {"current": s.old, "previous": s.older}
    smoke = [c for c in _children(pid) if "edge_agent.model.smoke_child" in _cmdline(c)]
    assert len(smoke) == 1 and str(stage) in _cmdline(smoke[0])


def _staged(s: Store, pid: int) -> None:
    [stage] = list((s.state / "tmp").glob("stage-*"))
    assert (stage / "bundle.zip").read_bytes() == s.bundle
    assert {"model.tflite", "manifest.json", "bundle.zip"} <= {p.name for p in stage.iterdir()}
    assert not (s.state / "models" / s.new).exists() and _links(s.state) == {"current": s.old, "previous": s.older}


def _extracted(s: Store, pid: int) -> None:
    assert store_layout.load_model_dir(s.state / "models" / s.new).sha256 == s.new
    assert not list((s.state / "tmp").glob("stage-*"))
    assert _links(s.state) == {"current": s.old, "previous": s.older} and not _link_temps(s.state, "previous")


def _previous_link_made(s: Store, pid: int) -> None:
    assert list(_link_temps(s.state, "previous").values()) == [s.old]
    assert _links(s.state) == {"current": s.old, "previous": s.older}


def _previous_linked(s: Store, pid: int) -> None:
    assert _links(s.state) == {"current": s.old, "previous": s.old}
    assert not _link_temps(s.state, "current")


def _current_link_made(s: Store, pid: int) -> None:
    assert list(_link_temps(s.state, "current").values()) == [s.new]
    assert _links(s.state) == {"current": s.old, "previous": s.old}


def _swapped(s: Store, pid: int) -> None:
    assert _links(s.state) == {"current": s.new, "previous": s.old}
    assert (s.state / "models" / s.older).is_dir()  # collected after the swap


def _cleaned(s: Store, pid: int) -> None:
    assert _links(s.state) == {"current": s.new, "previous": s.old}
    assert not (s.state / "models" / s.older).exists()
    assert not list((s.state / "tmp").iterdir())


INSTALL_CHECKS: dict[str, Callable[[Store, int], None]] = {
    "copy_partial": _copy_partial, "copied": _copied, "smoking": _smoking, "staged": _staged,
    "extracted": _extracted, "previous_link_made": _previous_link_made, "previous_linked": _previous_linked,
    "current_link_made": _current_link_made, "swapped": _swapped, "cleaned": _cleaned,
}


def _r_current_link_made(s: Store, pid: int) -> None:
    assert list(_link_temps(s.state, "current").values()) == [s.new]
    assert _links(s.state) == {"current": s.old, "previous": s.new}


def _r_swapped(s: Store, pid: int) -> None:
    assert _links(s.state) == {"current": s.new, "previous": s.new}
    assert not _link_temps(s.state, "previous")


def _r_previous_link_made(s: Store, pid: int) -> None:
    assert list(_link_temps(s.state, "previous").values()) == [s.old]
    assert _links(s.state) == {"current": s.new, "previous": s.new}


def _r_previous_linked(s: Store, pid: int) -> None:
    assert _links(s.state) == {"current": s.new, "previous": s.old}
    assert not _link_temps(s.state, "previous")


ROLLBACK_CHECKS: dict[str, Callable[[Store, int], None]] = {
    "current_link_made": _r_current_link_made, "swapped": _r_swapped,
    "previous_link_made": _r_previous_link_made, "previous_linked": _r_previous_linked,
}


def test_every_step_has_a_check() -> None:
    assert set(INSTALL_CHECKS) == set(INSTALL_STEPS) and set(ROLLBACK_CHECKS) == set(ROLLBACK_STEPS)


def _stop_at(action: str, step: str, *args: Path) -> subprocess.Popen[bytes]:
    """Start the test-only installer; return once it (or, at "smoking", its smoke child) stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.modelstore_stopper", action, step, *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stopped() -> bool:
        return any(_proc_state(pid) == "T" for pid in (proc.pid, *_children(proc.pid)))

    _wait_until(stopped, f"it stopped at {step}", proc)
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
    assert proc.returncode != NOT_REACHED


def _assert_one_valid_model(state: Path, expected: str, images: Path) -> None:
    """``current`` itself (not the fallback to ``previous``) names a model that verifies and runs."""
    status = store_layout.store_status(state)
    assert status["active"] is not None and status["active"]["bundle_sha256"] == expected
    active = store_layout.active_model(state)
    assert active is not None and active.sha256 == expected
    read_bundle(active.bundle_path, state / store_layout.TRUSTED_KEY)
    assert store_install.run_smoke_child(active.bundle_path)["passed"]
    agent = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--state-dir", str(state), "--source", str(images),
         "--events", "every", "--public-key", str(state / store_layout.TRUSTED_KEY)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert agent.returncode == 0, agent.stderr
    assert sum("/evt/" in line for line in agent.stdout.splitlines()) == 2


def _assert_next_install_succeeds(state: Path, bundle: Path, valid: set[str]) -> None:
    proc = subprocess.run(_install_cmd(bundle, state), capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert store_layout.store_status(state)["active"]["bundle_sha256"] == sha256_file(bundle)
    assert not list((state / "tmp").iterdir())
    assert {p.name for p in (state / "models").iterdir()} <= valid | {"current", "previous"}


@pytest.mark.parametrize("step", INSTALL_STEPS)
def test_install_killed_at_each_step_leaves_one_valid_model(
    state: Path, test_bundles: BundleSet, older: Path, images: Path, step: str
) -> None:
    old, new = sha256_file(test_bundles.good), sha256_file(test_bundles.good_v2)
    store = Store(state, old, new, test_bundles.good_v2.read_bytes(), older=sha256_file(older))

    proc = _stop_at("install", step, test_bundles.good_v2, state)
    orphans = _children(proc.pid)
    try:
        INSTALL_CHECKS[step](store, proc.pid)
    finally:
        _kill(proc)
        for child in orphans:  # the stopped smoke child goes on without its installer
            os.kill(child, signal.SIGCONT)
    _wait_until(lambda: all(_proc_state(c) in ("", "Z") for c in orphans), "the orphaned smoke child to end")

    committed = INSTALL_STEPS.index(step) >= INSTALL_STEPS.index("swapped")
    _assert_one_valid_model(state, new if committed else old, images)
    _assert_next_install_succeeds(state, test_bundles.good_v2, {old, new})


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_rollback_killed_at_each_step_leaves_one_valid_model(
    state: Path, test_bundles: BundleSet, images: Path, step: str
) -> None:
    good = sha256_file(test_bundles.good)
    v2 = store_install.install_model(test_bundles.good_v2, state, signal_agent=False).active.sha256
    store = Store(state, old=v2, new=good)

    proc = _stop_at("rollback", step, state)
    try:
        ROLLBACK_CHECKS[step](store, proc.pid)
    finally:
        _kill(proc)

    committed = ROLLBACK_STEPS.index(step) >= ROLLBACK_STEPS.index("swapped")
    _assert_one_valid_model(state, good if committed else v2, images)
    if not committed:
        # the rollback can simply be asked for again (mutation guarded: linking `previous`
        # first leaves both links on v2 and the rollback target unreachable)
        assert store_install.rollback(state, signal_agent=False).active.sha256 == good
    assert store_layout.store_status(state)["active"]["bundle_sha256"] == good
    _assert_next_install_succeeds(state, test_bundles.good_v2, {good, v2})


def test_unmodified_installer_killed_once_its_copy_appears(
    state: Path, test_bundles: BundleSet, images: Path
) -> None:
    """The shipped ``edge-agent install-model``, SIGKILLed as soon as tmp/ shows its incoming copy."""
    old, new = sha256_file(test_bundles.good), sha256_file(test_bundles.good_v2)
    proc = subprocess.Popen(_install_cmd(test_bundles.good_v2, state), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_until(lambda: bool(_incoming(state)), "its incoming copy in tmp/", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL  # killed there, not finished
    assert _incoming(state)  # the copy was still there: the kill landed inside the install
    _assert_one_valid_model(state, old, images)
    _assert_next_install_succeeds(state, test_bundles.good_v2, {old, new})
