"""Converter input checks that need no TensorFlow: data loading, model paths, output paths."""

from __future__ import annotations

import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter.convert import (
    ConvertOptions,
    build_preprocess,
    detect_model_format,
    read_labels_file,
)
from converter.data import MIN_SAMPLES, data_kind, load_dataset
from converter.errors import ConvertError, DataError, ModelLoadError
from converter.ops import OpInfo, float_compute_ops, float_ops, int8_coverage
from converter.output import check_output_writable
from converter.report import format_report
from converter.validate import mean_cosine, outputs_are_probabilities, top1_agreement
from converter.worker import failed_ops
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess
from edge_agent.preprocess import audio_features, preprocess_image

GRAY8 = ImagePreprocess(width=8, height=8, channels=1, color="gray")
SHAPE8 = [1, 8, 8, 1]


def _images(folder: Path, per_class: int, classes: tuple[str, ...] = ("a", "b"), size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / name / f"{i}.png"), rng.integers(0, 256, (size, size), np.uint8))


def _wav(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


# --------------------------------------------------------------------------- data


def test_image_folder_uses_agent_preprocessing(tmp_path: Path) -> None:
    _images(tmp_path, 3)
    data = load_dataset(tmp_path, GRAY8, SHAPE8)
    assert data.x.shape == (6, 8, 8, 1) and data.x.dtype == np.float32
    assert data.class_names == ["a", "b"] and data.y is not None and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    direct, _ = preprocess_image(cv2.imread(str(tmp_path / "b" / "2.png"), cv2.IMREAD_UNCHANGED), GRAY8)
    np.testing.assert_array_equal(data.x[5], direct)


def test_labels_file_order_is_respected(tmp_path: Path) -> None:
    _images(tmp_path, 1)
    data = load_dataset(tmp_path, GRAY8, SHAPE8, label_names=["z", "b", "a"])
    assert data.y is not None and data.y.tolist() == [2, 1]
    with pytest.raises(DataError, match="not in the labels"):
        load_dataset(tmp_path, GRAY8, SHAPE8, label_names=["a"])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path, GRAY8, SHAPE8)
    with pytest.raises(DataError, match="does not exist"):
        data_kind(tmp_path / "nope")


