"""An install killed at each of its steps leaves exactly one valid model active."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import modelstore
from edge_agent.bundle import read_bundle, sha256_file
from tests.fixtures_ssh import BundleSet, DeployKeys

pytestmark = pytest.mark.integration


def _install_cmd(bundle: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "install-model", str(bundle), "--state-dir", str(state)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 20), 60 + i * 100, dtype=np.uint8))
    return folder


@pytest.mark.parametrize("step", modelstore.INSTALL_STEPS)
def test_kill_at_each_step_leaves_one_valid_model(
    tmp_path: Path, test_bundles: BundleSet, deploy_keys: DeployKeys, images: Path, step: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)
    modelstore.install_model(test_bundles.good, state)
    old, new = sha256_file(test_bundles.good), sha256_file(test_bundles.good_v2)

    env = {**os.environ, modelstore.CRASH_ENV: step}
    proc = subprocess.run(_install_cmd(test_bundles.good_v2, state), env=env, capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == 137, proc.stderr.decode()

    active = modelstore.active_model(state)
    assert active is not None
    # the swap of `current` is the commit point
    swapped = modelstore.INSTALL_STEPS.index(step) >= modelstore.INSTALL_STEPS.index("swapped")
    assert active.sha256 == (new if swapped else old)
    # the active model verifies with the pinned key, loads and passes its smoke test
    read_bundle(active.bundle_path, state / modelstore.TRUSTED_KEY)
    assert modelstore.run_smoke_child(active.bundle_path)["passed"]
    # and the agent starts on the store and infers
    agent = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--state-dir", str(state), "--source", str(images),
         "--events", "every", "--public-key", str(state / modelstore.TRUSTED_KEY)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert agent.returncode == 0, agent.stderr
    assert sum("/evt/" in line for line in agent.stdout.splitlines()) == 2

    # the next install cleans the leftovers and succeeds
    proc = subprocess.run(_install_cmd(test_bundles.good_v2, state), capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert modelstore.active_model(state).sha256 == new  # type: ignore[union-attr]
    assert not list((state / "tmp").iterdir())
    assert {p.name for p in (state / "models").iterdir()} <= {old, new, "current", "previous"}


def test_sigkill_at_random_points(tmp_path: Path, test_bundles: BundleSet, deploy_keys: DeployKeys) -> None:
    """Real SIGKILLs at spread-out times during installs and rollbacks: always one valid model."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)
    modelstore.install_model(test_bundles.good, state)
    valid = {sha256_file(test_bundles.good), sha256_file(test_bundles.good_v2)}
    delays = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8]
    for i, delay in enumerate(delays):
        bundle = test_bundles.good_v2 if i % 2 == 0 else test_bundles.good
        proc = subprocess.Popen(_install_cmd(bundle, state), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        active = modelstore.active_model(state)
        assert active is not None and active.sha256 in valid, delay
        read_bundle(active.bundle_path, state / modelstore.TRUSTED_KEY)
    final = subprocess.run(_install_cmd(test_bundles.good_v2, state), capture_output=True, timeout=120,
                           check=False)
    assert final.returncode == 0, final.stderr.decode()
    assert not list((state / "tmp").iterdir())
