"""Session fixtures: real models, trained on real data and converted by the real CLI.

Everything that needs TensorFlow (training, conversion) runs in a child process,
so the test process itself never imports TensorFlow. Each artefact is built at
most once per test run, lazily, under ``tmp_path_factory``: with ``pytest -n`` (xdist) the
workers share one copy (``built_once``), so a model is trained once, not once per worker.

Names other components rely on:

* ``digits_data`` -> ``(x_train, y_train, x_test, y_test)``: 32x32 uint8 digit images.
* ``digits_models`` -> dict with ``keras``/``savedmodel``/``h5`` paths, ``train``/``test``
  PNG class folders and the float ``accuracy``.
* ``digits_keras_file`` -> Path of ``digits.keras``.
* ``digits_bundle`` -> Path of the int8 bundle (task classify, labels "0".."9").
* ``digits_report`` -> the bundle's validation report (dict).
* ``digits_float_tflite`` -> Path of the float TFLite model (same weights).
* ``keyword_dataset_dir`` -> WAV class folders (all clips, incl. ``_background``).
* ``keyword_models`` -> dict with ``model``, ``train``, ``test``, ``labels``, ``accuracy``.
* ``keyword_bundle`` -> Path of the int8 audio bundle (task audio_classify,
  ``_background`` listed in ``output.background_labels``).
* ``signing_keys`` -> ``(private_key_path, public_key_path)`` (Ed25519 PEM).
* ``agent_models_dir`` -> folder of the hand-built agent models with their sidecars
  (``colours.tflite``, ``colours_int8.tflite``, ``squares.tflite`` + ``.toml``; see
  ``tests/integration/agent_models.py``).
* ``multilabel_audio`` -> dict with ``model`` (int8 ``.tflite``), ``sidecar`` (window audio
  events, sigmoid), ``scene`` (WAV), ``scene_truth`` (JSON labels per window), ``labels`` and
  ``info`` (held-out metrics; see ``tests/integration/multilabel_audio.py``).
* ``shapes_models`` -> dict with ``models`` (name -> ``{"model", "sidecar"}`` Paths plus the
  builder's own metrics) for the shapes detector in YOLOv8/YOLOv5/pixel-box/MediaPipe-SSD
  layouts, float and int8; ``test_images`` (folder of 160x120 PNGs), ``truth`` (file name ->
  ``[{label, box}]`` in source pixels), ``labels``, ``info``, ``dir``; see
  ``converter.shapes.py``.
* ``safeguard_model`` -> dict with ``keras`` (``dynamic.keras``: input ``(None, None, 1)``, its own
  ``Rescaling(1/255)``), ``savedmodel`` (the same, exported), ``train``/``test`` 32x32 PNG class
  folders, ``flat`` (unlabelled PNGs) and the float ``accuracy``; see
  ``tests/integration/safeguard_models.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def run_python(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in a child process with the project on the path."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=child_env(), cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`python {' '.join(args)}` failed with exit code {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
        )
    return proc


def run_convert(*args: str | Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``edge-convert`` command line (``python -m converter``)."""
    return run_python(["-m", "converter", *map(str, args)], timeout=timeout, check=check)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder filled by ``build(folder)`` once per test run, whatever the number of xdist workers.

    Without xdist it is a fresh ``tmp_path_factory`` folder. Under xdist the workers share
    ``<run's base temp>/shared/NAME``: the first to need it builds it under an exclusive lock
    while the others wait, and a build that failed half-way is wiped and tried again by the next.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from converter.examples import digits_split

    return digits_split()


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "digits", lambda out: run_python(
        ["-m", "converter.examples", "digits", "--out", str(out), "--formats", "keras,savedmodel,h5"]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    flat = {**{k: Path(v) for k, v in info["models"].items()},
            "train": Path(info["train"]), "test": Path(info["test"]),
            "accuracy": info["accuracy"], "dir": out}
    return flat


@pytest.fixture(scope="session")
def outlier_model(digits_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN with one Dense(64) unit scaled 300x (same float function; converter.examples.build_outlier)."""
    out = built_once(tmp_path_factory, "outlier", lambda out: run_python(
        ["-m", "converter.examples", "outlier", "--model", str(digits_models["keras"]),
         "--out", str(out / "digits_outlier.keras")]))
    return out / "digits_outlier.keras"


@pytest.fixture(scope="session")
def digits_keras_file(digits_models: dict[str, Any]) -> Path:
    path: Path = digits_models["keras"]
    return path


@pytest.fixture(scope="session")
def _digits_conversion(digits_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                       ) -> dict[str, Path]:
    def convert(out: Path) -> None:
        run_convert(digits_models["keras"], "--calibration", digits_models["train"],
                    "--validation", digits_models["test"], "--output", out / "digits.bundle",
                    "--report", out / "report.json", "--name", "digits", "--version", "1.0.0",
                    "--save-float", out / "digits_float.tflite")

    out = built_once(tmp_path_factory, "digits_bundle", convert)
    bundle, report, float_model = out / "digits.bundle", out / "report.json", out / "digits_float.tflite"
    return {"bundle": bundle, "report": report, "float": float_model}


@pytest.fixture(scope="session")
def digits_bundle(_digits_conversion: dict[str, Path]) -> Path:
    return _digits_conversion["bundle"]


@pytest.fixture(scope="session")
def digits_report(_digits_conversion: dict[str, Path]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_digits_conversion["report"].read_text())
    return data


@pytest.fixture(scope="session")
def digits_float_tflite(_digits_conversion: dict[str, Path]) -> Path:
    return _digits_conversion["float"]


@pytest.fixture(scope="session")
def keyword_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "keywords",
                     lambda out: run_python(["-m", "converter.examples", "keywords", "--out", str(out)]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    return {"model": Path(info["model"]), "train": Path(info["train"]), "test": Path(info["test"]),
            "all": Path(info["all"]), "labels": info["labels"], "accuracy": info["accuracy"], "dir": out}


@pytest.fixture(scope="session")
def keyword_dataset_dir(keyword_models: dict[str, Any]) -> Path:
    path: Path = keyword_models["all"]
    return path


@pytest.fixture(scope="session")
def _keyword_conversion(keyword_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                        ) -> dict[str, Path]:
    def convert(out: Path) -> None:
        run_convert(keyword_models["model"], "--calibration", keyword_models["train"],
                    "--validation", keyword_models["test"], "--output", out / "keywords.bundle",
                    "--report", out / "report.json", "--task", "audio_classify", "--name", "keywords",
                    "--version", "1.0.0",
                    # ~100 validation clips: one clip is ~1 pp, so allow a little noise here
                    "--max-accuracy-drop", "3")

    out = built_once(tmp_path_factory, "keyword_bundle", convert)
    bundle, report = out / "keywords.bundle", out / "report.json"
    return {"bundle": bundle, "report": report}


@pytest.fixture(scope="session")
def keyword_bundle(_keyword_conversion: dict[str, Path]) -> Path:
    return _keyword_conversion["bundle"]


@pytest.fixture(scope="session")
def keyword_report(_keyword_conversion: dict[str, Path]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_keyword_conversion["report"].read_text())
    return data


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_agent.model.keys import generate_keypair

    out = tmp_path_factory.mktemp("keys")
    private, public = out / "signing.pem", out / "signing.pub.pem"
    generate_keypair(private, public)
    return private, public


@pytest.fixture(scope="session")
def agent_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "agent_models",
                      lambda out: run_python(["-m", "tests.integration.agent_models", str(out)], timeout=300))


@pytest.fixture(scope="session")
def multilabel_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "multilabel_audio",
                     lambda out: run_python(["-m", "tests.integration.multilabel_audio", str(out)]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    return {"model": Path(info["model"]), "sidecar": Path(info["sidecar"]), "scene": Path(info["scene"]),
            "scene_truth": Path(info["scene_truth"]), "labels": info["labels"], "info": info, "dir": out}


@pytest.fixture(scope="session")
def shapes_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "shapes",
                     lambda out: run_python(["-m", "converter.shapes", str(out)]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    models = {name: {**entry, "model": Path(entry["model"]), "sidecar": Path(entry["sidecar"])}
              for name, entry in info["models"].items()}
    return {"models": models, "test_images": Path(info["test_images"]),
            "truth": json.loads(Path(info["truth"]).read_text()), "labels": info["labels"], "info": info,
            "dir": out}


@pytest.fixture(scope="session")
def safeguard_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "safeguards",
                     lambda out: run_python(["-m", "tests.integration.safeguard_models", str(out)]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    return {"keras": out / "dynamic.keras", "savedmodel": out / "dynamic_sm", "train": out / "train",
            "test": out / "test", "flat": out / "flat", "accuracy": info["accuracy"]}
