"""Preprocessing rules the mutation run (``make mutate``) found untested: input frame kinds, the
resize filter and geometry, PCM decoding of every sample width, resampling, dtypes and copies."""

from __future__ import annotations

import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.errors import PreprocessError
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, TensorSpec
from edge_agent.preprocess import (
    _hz_to_mel,
    _mel_to_hz,
    audio_feature_shape,
    audio_features,
    dequantize,
    fit_to_tensor,
    fit_window,
    pcm_to_float,
    quantize,
    read_wav,
    resample,
    resize_image,
)

RNG = np.random.default_rng(5)
IMAGE = RNG.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)  # detailed: every filter differs


def _spec(**kw: object) -> ImagePreprocess:
    return ImagePreprocess(**{"width": 20, "height": 20, "channels": 3, "color": "bgr", **kw})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- frames


def test_bgra_and_single_channel_frames() -> None:
    bgra = np.dstack([IMAGE, np.full(IMAGE.shape[:2], 200, np.uint8)])
    out, _ = resize_image(bgra, _spec())
    assert np.array_equal(out, resize_image(IMAGE, _spec())[0])
    grey = IMAGE[:, :, 0]
    one_channel, _ = resize_image(grey[:, :, None], _spec(color="gray", channels=1))
    assert np.array_equal(one_channel, resize_image(grey, _spec(color="gray", channels=1))[0])


@pytest.mark.parametrize("shape", [(4, 4, 2), (4, 4, 5), (2, 4, 4, 3), (8,)])
def test_other_frame_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(PreprocessError) as info:
        resize_image(np.zeros(shape, np.uint8), _spec())
    assert str(info.value) == f"expected an HxW or HxWx3 image, got shape {shape}"


def test_non_uint8_frames_are_clipped_to_0_255() -> None:
    frame = np.array([[-50.0, 0.0, 100.4], [254.6, 255.0, 300.0]], dtype=np.float64)
    out, _ = resize_image(frame, _spec(width=3, height=2, color="gray", channels=1))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 100], [254, 255, 255]]
    wide = np.array([[1, 70000]], dtype=np.int32)
    assert resize_image(wide, _spec(width=2, height=1, color="gray", channels=1))[0].tolist() == [[1, 255]]


# --------------------------------------------------------------------------- resize filter and geometry


@pytest.mark.parametrize(
    ("width", "height", "interpolation"),
    [(20, 20, cv2.INTER_AREA), (30, 20, cv2.INTER_AREA), (60, 20, cv2.INTER_LINEAR), (30, 40, cv2.INTER_LINEAR),
     (90, 80, cv2.INTER_LINEAR)],
)
def test_stretch_shrinks_with_area_and_enlarges_linearly(width: int, height: int, interpolation: int) -> None:
    """INTER_AREA only when both sides shrink (60x40 source)."""
    out, transform = resize_image(IMAGE, _spec(width=width, height=height, resize="stretch"))
    assert np.array_equal(out, cv2.resize(IMAGE, (width, height), interpolation=interpolation))
    assert (transform.scale_x, transform.scale_y) == (width / 60, height / 40)


def test_letterbox_centres_and_keeps_uint8() -> None:
    out, transform = resize_image(IMAGE, _spec(width=50, height=50, resize="letterbox", pad_value=7))
    assert out.dtype == np.uint8 and out.shape == (50, 50, 3)
    # 60x40 → 50x33, centred vertically: 8 rows of padding above, 9 below
    scaled = cv2.resize(IMAGE, (50, 33), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out[8:41], scaled)
    assert (out[:8] == 7).all() and (out[41:] == 7).all()
    assert (transform.offset_x, transform.offset_y) == (0, 8)
    tall, t2 = resize_image(np.ascontiguousarray(IMAGE.transpose(1, 0, 2)), _spec(width=50, height=50,
                                                                                   resize="letterbox"))
    assert (t2.offset_x, t2.offset_y) == (8, 0) and (tall[:, :8] == 0).all()


def test_letterbox_keeps_at_least_one_pixel() -> None:
    line = RNG.integers(0, 256, size=(1, 400, 3), dtype=np.uint8)
    _, transform = resize_image(line, _spec(width=40, height=40, resize="letterbox"))
    assert (transform.scale_x, transform.scale_y) == (40 / 400, 1.0)  # 400x1 → 40x1, not 40x0
    column = np.ascontiguousarray(line.transpose(1, 0, 2))
    _, transform = resize_image(column, _spec(width=40, height=40, resize="letterbox"))
    assert (transform.scale_x, transform.scale_y) == (1.0, 40 / 400)