def test_loose_files_next_to_class_folders(tmp_path: Path) -> None:
    _images(tmp_path, 1)
    cv2.imwrite(str(tmp_path / "loose.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="loose"):
        load_dataset(tmp_path, GRAY8, SHAPE8)


def test_mixed_images_and_wav(tmp_path: Path) -> None:
    _images(tmp_path, 1)
    _wav(tmp_path / "a" / "x.wav", np.zeros(100), 16000)
    with pytest.raises(DataError, match="mixes"):
        data_kind(tmp_path)


def test_audio_data_for_image_model(tmp_path: Path) -> None:
    _wav(tmp_path / "yes" / "1.wav", np.zeros(100), 16000)
    with pytest.raises(DataError, match="image input"):
        load_dataset(tmp_path, GRAY8, SHAPE8)


def test_npz_raw_images_are_preprocessed(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 16, 16), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    data = load_dataset(tmp_path / "d.npz", GRAY8, SHAPE8)
    np.testing.assert_array_equal(data.x[3], preprocess_image(x[3], GRAY8)[0])
    assert data.y is not None and data.y.tolist() == [0, 1, 2, 3, 4]


def test_npy_preprocessed_floats_used_as_is(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    data = load_dataset(tmp_path / "d.npy", GRAY8, SHAPE8)
    np.testing.assert_array_equal(data.x.reshape(4, 64), x)
    assert data.y is None


def test_shape_mismatch_names_expected_and_got(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((4, 10, 10), np.float32) * np.arange(10))
    with pytest.raises(DataError, match=r"\(10, 10\).*expects \(8, 8, 1\)"):
        load_dataset(tmp_path / "d.npy", GRAY8, SHAPE8)


def test_nan_and_inf_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
    x[2, 1, 1, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="NaN or infinite values in 1 sample"):
        load_dataset(tmp_path / "nan.npy", GRAY8, SHAPE8)
    x[2, 1, 1, 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset(tmp_path / "inf.npy", GRAY8, SHAPE8)


def test_constant_data_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.full((20, 8, 8), 7, np.uint8))
    with pytest.raises(DataError, match="constant"):
        load_dataset(tmp_path / "c.npz", GRAY8, SHAPE8)


def test_few_samples_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _images(tmp_path, 5)
    load_dataset(tmp_path, GRAY8, SHAPE8)
    assert "only 10 calibration samples" in capsys.readouterr().err
    _images(tmp_path, MIN_SAMPLES // 2)
    load_dataset(tmp_path, GRAY8, SHAPE8)
    assert "warning" not in capsys.readouterr().err


def test_wav_folder_resampled_through_audio_front_end(tmp_path: Path) -> None:
    spec = AudioPreprocess()
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.normal(size=8000)).astype(np.float32)
    _wav(tmp_path / "yes" / "1.wav", clip, 8000)
    _wav(tmp_path / "_background" / "1.wav", clip[::-1].copy(), 16000)
    data = load_dataset(tmp_path, spec, [1, 49, 40])
    assert data.class_names == ["_background", "yes"] and data.x.shape == (2, 49, 40)
    from edge_agent.preprocess import read_wav, resample

    samples, rate = read_wav(tmp_path / "yes" / "1.wav")
    np.testing.assert_allclose(data.x[1], audio_features(resample(samples, rate, 16000), spec))


def test_npz_raw_audio_gets_features(tmp_path: Path) -> None:
    spec = AudioPreprocess()
    x = np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x)
    data = load_dataset(tmp_path / "a.npz", spec, [1, 49, 40])
    np.testing.assert_allclose(data.x[0], audio_features(x[0], spec))


# --------------------------------------------------------------------------- paths and options


def test_model_format_detection(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"x")
    (tmp_path / "m.h5").write_bytes(b"x")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"x")
    assert detect_model_format(tmp_path / "m.keras") == "keras"
    assert detect_model_format(tmp_path / "m.h5") == "h5"
    assert detect_model_format(tmp_path / "sm") == "savedmodel"
    with pytest.raises(ModelLoadError, match="not found"):
        detect_model_format(tmp_path / "missing.keras")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"unknown model format '\.onnx'"):
        detect_model_format(tmp_path / "m.onnx")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        detect_model_format(tmp_path / "plain")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="already a TFLite"):
        detect_model_format(tmp_path / "m.tflite")


def test_output_path_checks(tmp_path: Path) -> None:
    check_output_writable(tmp_path / "ok.bundle")
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    with pytest.raises(ConvertError, match="is a directory"):
        check_output_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConvertError, match="not a directory"):
        check_output_writable(tmp_path / "file" / "out.bundle")
    with pytest.raises(ConvertError, match="does not exist"):
        check_output_writable(tmp_path / "no" / "out.bundle")



@pytest.mark.parametrize("directory", ["/proc", "/sys"])
def test_output_in_a_directory_that_refuses_files(directory: str) -> None:
    # chmod 0555 does not stop root; /proc (ENOENT) and /sys (EACCES, or EROFS where /sys is mounted
    # read-only, as in containers and pi-check's chroot) refuse new files for everyone
    with pytest.raises(ConvertError) as info:
        check_output_writable(Path(directory) / "x.bundle")
    message = str(info.value)
    assert "No such file or directory" not in message.split("(", maxsplit=1)[0], message
    refusals = ("not writable", "cannot create files", "is on a read-only filesystem")
    assert f"directory {directory}" in message and any(text in message for text in refusals), message
    assert "does not exist" not in message


