"""The agent runs a plain .tflite from its TFLite Model Metadata alone, and ``edge-agent inspect``
writes sidecars the agent accepts — with the real command line in a child process.

Models: the hand-built ones of tests/tflite_builders.py, and real TensorFlow conversions
(tests/integration/agent_models.py, built in a child process) with metadata added here.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import wave
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests import tflite_builders as tb
from tests.integration.agent_helpers import ROOT, agent_env, events, run_agent

pytestmark = pytest.mark.integration

COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
SEQUENCE = ["red", "green", "blue", "blue", "red"]


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """colours.tflite (float) and colours_int8.tflite converted by TensorFlow (sidecars removed)."""
    out = tmp_path_factory.mktemp("tf_models")
    env = agent_env()
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run([sys.executable, "-m", "tests.integration.agent_models", str(out)], check=True,
                   capture_output=True, env=env, cwd=str(ROOT), timeout=300)
    for sidecar in out.glob("*.toml"):
        sidecar.unlink()
    return out


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(SEQUENCE):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), COLOURS_BGR[name], np.uint8))
    return folder


def classify(model: Path, frames: Path, state: Path, *extra: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    code, messages, stderr = run_agent("--bundle", model, "--source", frames, "--events", "every",
                                       "--state-dir", state, *extra)
    assert code == 0, stderr
    return [p["classes"][0]["label"] for p in events(messages, "evt/classification")], messages


def with_metadata(model: bytes) -> bytes:
    meta = tb.model_metadata(
        [tb.Tensor("image", content=("image", tb.RGB, None), mean=[0.0], std=[255.0])],
        [tb.Tensor("probability", files=[tb.File("colours.txt")])],
        name="colours from metadata", version="7",
    )
    return tb.attach_metadata(model, meta, {"colours.txt": b"red\ngreen\nblue\n"})


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8"])
def test_agent_runs_a_metadata_only_model(dtype: str, colour_folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.image_classifier(dtype))
    labels, messages = classify(model, colour_folder, tmp_path / "state")
    assert labels == SEQUENCE
    assert messages[0]["payload"]["model"]["name"] == "Colour-classifier"


@pytest.mark.parametrize("name", ["colours.tflite", "colours_int8.tflite"])
def test_agent_runs_a_tensorflow_model_with_metadata(name: str, tf_models: Path, colour_folder: Path,
                                                     tmp_path: Path) -> None:
    model = tmp_path / name
    model.write_bytes(with_metadata((tf_models / name).read_bytes()))
    labels, messages = classify(model, colour_folder, tmp_path / "state")
    assert labels == SEQUENCE
    status = messages[0]["payload"]["model"]
    assert status["name"] == "colours-from-metadata" and status["version"] == "7"


def test_agent_runs_an_audio_model_from_metadata(tmp_path: Path) -> None:
    model = tmp_path / "updown.tflite"
    model.write_bytes(tb.audio_classifier(samples=1600, rate=16000))
    clip = tmp_path / "clip.wav"
    # 1 s up, 1 s down: longer than the keyword smoothing and refractory time
    samples = np.concatenate([np.full(16000, 8000), np.full(16000, -8000)]).astype("<i2")
    with wave.open(str(clip), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    code, messages, stderr = run_agent("--bundle", model, "--source", clip, "--events", "every",
                                       "--state-dir", tmp_path / "state")
    assert code == 0, stderr
    assert [p["label"] for p in events(messages, "evt/audio")] == ["up", "down"]


def test_without_sidecar_or_metadata_the_error_names_inspect(tf_models: Path, colour_folder: Path,
                                                            tmp_path: Path) -> None:
    code, _, stderr = run_agent("--bundle", tf_models / "colours.tflite", "--source", colour_folder,
                                "--state-dir", tmp_path / "state")
    assert code == 2
    assert "without TFLite metadata" in stderr and "edge-agent inspect" in stderr and "--write-sidecar" in stderr


def test_inspect_writes_a_sidecar_the_agent_runs(tf_models: Path, colour_folder: Path, tmp_path: Path) -> None:
    sidecar = tmp_path / "colours_int8.toml"
    code, _, stderr = run_agent(tf_models / "colours_int8.tflite", "--write-sidecar", sidecar, command="inspect")
    assert code == 0, stderr
    data = tomllib.loads(sidecar.read_text())
    # from shapes: the int8 input covers [0, 1], so pixels are divided by 255
    assert data["task"] == "classify" and data["preprocess"]["std"] == [255.0]
    labels, _ = classify(tf_models / "colours_int8.tflite", colour_folder, tmp_path / "state", "--sidecar", sidecar)
    assert labels == [str(["red", "green", "blue"].index(c)) for c in SEQUENCE]  # no labels: class numbers


def test_inspect_command_output(tf_models: Path, tmp_path: Path) -> None:
    model = tmp_path / "colours_int8.tflite"
    model.write_bytes(with_metadata((tf_models / "colours_int8.tflite").read_bytes()))
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "inspect", str(model)], capture_output=True,
                          text=True, env=agent_env(), cwd=str(ROOT), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "quantisation: integer" in out and "float ops remain" not in out
    assert "labels: 3 (red, green, blue)" in out
    assert "output format: classification (3 class scores, shape [1, 3])" in out
    assert "runs without a sidecar: yes" in out
    assert proc.stderr == ""


def test_wrap_takes_the_metadata_when_no_sidecar_is_given(colour_folder: Path, tmp_path: Path) -> None:
    """Third-party models with metadata get the flashing path with no hand-written sidecar."""
    from edge_agent.model.bundle import read_bundle
    from tests.fixtures_models import run_convert

    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.image_classifier("int8"))
    bundle = tmp_path / "colours.bundle"
    run_convert("wrap", model, "--output", bundle)
    verified = read_bundle(bundle)
    assert verified.labels == ["red", "green", "blue"]
    assert verified.report["sidecar"] == "TFLite metadata"
    labels, _ = classify(bundle, colour_folder, tmp_path / "state")
    assert labels == SEQUENCE
    # Without metadata and without a sidecar: one line naming what to do, nothing written.
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(tb.colours_model("int8"))
    proc = run_convert("wrap", bare, "--output", tmp_path / "bare.bundle", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "bare.bundle").exists()
