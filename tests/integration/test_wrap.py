"""``edge-convert wrap``: real third-party-style .tflite models + sidecars -> bundles the agent,
the model store and the smoke test accept exactly like converted ones."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.model.bundle import LABELS, MODEL, REPORT, read_bundle
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess
from edge_agent.preprocess import audio_features, fit_to_tensor, preprocess_image, quantize, read_wav, resample
from edge_agent.util.fs import sha256_file
from tests.fixtures_models import run_convert
from tests.integration.agent_helpers import ROOT, agent_env, events, run_agent

pytestmark = pytest.mark.integration

COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
SCENE_BOXES = [(80, 90, 160, 150), (200, 30, 280, 90), (0, 0, 80, 60), (120, 120, 200, 180)]


def agent(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m edge_agent ARGS`` (any command; stdout kept)."""
    return subprocess.run([sys.executable, "-m", "edge_agent", *map(str, args)], capture_output=True, text=True,
                          env=agent_env(), cwd=str(ROOT), timeout=timeout, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-convert: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def colour_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class subfolders of noisy solid-colour photos of several sizes."""
    folder = tmp_path_factory.mktemp("colour_classes")
    rng = np.random.default_rng(1)
    for name, bgr in COLOURS_BGR.items():
        (folder / name).mkdir()
        for i, (h, w) in enumerate([(48, 64), (30, 30), (120, 90)]):
            noise = rng.integers(-20, 21, (h, w, 3))
            image = np.clip(np.asarray(bgr, np.int64) + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f"{i}.png"), image)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320x240 scenes, each with one bright square on the squares model's 4-pixel grid."""
    folder = tmp_path_factory.mktemp("scenes")
    for i, (x0, y0, x1, y1) in enumerate(SCENE_BOXES):
        img = np.full((240, 320, 3), 10, np.uint8)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), thickness=-1)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i, name in enumerate(["red", "green", "green", "blue", "red"]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), COLOURS_BGR[name], np.uint8))
    return folder


def device_image_tensors(folder: Path, spec: ImagePreprocess, tensor: Any) -> set[bytes]:
    """The input tensors the device makes of every image under ``folder`` (the slow reference path)."""
    out = set()
    for file in sorted(folder.rglob("*.png")):
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        assert image is not None
        values, _ = preprocess_image(image, spec)
        out.add(quantize(fit_to_tensor(values, tensor.shape), tensor).tobytes())
    return out


# --------------------------------------------------------------------------- wrapped bundles