def test_labels_file(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("cat\n\n dog \n")
    assert read_labels_file(tmp_path / "l.txt") == ["cat", "dog"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ConvertError, match="empty"):
        read_labels_file(tmp_path / "e.txt")


def test_build_preprocess_from_model_shape(tmp_path: Path) -> None:
    opts = ConvertOptions(model=tmp_path, calibration=tmp_path, output=tmp_path / "o")
    spec = build_preprocess(opts, "classify", [1, 24, 32, 3])
    assert isinstance(spec, ImagePreprocess) and (spec.width, spec.height, spec.color) == (32, 24, "rgb")
    opts.color = "gray"
    with pytest.raises(DataError, match="does not fit"):
        build_preprocess(opts, "classify", [1, 24, 32, 3])
    with pytest.raises(DataError, match="not an NHWC image"):
        build_preprocess(opts, "classify", [1, 16])
    opts.audio = {"n_mels": 32}
    with pytest.raises(DataError, match=r"\(49, 32\).*\[1, 49, 40\]"):
        build_preprocess(opts, "audio_classify", [1, 49, 40])
    opts.audio = {"fmax": 9000.0, "sample_rate": 16000}
    with pytest.raises(ConvertError, match="fmax"):
        build_preprocess(opts, "audio_classify", [1, 49, 40])


# --------------------------------------------------------------------------- helpers


def test_failed_ops_parsing() -> None:
    message = ("loc(...): error: 'tf.Erf' op is neither a custom op nor a flex op\n"
               "Quantization not yet supported for op: 'SIN'")
    assert failed_ops(message) == ["Erf", "SIN"]
    assert failed_ops("'tfl.fully_connected' op requires ...") == ["FULLY_CONNECTED"]
    assert failed_ops("nothing to see") == []


def test_coverage_counts_float_islands() -> None:
    ops = [OpInfo(0, "QUANTIZE", ["float32"], ["int8"], False),
           OpInfo(1, "CONV_2D", ["int8", "int8", "int32"], ["int8"], True),
           OpInfo(2, "SIN", ["float32"], ["float32"], False),
           OpInfo(3, "SOFTMAX", ["int8"], ["int8"], True)]
    assert int8_coverage(ops) == 0.5
    assert float_ops(ops) == ["QUANTIZE", "SIN"]
    assert float_compute_ops(ops) == ["SIN"]
    assert int8_coverage([]) == 0.0


def test_validation_metrics() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    b = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    assert top1_agreement(a, b) == pytest.approx(2 / 3)
    assert mean_cosine(a, a) == pytest.approx(1.0)
    assert mean_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0
    assert outputs_are_probabilities(a)
    assert not outputs_are_probabilities(np.array([[3.0, -1.0]]))


def test_report_table_renders() -> None:
    text = format_report({"model": "m.keras", "size_float_bytes": 1000, "size_int8_bytes": 260,
                          "size_ratio": 0.26, "top1_agreement": 0.99, "accuracy_float": None,
                          "int8_op_coverage": 1.0, "latency_ms": {"int8": {"1": 0.1, "2": 0.05}},
                          "io": {"input": {"dtype": "int8", "shape": [1, 2], "scale": 0.5, "zero_point": 1}}})
    assert "size ratio" in text and "99.00 %" in text and "n/a" in text and "1 thr 0.100 ms" in text


def test_cli_options_per_channel_and_audio(tmp_path: Path) -> None:
    from converter.cli import build_parser, options_from_args

    args = build_parser().parse_args([
        "m.keras", "--calibration", "c", "--output", "o.bundle", "--mean", "1,2", "--mean", "3",
        "--std", "58.4,57.1,57.4", "--resize", "letterbox", "--feature", "mfcc", "--n-mfcc", "10",
        "--window", "0.5", "--io", "uint8"])
    opts = options_from_args(args)
    assert opts.mean == [1.0, 2.0, 3.0] and opts.std == [58.4, 57.1, 57.4]
    assert opts.resize == "letterbox" and opts.io == "uint8" and opts.strict is False
    assert opts.audio == {"feature": "mfcc", "n_mfcc": 10, "window_s": 0.5}
    assert opts.max_accuracy_drop == 1.0


def test_cli_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from converter.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["model.keras", "--output", "x.bundle"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-convert: error:") and "--calibration" in err and len(err.splitlines()) == 1
    assert main(["m.keras", "--calibration", "c", "--output", "o", "--mean", "abc"]) == 2
    assert "--mean takes numbers" in capsys.readouterr().err
    assert main(["inspect", "/nonexistent.bundle"]) == 2
    assert "not found" in capsys.readouterr().err
