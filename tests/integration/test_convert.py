"""End-to-end conversions with the real CLI, real data and real TFLite models.

Each model format is converted once per session; error cases that fail before
TensorFlow starts are cheap, the others pay one child process each.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.cli import main as cli_main
from converter.ops import int8_coverage, list_ops
from edge_agent.model.bundle import MANIFEST, MODEL, read_bundle
from edge_agent.model.keys import generate_keypair
from edge_agent.model.smoke import run_smoke_test
from edge_agent.preprocess import dequantize, preprocess_image, quantize
from edge_agent.runtimes.litert import LiteRTRuntime
from tests.fixtures_models import run_convert, run_python

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]


def _figures_ok(report: dict[str, Any]) -> None:
    """The issue's required figures for the digits classifier."""
    assert report["size_float_bytes"] >= 500_000
    assert report["size_ratio"] <= 0.30
    assert report["top1_agreement"] >= 0.98
    assert report["accuracy_float"] - report["accuracy_int8"] <= 0.01
    assert report["accuracy_int8"] >= 0.95
    assert report["int8_op_coverage"] == 1.0
    assert report["float_ops"] == []
    assert report["io"]["input"]["dtype"] == "int8" and report["io"]["output"]["dtype"] == "int8"
    assert report["io"]["input"]["scale"] > 0
    for key in ("output_cosine", "calibration_samples", "versions", "ops", "latency_ms"):
        assert key in report
    assert report["output_cosine"] > 0.99
    assert set(report["latency_ms"]) == {"float", "int8"}
    assert set(report["latency_ms"]["int8"]) == {"1", "2"}
    assert report["versions"]["tensorflow"] == "2.21.0"


@pytest.fixture(scope="module")
def special_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("special")
    run_python(["-m", "tests.integration.model_builders", str(out)])
    return out


