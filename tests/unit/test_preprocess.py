"""Shared preprocessing: log-mel/MFCC front end, quantisation, image resize modes."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import PreprocessError
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, TensorSpec
from edge_agent.preprocess import (
    audio_feature_shape,
    audio_features,
    dequantize,
    fit_to_tensor,
    fit_window,
    preprocess_image,
    quantize,
    read_wav,
    resample,
)

SPEC = AudioPreprocess(sample_rate=16000, window_s=1.0, feature="logmel", frame_length=480,
                       frame_step=320, fft_length=512, n_mels=40, fmin=20.0, fmax=7600.0)


# --------------------------------------------------------------------------- audio


def _direct_logmel(samples: np.ndarray, spec: AudioPreprocess) -> np.ndarray:
    """Log-mel written out loop by loop from the textbook definitions (independent code)."""
    n_bins = spec.fft_length // 2 + 1

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def mel_to_hz(m: float) -> float:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = hz_to_mel(spec.fmin), hz_to_mel(spec.fmax)
    edges = [mel_to_hz(lo + (hi - lo) * i / (spec.n_mels + 1)) for i in range(spec.n_mels + 2)]
    bank = np.zeros((n_bins, spec.n_mels))
    for b in range(n_bins):
        freq = b * spec.sample_rate / spec.fft_length
        for m in range(spec.n_mels):
            left, centre, right = edges[m], edges[m + 1], edges[m + 2]
            if left <= freq <= centre:
                bank[b, m] = (freq - left) / (centre - left)
            elif centre < freq <= right:
                bank[b, m] = (right - freq) / (right - centre)
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / spec.frame_length)
                       for n in range(spec.frame_length)])
    rows = []
    start = 0
    while start + spec.frame_length <= len(samples):
        frame = samples[start : start + spec.frame_length] * window
        padded = np.zeros(spec.fft_length)
        padded[: spec.frame_length] = frame
        power = np.abs(np.fft.fft(padded)[:n_bins]) ** 2
        rows.append(np.log(power @ bank + spec.log_offset))
        start += spec.frame_step
    return np.array(rows)


def test_logmel_matches_direct_computation() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(SPEC.window_samples) / SPEC.sample_rate
    samples = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    got = audio_features(samples, SPEC)
    want = _direct_logmel(samples.astype(np.float64), SPEC)
    assert got.shape == want.shape == audio_feature_shape(SPEC) == (49, 40)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-3)


def test_logmel_tone_peaks_in_the_right_band() -> None:
    t = np.arange(SPEC.window_samples) / SPEC.sample_rate
    low = audio_features(np.sin(2 * np.pi * 300 * t).astype(np.float32), SPEC).mean(axis=0)
    high = audio_features(np.sin(2 * np.pi * 4000 * t).astype(np.float32), SPEC).mean(axis=0)
    assert int(np.argmax(low)) < int(np.argmax(high))


@pytest.mark.sklearn  # SciPy comes with scikit-learn
def test_mfcc_is_orthonormal_dct_of_logmel() -> None:
    from scipy.fft import dct

    mfcc_spec = SPEC.model_copy(update={"feature": "mfcc", "n_mfcc": 13})
    samples = np.random.default_rng(2).normal(0, 0.1, SPEC.window_samples).astype(np.float32)
    logmel = audio_features(samples, SPEC)
    mfcc = audio_features(samples, mfcc_spec)
    np.testing.assert_allclose(mfcc, dct(logmel, type=2, norm="ortho", axis=1)[:, :13], rtol=1e-4, atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(
    window=st.sampled_from([0.5, 1.0, 1.5]),
    frame_length=st.sampled_from([256, 400, 480]),
    frame_step=st.sampled_from([128, 160, 320]),
    feature=st.sampled_from(["waveform", "logmel", "mfcc"]),
)
def test_feature_shape_matches_features(window: float, frame_length: int, frame_step: int,
                                        feature: str) -> None:
    spec = AudioPreprocess(window_s=window, frame_length=frame_length, frame_step=frame_step,
                           fft_length=512, feature=feature)  # type: ignore[arg-type]
    samples = np.zeros(12345, dtype=np.float32)
    assert audio_features(samples, spec).shape == audio_feature_shape(spec)


def test_fit_window_pads_and_crops_centred() -> None:
    assert fit_window(np.ones(4, np.float32), 8).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert fit_window(np.arange(8, dtype=np.float32), 4).tolist() == [2, 3, 4, 5]


def test_read_wav_and_resample(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    pcm = (np.sin(np.linspace(0, 20, 22050)) * 16000).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(22050)
        handle.writeframes(pcm.tobytes())
    samples, rate = read_wav(path)
    assert rate == 22050 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, pcm / 32768.0, atol=1e-6)
    assert resample(samples, 22050, 16000).size == 16000
    with pytest.raises(PreprocessError):
        read_wav(tmp_path / "missing.wav")


@pytest.mark.parametrize(("rate", "channels", "message"), [
    (0, 1, "sample rate 0 Hz is outside 8000..192000 Hz"),  # was ZeroDivisionError when resampled
    (1, 1, "sample rate 1 Hz is outside 8000..192000 Hz"),  # was a 16000-fold copy to 16 kHz
    (192001, 1, "sample rate 192001 Hz is outside 8000..192000 Hz"),
    (8000, 9, "9 channels (1 to 8 supported)"),
])
def test_read_wav_checks_the_header_before_reading_samples(tmp_path: Path, rate: int, channels: int,
                                                          message: str) -> None:
    path = tmp_path / "bad.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate if rate else 8000)
        handle.writeframes(b"\0\0" * channels * 4)
    if rate == 0:  # the wave module refuses to write a rate of 0: patch the header's field
        data = bytearray(path.read_bytes())
        data[24:28] = (0).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    with pytest.raises(PreprocessError) as info:
        read_wav(path)
    assert str(info.value) == f"WAV file {path}: {message}"
    # the bounds themselves are accepted
    ok = tmp_path / "ok.wav"
    with wave.open(str(ok), "wb") as handle:
        handle.setnchannels(8)
        handle.setsampwidth(4)
        handle.setframerate(8000)
        handle.writeframes(b"\0" * 32)
    assert read_wav(ok)[1] == 8000


def test_audio_features_rejects_stereo_arrays() -> None:
    with pytest.raises(PreprocessError):
        audio_features(np.zeros((2, 100), np.float32), SPEC)


# --------------------------------------------------------------------------- quantisation


@settings(max_examples=200, deadline=None)
@given(
    scale=st.floats(1e-3, 1.0),
    zero_point=st.integers(-128, 127),
    fraction=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=16),
)
def test_int8_round_trip_within_half_step(scale: float, zero_point: int, fraction: list[float]) -> None:
    spec = TensorSpec(shape=[1, len(fraction)], dtype="int8", scale=scale, zero_point=zero_point)
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    values = np.array([low + f * (high - low) for f in fraction], dtype=np.float32)
    q = quantize(values, spec)
    assert q.dtype == np.int8
    assert np.all(np.abs(dequantize(q, spec) - values) <= scale / 2 + 1e-5 * max(1.0, abs(high)))


def test_quantize_clips_and_uint8() -> None:
    spec = TensorSpec(shape=[1, 3], dtype="uint8", scale=0.5, zero_point=10)
    q = quantize(np.array([-100.0, 0.0, 1000.0], np.float32), spec)
    assert q.dtype == np.uint8 and q.tolist() == [0, 10, 255]
    np.testing.assert_allclose(dequantize(q, spec), [-5.0, 0.0, 122.5])


def test_quantize_needs_scale_and_float_passthrough() -> None:
    with pytest.raises(PreprocessError, match="no quantisation scale"):
        quantize(np.zeros(2, np.float32), TensorSpec(shape=[2], dtype="int8"))
    spec = TensorSpec(shape=[2], dtype="float32")
    values = np.array([0.25, -3.0], np.float32)
    assert quantize(values, spec) is values or np.array_equal(quantize(values, spec), values)


def test_dequantize_does_not_overflow_int8() -> None:
    spec = TensorSpec(shape=[1], dtype="int8", scale=1.0, zero_point=-128)
    assert dequantize(np.array([127], np.int8), spec).tolist() == [255.0]


# --------------------------------------------------------------------------- images


def test_letterbox_geometry_and_transform() -> None:
    frame = np.full((480, 640, 3), 200, np.uint8)
    spec = ImagePreprocess(width=320, height=320, resize="letterbox", color="rgb")
    out, transform = preprocess_image(frame, spec)
    assert out.shape == (320, 320, 3) and out.dtype == np.float32
    assert transform.scale_x == pytest.approx(0.5) and transform.offset_y == 40 and transform.offset_x == 0
    assert np.all(out[:40] == 0) and np.all(out[-40:] == 0) and np.all(out[40:280] == 200)
    assert transform.to_source(160, 160) == pytest.approx((320.0, 240.0))
    assert transform.to_source(0, 40) == pytest.approx((0.0, 0.0))
    assert transform.to_source(320, 0) == pytest.approx((640.0, 0.0))  # padding clamps to the frame


def test_crop_and_stretch_transforms() -> None:
    frame = np.zeros((100, 200), np.uint8)
    frame[:, 50:150] = 255
    crop, t_crop = preprocess_image(frame, ImagePreprocess(width=50, height=50, channels=1, color="gray",
                                                           resize="crop"))
    assert crop.shape == (50, 50, 1) and np.all(crop == 255)  # the centre 100x100 scaled by 0.5
    assert t_crop.to_source(25, 25) == pytest.approx((100.0, 50.0))
    stretch, t_stretch = preprocess_image(frame, ImagePreprocess(width=20, height=20, channels=1,
                                                                 color="gray"))
    assert stretch.shape == (20, 20, 1)
    assert t_stretch.to_source(10, 10) == pytest.approx((100.0, 50.0))


def test_colour_order_mean_std_invert() -> None:
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    rgb, _ = preprocess_image(bgr, ImagePreprocess(width=2, height=2, color="rgb",
                                                   mean=[0, 10, 20], std=[1, 2, 5]))
    assert rgb[0, 0].tolist() == [30.0, 5.0, -2.0]  # (30-0)/1, (20-10)/2, (10-20)/5
    kept, _ = preprocess_image(bgr, ImagePreprocess(width=2, height=2, color="bgr"))
    assert kept[0, 0].tolist() == [10.0, 20.0, 30.0]
    inverted, _ = preprocess_image(np.full((2, 2), 55, np.uint8),
                                   ImagePreprocess(width=2, height=2, channels=1, color="gray", invert=True))
    assert inverted.reshape(-1).tolist() == [200.0] * 4


def test_preprocess_rejects_bad_frames_and_spec() -> None:
    with pytest.raises(PreprocessError):
        preprocess_image(np.zeros((4, 4, 2), np.uint8), ImagePreprocess(width=2, height=2))
    with pytest.raises(ValueError, match="gray"):
        ImagePreprocess(width=2, height=2, channels=3, color="gray")
    with pytest.raises(ValueError, match="std"):
        ImagePreprocess(width=2, height=2, std=[0.0])


def test_fit_to_tensor_reports_shapes() -> None:
    assert fit_to_tensor(np.zeros((49, 40), np.float32), [1, 49, 40, 1]).shape == (1, 49, 40, 1)
    with pytest.raises(PreprocessError, match=r"\[1, 32, 32, 1\]"):
        fit_to_tensor(np.zeros((49, 40), np.float32), [1, 32, 32, 1])