def test_crop_scales_the_short_side_and_centres() -> None:
    out, transform = resize_image(IMAGE, _spec(width=20, height=20, resize="crop"))
    # 60x40 → 30x20 (short side fits), then the centre 20 columns
    scaled = cv2.resize(IMAGE, (30, 20), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out, scaled[:, 5:25])
    assert (transform.scale_x, transform.scale_y, transform.offset_x, transform.offset_y) == (0.5, 0.5, -5, 0)
    # a factor that is not a whole number: the filter matters (INTER_AREA when shrinking)
    out, transform = resize_image(IMAGE, _spec(width=21, height=21, resize="crop"))
    scaled = cv2.resize(IMAGE, (32, 21), interpolation=cv2.INTER_AREA)  # round(60 * 21 / 40) = 32
    assert np.array_equal(out, scaled[:, 5:26]) and transform.offset_x == -5
    tall = np.ascontiguousarray(IMAGE.transpose(1, 0, 2))  # 40x60
    out, transform = resize_image(tall, _spec(width=20, height=20, resize="crop"))
    scaled = cv2.resize(tall, (20, 30), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out, scaled[5:25])
    assert (transform.offset_x, transform.offset_y) == (0, -5)
    assert transform.to_source(10, 10) == (20.0, 30.0)  # the centre maps back to the centre


# --------------------------------------------------------------------------- quantisation


def test_float_tensors_pass_through_without_a_copy() -> None:
    values = np.linspace(-1, 1, 7, dtype=np.float32)
    spec = TensorSpec(shape=[7], dtype="float32")
    assert np.shares_memory(quantize(values, spec), values)
    assert np.shares_memory(dequantize(values, spec), values)


def test_dequantize_float_output_ignores_its_scale_and_unscaled_ints_are_plain_values() -> None:
    floats = np.array([0.25, -3.0], dtype=np.float32)
    assert dequantize(floats, TensorSpec(shape=[2], dtype="float32", scale=0.5, zero_point=3)).tolist() == [0.25, -3.0]
    ints = np.array([-128, 5, 127], dtype=np.int8)
    plain = dequantize(ints, TensorSpec(shape=[3], dtype="int8", scale=0.0, zero_point=0))
    assert plain.dtype == np.float32 and plain.tolist() == [-128.0, 5.0, 127.0]
    scaled = dequantize(ints, TensorSpec(shape=[3], dtype="int8", scale=0.5, zero_point=-128))
    assert scaled.dtype == np.float32 and scaled.tolist() == [0.0, 66.5, 127.5]


# --------------------------------------------------------------------------- audio


def test_pcm_of_every_sample_width() -> None:
    assert pcm_to_float(bytes([0, 128, 255, 64]), 1).tolist() == [-1.0, 0.0, 127 / 128, -0.5]
    sixteen = np.array([-32768, 0, 16384, 32767], dtype="<i2").tobytes()
    assert pcm_to_float(sixteen, 2).tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]
    twenty_four = bytes([0x01, 0x00, 0x00, 0xFF, 0xFF, 0x7F, 0x00, 0x00, 0x80, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x40,
                         0x34, 0x12, 0x00])
    assert pcm_to_float(twenty_four, 3).tolist() == pytest.approx(
        [1 / 2**23, (2**23 - 1) / 2**23, -1.0, -1 / 2**23, 0.5, 0x1234 / 2**23], abs=1e-9)
    thirty_two = np.array([-2**31, 2**30, 0, 2**31 - 1], dtype="<i4").tobytes()
    assert pcm_to_float(thirty_two, 4).tolist() == pytest.approx([-1.0, 0.5, 0.0, 1.0], abs=1e-9)
    for width in (1, 2, 3, 4):
        assert pcm_to_float(bytes(width * 4), width).dtype == np.float32


def test_pcm_channels_are_averaged_and_partial_frames_dropped() -> None:
    stereo = np.array([1000, 3000, -2000, 0, 5], dtype="<i2").tobytes()  # the 5th sample is half a frame
    assert pcm_to_float(stereo, 2, channels=2).tolist() == [2000 / 32768, -1000 / 32768]
    assert pcm_to_float(stereo, 2).tolist() == pytest.approx([1000 / 32768, 3000 / 32768, -2000 / 32768, 0.0,
                                                              5 / 32768])
    three = np.array([3, 6, 9, 30, 60, 90, 1], dtype="<i2").tobytes()
    assert pcm_to_float(three, 2, channels=3).tolist() == [6 / 32768, 60 / 32768]
    assert pcm_to_float(b"\x01\x02\x03", 2).tolist() == [(0x0201) / 32768]
    with pytest.raises(PreprocessError) as info:
        pcm_to_float(b"\x00" * 10, 5)
    assert str(info.value) == "unsupported PCM sample width 5 bytes"


