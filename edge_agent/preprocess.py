"""Preprocessing shared by the converter (calibration, validation) and the device.

The converter imports these exact functions to build its representative dataset,
so the int8 calibration sees what the device will feed the model. Pure NumPy and
OpenCV; never TensorFlow.

Images arrive as OpenCV arrays (BGR, or 2-D grey, uint8). Audio arrives as mono
float32 samples in [-1, 1] at the manifest's sample rate.
"""

from __future__ import annotations

import functools
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import PreprocessError
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, TensorSpec


@dataclass(frozen=True)
class ImageTransform:
    """Maps model-input pixel coordinates back to source pixels (for boxes)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    source_width: int
    source_height: int

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        sx = (x - self.offset_x) / self.scale_x
        sy = (y - self.offset_y) / self.scale_y
        return (
            float(min(max(sx, 0.0), self.source_width)),
            float(min(max(sy, 0.0), self.source_height)),
        )


def preprocess_image(frame: np.ndarray, spec: ImagePreprocess) -> tuple[np.ndarray, ImageTransform]:
    """Turn one OpenCV frame into a float32 HxWxC model input (normalised, not quantised).

    Args:
        frame: uint8 image, HxW (grey), HxWx3 (BGR) or HxWx4 (BGRA).
        spec: the manifest's image preprocessing.

    Returns:
        The float32 input array and the transform back to source pixels.
    """
    resized, transform = resize_image(frame, spec)
    return normalize_image(resized, spec), transform


def resize_image(frame: np.ndarray, spec: ImagePreprocess) -> tuple[np.ndarray, ImageTransform]:
    """Colour conversion and resize: the uint8 HxW or HxWx3 image before normalisation."""
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise PreprocessError(f"expected an HxW or HxWx3 image, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)

    if spec.color == "gray":
        image = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    else:
        bgr = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if spec.color == "rgb" else bgr

    src_h, src_w = image.shape[:2]
    return _resize(image, spec.width, spec.height, spec.resize, src_w, src_h, spec.pad_value)


def normalize_image(resized: np.ndarray, spec: ImagePreprocess) -> np.ndarray:
    """uint8 pixels (from :func:`resize_image`) to normalised float32 HxWxC."""
    out = resized.astype(np.float32)
    if out.ndim == 2:
        out = out[:, :, None]
    if spec.invert:
        out = 255.0 - out
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    result: np.ndarray = (out - mean) / std
    return result


def pixel_lookup_table(spec: ImagePreprocess, tensor: TensorSpec) -> np.ndarray:
    """Model-input value of every uint8 pixel level, shape (256, C) in the tensor's dtype.

    Normalisation and quantisation act on each pixel independently, so the
    device applies them as one table lookup; the table is computed with exactly
    the float operations of :func:`normalize_image` and :func:`quantize`, so the
    result is bit-identical to the slow path the converter calibrated with.
    """
    levels = np.arange(256, dtype=np.uint8).reshape(256, 1)
    if spec.channels == 3:
        levels = np.repeat(levels[:, :, None], 3, axis=2)  # (256, 1, 3)
    table = quantize(normalize_image(levels, spec), tensor)  # (256, 1, C)
    return np.ascontiguousarray(table.reshape(256, spec.channels))


def _interp(src_w: int, src_h: int, dst_w: int, dst_h: int) -> int:
    # INTER_AREA is the right filter when shrinking; LINEAR when enlarging.
    return cv2.INTER_AREA if dst_w < src_w and dst_h < src_h else cv2.INTER_LINEAR


def _resize(
    image: np.ndarray, width: int, height: int, mode: str, src_w: int, src_h: int, pad_value: int = 0
) -> tuple[np.ndarray, ImageTransform]:
    if mode == "stretch":
        sx, sy = width / src_w, height / src_h
        out = cv2.resize(image, (width, height), interpolation=_interp(src_w, src_h, width, height))
        return out, ImageTransform(sx, sy, 0.0, 0.0, src_w, src_h)
    if mode == "letterbox":
        scale = min(width / src_w, height / src_h)
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        scaled = cv2.resize(image, (new_w, new_h), interpolation=_interp(src_w, src_h, new_w, new_h))
        canvas = np.full((height, width, *image.shape[2:]), pad_value, dtype=image.dtype)
        # Centred, as Ultralytics' LetterBox does: round(d / 2 - 0.1) is floor(d / 2) for integer d.
        off_x, off_y = (width - new_w) // 2, (height - new_h) // 2
        canvas[off_y : off_y + new_h, off_x : off_x + new_w] = scaled
        return canvas, ImageTransform(new_w / src_w, new_h / src_h, off_x, off_y, src_w, src_h)
    # crop: scale the short side to fit, centre-crop the rest
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    scaled = cv2.resize(image, (new_w, new_h), interpolation=_interp(src_w, src_h, new_w, new_h))
    off_x, off_y = (new_w - width) // 2, (new_h - height) // 2
    out = scaled[off_y : off_y + height, off_x : off_x + width]
    return out, ImageTransform(new_w / src_w, new_h / src_h, -off_x, -off_y, src_w, src_h)


# --------------------------------------------------------------------------- quantisation


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Quantise float values with the tensor's own scale/zero-point (from the interpreter)."""
    dtype = np.dtype(spec.dtype)
    if dtype == np.float32:
        return values.astype(np.float32, copy=False)
    if spec.scale <= 0:
        raise PreprocessError(f"tensor {spec.name!r} is {spec.dtype} but has no quantisation scale")
    info = np.iinfo(dtype.type)  # type: ignore[type-var]  # an integer dtype here
    q = np.round(values / spec.scale + spec.zero_point)
    clipped: np.ndarray = np.clip(q, info.min, info.max).astype(dtype)
    return clipped


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float view of an output tensor using the interpreter's scale/zero-point."""
    if values.dtype == np.float32 or spec.scale <= 0:
        return values.astype(np.float32, copy=False)
    # int arithmetic first would overflow int8; widen before subtracting.
    out: np.ndarray = (values.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)
    return out