@pytest.fixture(scope="module")
def savedmodel_signed(digits_models: dict[str, Any], signing_keys: tuple[Path, Path],
                      tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sm")
    bundle = out / "digits_sm.bundle"
    proc = run_convert(digits_models["savedmodel"], "--calibration", digits_models["train"],
                       "--validation", digits_models["test"], "--output", bundle,
                       "--sign-key", signing_keys[0], "--labels", _labels_file(out))
    assert "size ratio" in proc.stdout  # the table is printed
    return bundle, read_bundle(bundle).report


def _labels_file(folder: Path) -> Path:
    path = folder / "labels.txt"
    path.write_text("\n".join(str(i) for i in range(10)) + "\n")
    return path


# --------------------------------------------------------------------------- the three formats


def test_keras_file_bundle(digits_bundle: Path, digits_report: dict[str, Any], digits_models: dict[str, Any],
                           digits_float_tflite: Path) -> None:
    _figures_ok(digits_report)
    bundle = read_bundle(digits_bundle)
    m = bundle.manifest
    assert (m.name, m.version, m.task) == ("digits", "1.0.0", "classify")
    assert bundle.labels == [str(i) for i in range(10)]
    assert m.preprocess.kind == "image" and (m.preprocess.width, m.preprocess.height) == (32, 32)
    assert m.preprocess.color == "gray" and m.preprocess.mean == [0.0] and m.preprocess.std == [1.0]
    assert m.output.activation == "none"  # the model ends in a softmax
    assert 3 <= len(m.golden) <= 5 and m.latency_budget_ms > 0
    assert bundle.report == digits_report
    assert m.validation["top1_agreement"] == digits_report["top1_agreement"]
    assert set(m.converter) >= {"tensorflow", "litert", "edge_infer"}
    runtime = LiteRTRuntime(bundle.model_bytes)
    assert [s.model_dump() for s in runtime.inputs] == [
        s.model_copy(update={"layout": ""}).model_dump() for s in m.inputs]
    assert run_smoke_test(m, runtime).passed
    assert digits_float_tflite.stat().st_size == digits_report["size_float_bytes"]


def test_bundle_reproduces_accuracy_with_agent_code(digits_bundle: Path, digits_data: tuple[np.ndarray, ...],
                                                    digits_report: dict[str, Any]) -> None:
    """Independent check: the agent's own preprocessing + runtime reach the reported accuracy."""
    _, _, x_test, y_test = digits_data
    bundle = read_bundle(digits_bundle)
    runtime = LiteRTRuntime(bundle.model_bytes)
    spec_in, spec_out = runtime.inputs[0], runtime.outputs[0]
    correct = 0
    for image, label in zip(x_test, y_test, strict=True):
        features, _ = preprocess_image(image, bundle.manifest.preprocess)  # type: ignore[arg-type]
        out = runtime.infer(quantize(features[None], spec_in))[0]
        correct += int(np.argmax(dequantize(out, spec_out)) == label)
    assert correct / len(y_test) == pytest.approx(digits_report["accuracy_int8"], abs=0.01)


def test_savedmodel_bundle_signed(savedmodel_signed: tuple[Path, dict[str, Any]],
                                  signing_keys: tuple[Path, Path]) -> None:
    bundle_path, report = savedmodel_signed
    _figures_ok(report)
    assert report["model_format"] == "savedmodel"
    bundle = read_bundle(bundle_path, signing_keys[1])
    assert bundle.signature_verified


def test_h5_bundle(digits_models: dict[str, Any], tmp_path: Path) -> None:
    bundle = tmp_path / "digits_h5.bundle"
    run_convert(digits_models["h5"], "--calibration", digits_models["train"],
                "--validation", digits_models["test"], "--output", bundle, "--calibration-samples", "300")
    report = read_bundle(bundle).report
    _figures_ok(report)
    assert report["model_format"] == "h5" and report["calibration_samples"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_h5.bundle"]  # nothing partial left


def test_ops_listing_sees_float_model(digits_float_tflite: Path, digits_bundle: Path) -> None:
    float_ops = list_ops(digits_float_tflite.read_bytes())
    assert int8_coverage(float_ops) < 0.5
    int8_ops = list_ops(read_bundle(digits_bundle).model_bytes)
    assert int8_coverage(int8_ops) == 1.0
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= {op.op for op in int8_ops}


# --------------------------------------------------------------------------- audio


def test_keyword_bundle(keyword_bundle: Path, keyword_report: dict[str, Any],
                        keyword_models: dict[str, Any]) -> None:
    bundle = read_bundle(keyword_bundle)
    m = bundle.manifest
    assert m.task == "audio_classify" and m.preprocess.kind == "audio"
    assert m.preprocess.feature == "logmel" and m.inputs[0].shape == [1, 49, 40]
    assert m.inputs[0].layout == "NTF"
    assert bundle.labels == keyword_models["labels"]
    assert m.output.background_labels == ["_background"]
    assert keyword_models["accuracy"] >= 0.90
    assert keyword_report["int8_op_coverage"] == 1.0
    assert keyword_report["top1_agreement"] >= 0.95
    assert keyword_report["accuracy_int8"] >= 0.88
    assert keyword_report["accuracy_float"] - keyword_report["accuracy_int8"] <= 0.03  # ~100 clips
    assert run_smoke_test(m, LiteRTRuntime(bundle.model_bytes)).passed


# --------------------------------------------------------------------------- inspect


def test_inspect_prints_summary(digits_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", str(digits_bundle)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "checksums   OK" in out and "unsigned" in out
    assert "int8[1, 32, 32, 1]" in out and "0, 1, 2" in out and "top1_agreement" in out


def _rewrite(src: Path, dst: Path, change: str) -> None:
    with zipfile.ZipFile(src) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    if change == "model":
        data = bytearray(members[MODEL])
        data[len(data) // 2] ^= 0xFF
        members[MODEL] = bytes(data)
    else:
        manifest = json.loads(members[MANIFEST])
        manifest["output"]["labels"] = list(reversed(manifest["output"]["labels"]))
        members[MANIFEST] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data_bytes in members.items():
            archive.writestr(name, data_bytes)
    dst.write_bytes(buffer.getvalue())


def test_inspect_refuses_altered_model(digits_bundle: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    altered = tmp_path / "altered.bundle"
    _rewrite(digits_bundle, altered, "model")
    assert cli_main(["inspect", str(altered)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-convert: error:") and "model.tflite does not match" in err
    assert len(err.splitlines()) == 1


def test_inspect_says_an_unsigned_manifest_is_not_verified(digits_bundle: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Editing an unsigned bundle's manifest leaves every checksum consistent: only a
    signature can tell, so inspect must say the manifest itself is unverified."""
    altered = tmp_path / "relabelled.bundle"
    _rewrite(digits_bundle, altered, "manifest")
    assert cli_main(["inspect", str(altered)]) == 0  # informational by default
    out = capsys.readouterr().out
    assert "checksums   OK" in out
    assert ("integrity   manifest integrity NOT verified: bundle is unsigned "
            "(sign with edge-deploy sign / --sign-key)") in out.splitlines()
    assert cli_main(["inspect", str(altered), "--require-signature"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-convert: error:") and "NOT verified" in err[0]


def test_inspect_refuses_altered_manifest_of_signed_bundle(
        savedmodel_signed: tuple[Path, dict[str, Any]], signing_keys: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    altered = tmp_path / "altered.bundle"
    _rewrite(savedmodel_signed[0], altered, "manifest")
    assert cli_main(["inspect", str(altered), "--public-key", str(signing_keys[1])]) == 2
    assert "signature does not verify" in capsys.readouterr().err


def test_inspect_signature_right_and_wrong_key(savedmodel_signed: tuple[Path, dict[str, Any]],
                                               signing_keys: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bundle = savedmodel_signed[0]
    assert cli_main(["inspect", str(bundle), "--public-key", str(signing_keys[1])]) == 0
    assert "valid (verified" in capsys.readouterr().out
    assert cli_main(["inspect", str(bundle)]) == 0
    assert "signature present, NOT verified (pass --public-key)" in capsys.readouterr().out
    assert cli_main(["inspect", str(bundle), "--require-signature"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"edge-convert: error: {bundle}: signature present, NOT verified (pass --public-key)"]
    assert cli_main(["inspect", str(bundle), "--public-key", str(signing_keys[1]), "--require-signature"]) == 0
    assert "manifest integrity verified" in capsys.readouterr().out
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    assert cli_main(["inspect", str(bundle), "--public-key", str(tmp_path / "other.pub")]) == 2
    assert "does not verify" in capsys.readouterr().err


def test_inspect_unsigned_with_key_refused(digits_bundle: Path, signing_keys: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", str(digits_bundle), "--public-key", str(signing_keys[1])]) == 2
    assert "not signed" in capsys.readouterr().err


# --------------------------------------------------------------------------- error cases


def _error_line(proc: Any) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return str(lines[0])


def _assert_nothing_written(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if "bundle" in p.name]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("model_name, expected", [
    ("missing.keras", "not found"),
    ("model.onnx", "unknown model format '.onnx'"),
    ("not_saved_model", "not a SavedModel"),
])
def test_bad_model_path(tmp_path: Path, digits_models: dict[str, Any], model_name: str, expected: str) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "not_saved_model").mkdir()
    proc = run_convert(tmp_path / model_name, "--calibration", digits_models["train"],
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    assert expected in _error_line(proc)
    _assert_nothing_written(tmp_path)


def test_corrupt_keras_file(tmp_path: Path, digits_models: dict[str, Any]) -> None:
    (tmp_path / "broken.keras").write_bytes(b"not a zip at all")
    proc = run_convert(tmp_path / "broken.keras", "--calibration", digits_models["train"],
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    assert "cannot load" in _error_line(proc)
    _assert_nothing_written(tmp_path)


def test_empty_data_folder(tmp_path: Path, digits_keras_file: Path) -> None:
    (tmp_path / "calib" / "0").mkdir(parents=True)
    proc = run_convert(digits_keras_file, "--calibration", tmp_path / "calib",
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    assert "is empty" in _error_line(proc)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("target", ["dir", "file_parent"])
def test_output_not_writable(tmp_path: Path, digits_models: dict[str, Any], target: str) -> None:
    (tmp_path / "afile").write_text("x")
    output = tmp_path if target == "dir" else tmp_path / "afile" / "out.bundle"
    proc = run_convert(digits_models["keras"], "--calibration", digits_models["train"],
                       "--output", output, check=False)
    assert proc.returncode == 2
    assert "cannot write bundle" in _error_line(proc) or "is a directory" in _error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bad_option_values(tmp_path: Path, digits_models: dict[str, Any]) -> None:
    proc = run_convert(digits_models["keras"], "--calibration", digits_models["train"],
                       "--output", tmp_path / "o.bundle", "--io", "int4", check=False)
    assert proc.returncode == 2 and "--io" in _error_line(proc)
    proc = run_convert(digits_models["keras"], "--calibration", digits_models["train"],
                       "--output", tmp_path / "o.bundle", "--sign-key", tmp_path / "nokey.pem", check=False)
    assert proc.returncode == 2 and "not found" in _error_line(proc)


def test_shape_mismatch(tmp_path: Path, digits_keras_file: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.random.default_rng(0).normal(size=(150, 28, 28)).astype(np.float32))
    proc = run_convert(digits_keras_file, "--calibration", tmp_path / "wrong.npy",
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "(28, 28)" in line and "(32, 32, 1)" in line
    _assert_nothing_written(tmp_path)


def test_nan_calibration_data(tmp_path: Path, digits_keras_file: Path) -> None:
    x = np.random.default_rng(0).uniform(0, 255, size=(150, 32, 32, 1)).astype(np.float32)
    x[7, 3, 3, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    proc = run_convert(digits_keras_file, "--calibration", tmp_path / "nan.npy",
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    assert "NaN" in _error_line(proc)
    _assert_nothing_written(tmp_path)


def test_constant_calibration_data(tmp_path: Path, digits_keras_file: Path) -> None:
    np.savez(tmp_path / "const.npz", x=np.zeros((150, 32, 32), np.uint8))
    proc = run_convert(digits_keras_file, "--calibration", tmp_path / "const.npz",
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2
    assert "constant" in _error_line(proc)
    _assert_nothing_written(tmp_path)


@pytest.fixture(scope="module")
def dim_calibration(digits_models: dict[str, Any], digits_data: tuple[np.ndarray, ...],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """Calibration images 16x darker than real ones: the classic preprocessing mismatch."""
    out = tmp_path_factory.mktemp("dim")
    x_train, y_train, _, _ = digits_data
    np.savez(out / "dim.npz", x=(x_train[:60] // 16).astype(np.uint8), y=y_train[:60])
    proc = run_convert(digits_models["keras"], "--calibration", out / "dim.npz", "--no-ladder",
                       "--validation", digits_models["test"], "--output", out / "dim.bundle",
                       "--report", out / "report.json", check=False)
    return proc, out


def test_few_samples_warn(dim_calibration: tuple[Any, Path]) -> None:
    proc, _ = dim_calibration
    assert "edge-convert: warning: only 60 calibration samples" in proc.stderr


def test_accuracy_drop_fails_with_report(dim_calibration: tuple[Any, Path]) -> None:
    proc, out = dim_calibration
    assert proc.returncode == 3
    assert "--max-accuracy-drop" in _error_line(proc)
    assert "accuracy drop" in proc.stdout  # the report table is printed
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_drop_pp"] > 1.0
    assert not (out / "dim.bundle").exists()
    assert [p.name for p in out.iterdir() if "bundle" in p.name] == []


def test_strict_refuses_float_fallback(special_models: Path, tmp_path: Path) -> None:
    proc = run_convert(special_models / "sin", "--calibration", special_models / "data.npz",
                       "--output", tmp_path / "sin.bundle", "--strict", check=False)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "SIN" in line and "without --strict" in line
    _assert_nothing_written(tmp_path)


def test_float_fallback_reported_without_strict(special_models: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "sin.bundle"
    run_convert(special_models / "sin", "--calibration", special_models / "data.npz",
                "--output", bundle, "--max-accuracy-drop", "100",
                "--allow-low-accuracy")  # untrained weights: chance accuracy is expected here
    report = read_bundle(bundle).report
    assert report["int8_op_coverage"] < 1.0
    assert "SIN" in report["float_ops"]


def test_op_without_tflite_kernel(special_models: Path, tmp_path: Path) -> None:
    proc = run_convert(special_models / "erf", "--calibration", special_models / "data.npz",
                       "--output", tmp_path / "erf.bundle", check=False)
    assert proc.returncode == 2
    assert "Erf" in _error_line(proc)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("io_type", ["uint8", "float32"])
def test_io_types_stay_fully_integer(digits_models: dict[str, Any], tmp_path: Path, io_type: str) -> None:
    bundle = tmp_path / f"digits_{io_type}.bundle"
    run_convert(digits_models["keras"], "--calibration", digits_models["train"],
                "--validation", digits_models["test"], "--output", bundle, "--io", io_type, "--strict",
                "--calibration-samples", "200")
    loaded = read_bundle(bundle)
    report = loaded.report
    assert report["int8_op_coverage"] == 1.0  # float32 I/O: QUANTIZE/DEQUANTIZE only at the boundary
    assert loaded.manifest.inputs[0].dtype == io_type and loaded.manifest.outputs[0].dtype == io_type
    assert report["top1_agreement"] >= 0.98
    assert run_smoke_test(loaded.manifest, LiteRTRuntime(loaded.model_bytes)).passed