@pytest.fixture(scope="module")
def wrapped(agent_models_dir: Path, colour_classes: Path, scenes: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """colours (float, random golden inputs), colours_int8 (class folders), squares (2 outputs, scenes)."""
    out = tmp_path_factory.mktemp("wrapped")
    calibration = {"colours": None, "colours_int8": colour_classes, "squares": scenes}
    bundles = {}
    for name, data in calibration.items():
        bundle = out / name / f"{name}.bundle"
        bundle.parent.mkdir()
        args: list[str | Path] = ["wrap", agent_models_dir / f"{name}.tflite", "--sidecar",
                                  agent_models_dir / f"{name}.toml", "--output", bundle]
        if data is not None:
            args += ["--calibration", data]
        proc = run_convert(*args)
        assert f"wrote {bundle}" in proc.stdout and "smoke test PASS" in proc.stdout
        assert sorted(p.name for p in bundle.parent.iterdir()) == [bundle.name]  # no partial file left
        bundles[name] = bundle
    return bundles


@pytest.mark.parametrize("name", ["colours", "colours_int8", "squares"])
def test_wrapped_bundle_contents(wrapped: dict[str, Path], agent_models_dir: Path, name: str) -> None:
    model = agent_models_dir / f"{name}.tflite"
    bundle = read_bundle(wrapped[name])
    m = bundle.manifest
    assert bundle.model_bytes == model.read_bytes() and m.model.sha256 == sha256_file(model)
    assert m.inputs[0].layout == "NHWC" and m.created_utc
    assert len(m.golden) == 4
    assert len(m.outputs) == (2 if name == "squares" else 1)
    for vector in m.golden:
        assert len(vector.more_expected_b64) == len(m.outputs) - 1
        assert len(vector.tolerances) == len(m.outputs)
    labels = ["square"] if name == "squares" else ["red", "green", "blue"]
    assert m.output.labels == labels and bundle.files[LABELS].decode().splitlines() == labels
    report = json.loads(bundle.files[REPORT])
    assert report["wrapped"] is True and report["source_model_sha256"] == sha256_file(model)
    assert report["sidecar"] == str(agent_models_dir / f"{name}.toml")
    assert report["golden_vectors"] == 4 and report["versions"]["litert"].startswith("ai-edge-litert")
    latency = report["latency_ms"]["1"]
    assert latency > 0 and m.latency_budget_ms == round(20 * latency + 5, 2)
    assert m.validation["wrapped"] is True and m.converter["tool"] == "edge-convert wrap"
    # quantised output: three quantisation steps; float output: 1e-3 + 1 % of the largest value
    spec = m.outputs[0]
    if spec.scale > 0:
        assert m.golden[0].atol == pytest.approx(3 * spec.scale)
    else:
        assert 1e-3 < m.golden[0].atol <= 1e-3 + 0.01 * 1.0 + 1e-9

    proc = run_convert("inspect", wrapped[name])
    assert f"name        {m.name}  version {m.version}  task {m.task}" in proc.stdout
    assert "checksums   OK" in proc.stdout and "golden      4 vector(s)" in proc.stdout
    assert proc.stdout.count("\noutput      ") == len(m.outputs)


@pytest.mark.parametrize("name", ["colours", "colours_int8", "squares"])
def test_agent_check_passes(wrapped: dict[str, Path], name: str) -> None:
    proc = agent("check", "--bundle", wrapped[name], "--json", "--runs", "5")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["passed"] and result["vectors"] == 4, proc.stdout + proc.stderr
    assert result["max_abs_error"] == 0.0  # same interpreter, same machine: exact


@pytest.mark.parametrize("name", ["colours", "colours_int8"])
def test_run_matches_plain_tflite_classify(wrapped: dict[str, Path], agent_models_dir: Path, frames: Path,
                                           tmp_path: Path, name: str) -> None:
    results = []
    for model in (agent_models_dir / f"{name}.tflite", wrapped[name]):
        code, messages, stderr = run_agent("--bundle", model, "--source", frames, "--events", "every",
                                           "--state-dir", tmp_path / "s")
        assert code == 0, stderr
        results.append([(e["frame"], e["classes"], e["model_sha256"]) for e in events(messages, "evt/classification")])
    assert results[0] == results[1]
    assert [r[1][0]["label"] for r in results[1]] == ["red", "green", "green", "blue", "red"]


def test_run_matches_plain_tflite_detect(wrapped: dict[str, Path], agent_models_dir: Path, scenes: Path,
                                         tmp_path: Path) -> None:
    results = []
    for model in (agent_models_dir / "squares.tflite", wrapped["squares"]):
        code, messages, stderr = run_agent("--bundle", model, "--source", scenes, "--events", "every",
                                           "--state-dir", tmp_path / "s")
        assert code == 0, stderr
        results.append([(e["frame"], e["detections"]) for e in events(messages, "evt/detection")])
    assert results[0] == results[1]
    for (_, detections), expected in zip(results[1], SCENE_BOXES, strict=True):
        assert len(detections) == 1 and detections[0]["label"] == "square"
        assert detections[0]["box"] == pytest.approx(list(expected), abs=3.0)


def test_golden_inputs_are_the_devices_tensors_of_calibration_images(wrapped: dict[str, Path],
                                                                    colour_classes: Path, scenes: Path) -> None:
    for name, folder in (("colours_int8", colour_classes), ("squares", scenes)):
        m = read_bundle(wrapped[name]).manifest
        assert isinstance(m.preprocess, ImagePreprocess)
        allowed = device_image_tensors(folder, m.preprocess, m.inputs[0])
        inputs = [v.input_array(m.inputs[0]).tobytes() for v in m.golden]
        assert set(inputs) <= allowed and len(set(inputs)) == len(inputs)
    # single-output classifier: clear top-1 margins, spread over the classes
    golden = read_bundle(wrapped["colours_int8"]).manifest.golden
    assert {v.expected_top1 for v in golden} == {0, 1, 2}


def test_random_golden_inputs_are_seeded(agent_models_dir: Path, tmp_path: Path) -> None:
    def golden(seed: str, out: str) -> list[str]:
        bundle = tmp_path / out
        run_convert("wrap", agent_models_dir / "squares.tflite", "--sidecar", agent_models_dir / "squares.toml",
                    "-o", bundle, "--seed", seed, "--golden", "2", "--name", "sq", "--version", "7.1",
                    "--latency-budget-ms", "250")
        m = read_bundle(bundle).manifest
        assert (m.name, m.version, m.latency_budget_ms, len(m.golden)) == ("sq", "7.1", 250.0, 2)
        return [v.input_b64 for v in m.golden]

    first = golden("3", "a.bundle")
    assert golden("3", "b.bundle") == first
    assert golden("4", "c.bundle") != first


def test_signed_wrap_verifies_and_installs(agent_models_dir: Path, colour_classes: Path,
                                           signing_keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = signing_keys
    bundle = tmp_path / "signed.bundle"
    run_convert("wrap", agent_models_dir / "colours_int8.tflite", "--sidecar", agent_models_dir / "colours_int8.toml",
                "--calibration", colour_classes, "--sign-key", private, "-o", bundle, "--version", "2.0.0")
    assert read_bundle(bundle, public).signature_verified
    proc = run_convert("inspect", bundle, "--public-key", public, "--require-signature")
    assert "signature   valid" in proc.stdout

    state = tmp_path / "state"
    proc = agent("install-model", bundle, "--state-dir", state, "--public-key", public, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["active"]["bundle_sha256"] == sha256_file(bundle)
    proc = agent("check", "--bundle", state / "models" / "current", "--public-key", public, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["signature_verified"], proc.stdout + proc.stderr

    # the same bundle with one byte of the model changed: refused by check and by install-model
    altered = tmp_path / "altered.bundle"
    buffer = io.BytesIO()
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == MODEL:
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info.filename, data)
    altered.write_bytes(buffer.getvalue())
    proc = agent("check", "--bundle", altered)
    assert proc.returncode != 0 and "does not match the manifest sha256" in proc.stderr
    proc = agent("install-model", altered, "--state-dir", state, "--public-key", public, "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 2 and not result["ok"] and result["step"] == "verify"
    assert result["active"]["bundle_sha256"] == sha256_file(bundle)  # the wrapped model stays active


def test_wrap_never_imports_tensorflow(agent_models_dir: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from converter.cli import main\n"
        f"code = main(['wrap', {str(agent_models_dir / 'squares.tflite')!r}, '--sidecar', "
        f"{str(agent_models_dir / 'squares.toml')!r}, '-o', {str(tmp_path / 'x.bundle')!r}, "
        "'--latency-budget-ms', '1000'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
        "sys.exit(code or (1 if bad else 0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=agent_env(),
                          cwd=str(ROOT), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stderr and (tmp_path / "x.bundle").is_file()


@pytest.mark.parametrize("problem", ["missing_sidecar", "sidecar_size_mismatch", "empty_calibration",
                                     "not_a_tflite", "wav_for_image_model", "unreadable_image",
                                     "detect_sidecar_for_classifier"])
def test_errors_exit_2_with_one_line_and_no_output(agent_models_dir: Path, tmp_path: Path, problem: str) -> None:
    model, sidecar = agent_models_dir / "colours.tflite", agent_models_dir / "colours.toml"
    extra: list[str | Path] = []
    if problem == "missing_sidecar":
        sidecar, expected = tmp_path / "nope.toml", "sidecar"
    elif problem == "sidecar_size_mismatch":
        sidecar = tmp_path / "wrong.toml"
        sidecar.write_text((agent_models_dir / "colours.toml").read_text().replace("width = 16", "width = 20"))
        expected = "does not fit"
    elif problem == "empty_calibration":
        (tmp_path / "empty").mkdir()
        extra, expected = ["--calibration", tmp_path / "empty"], "is empty"
    elif problem == "not_a_tflite":
        model, expected = agent_models_dir / "colours.toml", "not a TFLite model"
    elif problem == "wav_for_image_model":
        (tmp_path / "sounds").mkdir()
        with wave.open(str(tmp_path / "sounds" / "a.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            handle.writeframes(bytes(3200))
        extra, expected = ["--calibration", tmp_path / "sounds"], "takes image input"
    elif problem == "unreadable_image":
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
        extra, expected = ["--calibration", tmp_path / "imgs"], "cannot read image"
    else:
        sidecar = tmp_path / "detect.toml"
        sidecar.write_text((agent_models_dir / "squares.toml").read_text()
                           .replace("width = 64", "width = 16").replace("height = 64", "height = 16")
                           .replace("channels = 1", "channels = 3").replace('color = "gray"', 'color = "rgb"'))
        expected = "output"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_convert("wrap", model, "--sidecar", sidecar, "-o", out_dir / "x.bundle", *extra, check=False)
    assert proc.returncode == 2
    assert expected in one_error_line(proc)
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def keyword_plain(keyword_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The converted keyword model as a third party would ship it: .tflite + JSON sidecar."""
    out = tmp_path_factory.mktemp("keyword_plain")
    bundle = read_bundle(keyword_bundle)
    m = bundle.manifest
    (out / "keywords.tflite").write_bytes(bundle.model_bytes)
    output = m.output.model_dump(mode="json", exclude_none=True)
    output.pop("labels")
    sidecar = {"name": "keywords-wrapped", "version": "3", "task": m.task, "labels": bundle.labels,
               "preprocess": m.preprocess.model_dump(mode="json"), "output": output}
    (out / "keywords.json").write_text(json.dumps(sidecar))
    return out / "keywords.tflite", out / "keywords.json"


def test_wrap_audio_model_from_wav_folder(keyword_plain: tuple[Path, Path], keyword_bundle: Path,
                                          keyword_models: dict[str, Any], tmp_path: Path) -> None:
    model, sidecar = keyword_plain
    bundle = tmp_path / "kw.bundle"
    proc = run_convert("wrap", model, "--sidecar", sidecar, "--calibration", keyword_models["test"], "-o", bundle)
    assert "smoke test PASS" in proc.stdout
    m = read_bundle(bundle).manifest
    assert m.task == "audio_classify" and m.inputs[0].layout == "NTF" and m.name == "keywords-wrapped"
    assert len({v.expected_top1 for v in m.golden}) == 4  # clear margins, spread over the classes
    spec = m.preprocess
    assert isinstance(spec, AudioPreprocess)
    allowed = set()
    for file in sorted(Path(keyword_models["test"]).rglob("*.wav")):
        samples, rate = read_wav(file)
        features = audio_features(resample(samples, rate, spec.sample_rate), spec)
        allowed.add(quantize(fit_to_tensor(features, m.inputs[0].shape), m.inputs[0]).tobytes())
    assert {v.input_array(m.inputs[0]).tobytes() for v in m.golden} <= allowed
    proc = agent("check", "--bundle", bundle, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["vectors"] == 4

    # One WAV of several test clips: the wrapped bundle reports what the converted one does.
    clips = [read_wav(f) for f in sorted(Path(keyword_models["test"]).rglob("*.wav"))[::20]]
    signal = np.concatenate([resample(s, r, spec.sample_rate) for s, r in clips])
    wav = tmp_path / "clips.wav"
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(spec.sample_rate)
        handle.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    found = []
    for target in (keyword_bundle, bundle):
        code, messages, stderr = run_agent("--bundle", target, "--source", wav, "--state-dir", tmp_path / "s")
        assert code == 0, stderr
        found.append([(e["label"], e["t_start_s"], e["classes"]) for e in events(messages, "evt/audio")])
    assert found[0] == found[1] and found[0]