# --------------------------------------------------------------------------- audio


WAV_MIN_RATE, WAV_MAX_RATE = 8000, 192000  # Hz: telephone to studio audio
WAV_MAX_CHANNELS = 8
WAV_MAX_SAMPLE_WIDTH = 4  # bytes: 8- to 32-bit PCM


def wav_header_problem(rate: int, channels: int, width: int) -> str | None:
    """Why a WAV header cannot be read as audio (checked before a sample is read), or None."""
    if not WAV_MIN_RATE <= rate <= WAV_MAX_RATE:
        return f"sample rate {rate} Hz is outside {WAV_MIN_RATE}..{WAV_MAX_RATE} Hz"
    if not 1 <= channels <= WAV_MAX_CHANNELS:
        return f"{channels} channels (1 to {WAV_MAX_CHANNELS} supported)"
    if not 1 <= width <= WAV_MAX_SAMPLE_WIDTH:
        return f"samples of {width} bytes (1 to {WAV_MAX_SAMPLE_WIDTH} supported)"
    return None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as mono float32 in [-1, 1] and its sample rate (header checked first)."""
    try:
        with wave.open(str(path), "rb") as handle:
            channels = handle.getnchannels()
            width = handle.getsampwidth()
            rate = handle.getframerate()
            problem = wav_header_problem(rate, channels, width)
            if problem is not None:
                raise PreprocessError(f"WAV file {path}: {problem}")
            raw = handle.readframes(handle.getnframes())
    except FileNotFoundError as exc:
        raise PreprocessError(f"WAV file {path} not found") from exc
    except (wave.Error, EOFError) as exc:
        raise PreprocessError(f"{path} is not a PCM WAV file: {exc}") from exc
    return pcm_to_float(raw, width, channels), rate


def pcm_to_float(raw: bytes, sample_width: int, channels: int = 1) -> np.ndarray:
    """Convert interleaved little-endian PCM bytes to mono float32 in [-1, 1]."""
    usable = len(raw) - len(raw) % (sample_width * channels)
    raw = raw[:usable]
    if sample_width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif sample_width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif sample_width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        data = ints.astype(np.float32) / float(1 << 23)
    elif sample_width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise PreprocessError(f"unsupported PCM sample width {sample_width} bytes")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype(np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono audio by linear interpolation (adequate for speech features)."""
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    n_out = round(samples.size * rate_out / rate_in)
    positions = np.arange(n_out, dtype=np.float64) * (rate_in / rate_out)
    resampled: np.ndarray = np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
    return resampled


