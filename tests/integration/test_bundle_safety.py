"""What install-model, check and run do with hostile or broken-but-signed bundles, in real processes:
memory stays bounded (a child under RLIMIT_AS), refusals are one line with nothing installed, and
an installed model that cannot start falls back to ``previous`` instead of crash-looping."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.cli.main import main as agent_main
from edge_agent.model.bundle import LABELS, MANIFEST, MAX_TEXT_BYTES, REPORT
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.store import layout
from tests import bundle_bombs
from tests.integration.agent_helpers import ROOT, agent_env, events, run_agent
from tests.tiny_store import make_bundle

pytestmark = pytest.mark.integration

# An install (parent and smoke child) of the tiny model fits in ~600 MB of address space; the bombs
# below would need several GB held at once to be read the old way.
ADDRESS_SPACE = 1 << 30
BOMB_MIB = 600


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory / "k.pem", directory / "k.pub")
    return load_private_key(directory / "k.pem"), directory / "k.pub"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Ed25519PrivateKey, Path]) -> Path:
    return make_bundle(tmp_path_factory.mktemp("signed") / "colours.bundle", sign_key=keys[0])


@pytest.fixture(scope="module")
def labels_bomb(tmp_path_factory: pytest.TempPathFactory, signed: Path, keys: tuple[Ed25519PrivateKey, Path]
                ) -> Path:
    """Correctly signed, ~3 MB on disk, a labels.txt of 600 MiB."""
    return bundle_bombs.inflating(signed, tmp_path_factory.mktemp("bomb") / "bomb.bundle", LABELS, BOMB_MIB,
                                  keys[0])


def _bounded(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS`` in a child whose address space (and its smoke child's) is capped."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-m", "edge_agent", *map(str, args)], capture_output=True, text=True,
                          env=agent_env(), cwd=str(ROOT), preexec_fn=cap, timeout=300, check=False)


def _installed(state: Path) -> list[str]:
    models = state / layout.MODELS
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


def test_a_signed_labels_bomb_is_refused_in_bounded_memory(tmp_path: Path, labels_bomb: Path,
                                                           keys: tuple[Ed25519PrivateKey, Path]) -> None:
    assert labels_bomb.stat().st_size < 10 << 20
    state = tmp_path / "state"
    proc = _bounded("install-model", labels_bomb, "--state-dir", state, "--public-key", keys[1])
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [
        f"edge-agent: error: {labels_bomb}: {LABELS} is {BOMB_MIB << 20} bytes, more than the {MAX_TEXT_BYTES} "
        "bytes a device accepts; refusing the bundle"]
    assert _installed(state) == []
    proc = _bounded("check", "--bundle", labels_bomb, "--state-dir", state)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_zip_lying_about_a_members_size_is_refused_in_bounded_memory(tmp_path: Path, labels_bomb: Path,
                                                                       keys: tuple[Ed25519PrivateKey, Path]) -> None:
    lying = bundle_bombs.declaring(labels_bomb, tmp_path / "lying.bundle", LABELS, 1000)
    state = tmp_path / "state"
    proc = _bounded("install-model", lying, "--state-dir", state, "--public-key", keys[1])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edge-agent: error: {lying}: member {LABELS} is corrupt (Bad CRC-32 for file '{LABELS}')"]
    assert _installed(state) == []


@pytest.mark.parametrize(("files", "expected"), [
    ({"labels_txt": b"\xff\xfe red\n"}, f"{LABELS} is not UTF-8 text (byte 0); save it as UTF-8"),
    ({"report_json": b"{not json"}, f"{REPORT} is not valid JSON ("),
])
def test_a_signed_bundle_the_agent_could_not_load_is_not_installed(
        tmp_path: Path, signed: Path, keys: tuple[Ed25519PrivateKey, Path], files: dict[str, bytes],
        expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert agent_main(["install-model", str(signed), "--state-dir", str(state), "--public-key", str(keys[1])]) == 0
    before = _installed(state)
    broken = bundle_bombs.with_files(signed, tmp_path / "broken.bundle", keys[0], **files)
    capsys.readouterr()
    assert agent_main(["install-model", str(broken), "--state-dir", str(state), "--public-key", str(keys[1])]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"edge-agent: error: {broken}: {expected}"), err
    assert _installed(state) == before and list((state / layout.TMP).iterdir()) == []


def test_check_refuses_labels_that_do_not_fit_the_output(tmp_path: Path, signed: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    five = bundle_bombs.with_files(signed, tmp_path / "five.bundle", None,
                                   manifest=lambda m: m["output"].update(labels=list("abcde")))
    assert agent_main(["check", "--bundle", str(five), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"edge-agent: error: {five}: output 'scores' has shape [1, 3] (3 classes) but 5 labels are "
                   "given; fix the labels (one per class) or the model"]


# --------------------------------------------------------------------------- run: fall back to previous


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, bgr in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((16, 16, 3), bgr, np.uint8))
    return folder


def _store_with_two(tmp_path: Path) -> tuple[Path, Path]:
    """An unsigned store: v1 as ``previous``, v2 as ``current``; returns (state, current directory)."""
    state = tmp_path / "state"
    for version in ("1", "2"):
        bundle = make_bundle(tmp_path / f"v{version}.bundle", version=version, size=16)
        assert agent_main(["install-model", str(bundle), "--state-dir", str(state)]) == 0
    return state, (state / layout.MODELS / layout.CURRENT).resolve()


def _break_manifest(directory: Path) -> None:
    """The installed manifest edited after the install: a preprocessing that does not fit the model."""
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["preprocess"]["width"] = 8
    (directory / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["preprocess", "report"])
def test_run_falls_back_to_previous_when_the_active_model_cannot_start(tmp_path: Path, frames: Path,
                                                                        damage: str) -> None:
    state, current = _store_with_two(tmp_path)
    if damage == "preprocess":
        _break_manifest(current)
    else:
        (current / REPORT).write_bytes(b"{not json")
    code, messages, stderr = run_agent("--state-dir", state, "--source", frames, "--events", "every")
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "running the previous model" in warnings[0], stderr
    assert "Traceback" not in stderr
    status = events(messages, "status")[0]
    assert status["model"]["version"] == "1" and status["model_fallback"]
    assert events(messages, "health")[-1]["model_fallback"] == status["model_fallback"]
    assert len(events(messages, "evt/classification")) == 3
    # the links are left as they are: `models` and a later fixed `current` still see the store unchanged
    assert (state / layout.MODELS / layout.CURRENT).resolve() == current


def test_run_with_no_model_that_can_start_is_one_line(tmp_path: Path, frames: Path) -> None:
    state, current = _store_with_two(tmp_path)
    _break_manifest(current)
    _break_manifest((state / layout.MODELS / layout.PREVIOUS).resolve())
    code, messages, stderr = run_agent("--state-dir", state, "--source", frames)
    assert code == 2 and messages == []
    assert stderr.splitlines() == [
        f"edge-agent: error: {state / layout.MODELS / layout.CURRENT}: the preprocessing gives 16x8x3 values but "
        "the model input is [1, 16, 16, 3]; fix the preprocess section (size, channels, window) to match the model"]


def test_run_with_an_empty_store_is_one_line(tmp_path: Path, frames: Path) -> None:
    code, _, stderr = run_agent("--state-dir", tmp_path / "empty", "--source", frames)
    assert code == 2
    assert stderr.splitlines() == [f"edge-agent: error: model {tmp_path / 'empty' / 'models' / 'current'} not found "
                                   "(install one with `edge-agent install-model`)"]
    shutil.rmtree(tmp_path / "empty", ignore_errors=True)