def _write_wav(path: Path, frames: np.ndarray, channels: int, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(frames.astype("<i2").tobytes())


def test_read_wav_mixes_stereo_and_names_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    _write_wav(path, np.array([1000, 3000, -2000, 0]), channels=2, rate=22050)
    samples, rate = read_wav(path)
    assert rate == 22050 and samples.tolist() == [2000 / 32768, -1000 / 32768]
    missing = tmp_path / "none.wav"
    with pytest.raises(PreprocessError) as info:
        read_wav(missing)
    assert str(info.value) == f"WAV file {missing} not found"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(PreprocessError) as info:
        read_wav(junk)
    assert str(info.value).startswith(f"{junk} is not a PCM WAV file: ")


def test_read_wav_accepts_the_bounds_of_rate_and_sample_width(tmp_path: Path) -> None:
    """The highest sample rate and the narrowest (8-bit, unsigned) samples are readable audio."""
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(1)
        handle.setframerate(192000)
        handle.writeframes(bytes([128, 255, 0, 64]))
    samples, rate = read_wav(path)
    assert rate == 192000 and samples.tolist() == [0.0, 127 / 128, -1.0, -0.5]


def test_resample_interpolates_linearly() -> None:
    samples = np.array([0.0, 1.0, 0.0, -1.0], dtype=np.float32)
    up = resample(samples, 8000, 16000)
    assert up.dtype == np.float32 and up.tolist() == [0.0, 0.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0]
    down = resample(np.arange(8, dtype=np.float32), 16000, 8000)
    assert down.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert resample(np.array([0.5], dtype=np.float32), 8000, 24000).tolist() == [0.5, 0.5, 0.5]
    assert resample(np.zeros(0, dtype=np.float32), 8000, 16000).size == 0
    same = np.array([0.1, 0.2], dtype=np.float32)
    assert np.shares_memory(resample(same, 8000, 8000), same)
    assert resample(np.array([1, 2], dtype=np.int16), 8000, 8000).dtype == np.float32


def test_fit_window_pads_with_float32_zeros() -> None:
    out = fit_window(np.ones(3, dtype=np.float32), 6)
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_mel_scale_is_htk() -> None:
    assert float(_hz_to_mel(np.array(700.0))) == pytest.approx(2595.0 * np.log10(2.0))
    assert float(_hz_to_mel(np.array(0.0))) == 0.0
    assert float(_mel_to_hz(np.array(2595.0))) == pytest.approx(700.0 * 9.0)
    assert float(_mel_to_hz(_hz_to_mel(np.array(440.0)))) == pytest.approx(440.0)


def test_window_of_exactly_one_frame_gives_one_frame() -> None:
    spec = AudioPreprocess(sample_rate=1000, window_s=0.2, feature="logmel", frame_length=200, frame_step=100,
                           fft_length=256, n_mels=8, fmin=0.0, fmax=500.0)
    features = audio_features(np.ones(200, dtype=np.float32), spec)
    assert features.shape == audio_feature_shape(spec) == (1, 8)
    assert features.dtype == np.float32
    mfcc = spec.model_copy(update={"feature": "mfcc", "n_mfcc": 4})
    assert audio_features(np.ones(200, dtype=np.float32), mfcc).dtype == np.float32


def test_waveform_feature_is_the_samples_themselves() -> None:
    spec = AudioPreprocess(sample_rate=1000, window_s=0.01, feature="waveform", fmin=0.0, fmax=500.0)
    samples = np.linspace(-1, 1, 10, dtype=np.float32)
    assert np.shares_memory(audio_features(samples, spec), samples)
    with pytest.raises(PreprocessError) as info:
        audio_features(np.zeros((10, 2), dtype=np.float32), spec)
    assert str(info.value) == "expected mono audio samples, got shape (10, 2)"


@pytest.mark.parametrize(
    ("shape", "target"),
    [([1, 5], (1, 5)), ([3, 5], (1, 5)), ([5], (5,)), ([], (5,)), ([1, 5, 1], (1, 5, 1))],
)
def test_fit_to_tensor_shapes(shape: list[int], target: tuple[int, ...]) -> None:
    assert fit_to_tensor(np.arange(5, dtype=np.float32), shape).shape == target