def fit_window(samples: np.ndarray, length: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop to exactly ``length`` samples."""
    if samples.size == length:
        return samples
    if samples.size > length:
        start = (samples.size - length) // 2
        return samples[start : start + length]
    out = np.zeros(length, dtype=np.float32)
    start = (length - samples.size) // 2
    out[start : start + samples.size] = samples
    return out


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, fft_length: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-style mel filterbank, shape (fft_length // 2 + 1, n_mels)."""
    n_bins = fft_length // 2 + 1
    freqs = np.linspace(0.0, sample_rate / 2.0, n_bins)
    mel_points = np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    bank = np.zeros((n_bins, n_mels), dtype=np.float32)
    for m in range(n_mels):
        lower, centre, upper = hz_points[m], hz_points[m + 1], hz_points[m + 2]
        up = (freqs - lower) / max(centre - lower, 1e-9)
        down = (upper - freqs) / max(upper - centre, 1e-9)
        bank[:, m] = np.maximum(0.0, np.minimum(up, down))
    return bank


@functools.lru_cache(maxsize=16)
def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Orthonormal DCT-II, as used for MFCCs.
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    mat = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    mat[0] *= 1.0 / np.sqrt(2.0)
    dct: np.ndarray = mat.T.astype(np.float32)
    return dct


@functools.lru_cache(maxsize=16)
def _hann(length: int) -> np.ndarray:
    return np.hanning(length + 1)[:-1].astype(np.float32)


def audio_features(samples: np.ndarray, spec: AudioPreprocess) -> np.ndarray:
    """Features of one window of audio, as the model expects them (float32).

    ``samples`` is padded or cropped to ``spec.window_samples`` first. Returns
    shape (window_samples,) for ``waveform``, else (frames, n_mels | n_mfcc).
    """
    if samples.ndim != 1:
        raise PreprocessError(f"expected mono audio samples, got shape {samples.shape}")
    window = fit_window(samples.astype(np.float32, copy=False), spec.window_samples)
    if spec.feature == "waveform":
        return window
    n_frames = 1 + max(0, (window.size - spec.frame_length) // spec.frame_step)
    idx = np.arange(spec.frame_length)[None, :] + spec.frame_step * np.arange(n_frames)[:, None]
    frames = window[idx] * _hann(spec.frame_length)
    spectrum = np.abs(np.fft.rfft(frames, n=spec.fft_length, axis=1)).astype(np.float32) ** 2
    bank = mel_filterbank(spec.sample_rate, spec.fft_length, spec.n_mels, spec.fmin, spec.fmax)
    log_mel: np.ndarray = np.log(spectrum @ bank + spec.log_offset).astype(np.float32)
    if spec.feature == "logmel":
        return log_mel
    result: np.ndarray = (log_mel @ _dct_matrix(spec.n_mels, spec.n_mfcc)).astype(np.float32)
    return result


def audio_feature_shape(spec: AudioPreprocess) -> tuple[int, ...]:
    """Shape :func:`audio_features` returns for this spec (without batch)."""
    if spec.feature == "waveform":
        return (spec.window_samples,)
    n_frames = 1 + max(0, (spec.window_samples - spec.frame_length) // spec.frame_step)
    return (n_frames, spec.n_mels if spec.feature == "logmel" else spec.n_mfcc)


def fit_to_tensor(features: np.ndarray, shape: list[int]) -> np.ndarray:
    """Reshape preprocessed features to the model's input shape (adds batch/channel dims)."""
    # [1, ...] with batch; a 1-D input (YAMNet's [15600]) has no batch dimension
    target = [1, *shape[1:]] if len(shape) > 1 else list(shape) or list(features.shape)
    if int(np.prod(target)) != features.size:
        raise PreprocessError(
            f"preprocessed input has shape {features.shape} ({features.size} values) but the "
            f"model input is {shape}; fix the preprocessing options to match the model"
        )
    reshaped: np.ndarray = features.reshape(target)
    return reshaped
