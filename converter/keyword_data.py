"""Synthetic keyword audio for the example keyword model (:mod:`converter.examples`).

Spoken words synthesised with ``espeak-ng`` (several voices, speeds and pitches,
with noise and time shifts) plus a background class of noise and partial words,
written as a WAV class folder; and the log-mel features of such a folder computed
with :func:`edge_agent.preprocess.audio_features`, the same code the device runs.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.model.manifest import AudioPreprocess
from edge_agent.preprocess import audio_features, read_wav, resample

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right")
BACKGROUND_LABEL = "_background"
ESPEAK_VOICES: tuple[str, ...] = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-rp",
    "en+f3",
    "en-us+f2",
    "en+m3",
    "en-gb-x-gbclan",
)


def keyword_preprocess() -> AudioPreprocess:
    """The audio front end of the keyword model (log-mel, 1 s at 16 kHz, 49x40)."""
    return AudioPreprocess(
        sample_rate=16000, window_s=1.0, hop_s=0.25, feature="logmel",
        frame_length=480, frame_step=320, fft_length=512, n_mels=40, fmin=20.0, fmax=7600.0,
    )


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def _speak(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> tuple[np.ndarray, int]:
    fd, name = tempfile.mkstemp(suffix=".wav", dir=workdir)
    os.close(fd)
    try:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", name, word],
            check=True, capture_output=True, timeout=30,
        )
        return read_wav(Path(name))
    finally:
        Path(name).unlink(missing_ok=True)


def _trim(clip: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut espeak's leading/trailing silence, keeping 20 ms of margin."""
    loud = np.flatnonzero(np.abs(clip) > 0.02 * (float(np.max(np.abs(clip))) or 1.0))
    if loud.size == 0:
        return clip
    margin = sample_rate // 50
    return clip[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def _place_at(clip: np.ndarray, length: int, start: int) -> np.ndarray:
    """Put ``clip`` at ``start`` (may be negative or run past the end) in a zero window."""
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(0, start), min(length, start + clip.size)
    if hi > lo:
        out[lo:hi] = clip[lo - start : hi - start]
    return out


def _place_word(clip: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A word (mostly) inside the window: at most 5 % of it cut at either edge."""
    allowance = int(0.05 * clip.size)
    start = int(rng.integers(-allowance, max(-allowance + 1, length - clip.size + allowance + 1)))
    return _place_at(clip, length, start)


def _place_partial(clip: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Only 10-40 % of a word at the window's start or end: a sliding window's near miss.

    Labelled as background, these teach the model to fire only when a whole
    word is in view, which keeps streaming detections clean.
    """
    visible = int(clip.size * rng.uniform(0.1, 0.4))
    start = visible - clip.size if rng.integers(0, 2) == 0 else length - visible
    return _place_at(clip, length, start)


def _background(length: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 3)
    if kind == 0:  # near silence
        return rng.normal(0.0, rng.uniform(1e-4, 3e-3), length).astype(np.float32)
    if kind == 1:  # white noise
        return rng.normal(0.0, rng.uniform(0.01, 0.08), length).astype(np.float32)
    # brown-ish noise (integrated white noise), normalised
    walk = np.cumsum(rng.normal(0.0, 1.0, length))
    walk -= np.linspace(walk[0], walk[-1], length)
    walk /= max(1e-9, float(np.max(np.abs(walk))))
    return (walk * rng.uniform(0.02, 0.2)).astype(np.float32)


def make_keyword_dataset(
    folder: Path,
    words: Sequence[str] = KEYWORDS,
    n_per_word: int = 80,
    sample_rate: int = 16000,
    seed: int = 0,
    background_label: str = BACKGROUND_LABEL,
    workers: int = 4,
) -> Path:
    """Synthesise 1 s keyword clips with espeak-ng into ``folder/<word>/*.wav``.

    Each clip uses a voice, speed and pitch drawn from a fixed grid, a random
    time offset, a random gain and added noise at a random SNR. The background
    class gets ``2 * n_per_word`` clips: silence, white and brown noise, and
    windows that hold only the edge (10-40 %) of a word, as a sliding window
    on a stream sees just before and after a keyword.

    Raises:
        FileNotFoundError: espeak-ng is not installed.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, str, int, int]] = []
    for word in words:
        for _ in range(n_per_word):
            jobs.append((
                word,
                ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))],
                int(rng.integers(120, 220)),
                int(rng.integers(20, 80)),
            ))
    length = sample_rate
    spoken: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_speak, w, v, s, p, Path(tmp)) for w, v, s, p in jobs]
        for i, ((word, *_), future) in enumerate(zip(jobs, futures, strict=True)):
            samples, rate = future.result()
            clip = _trim(resample(samples, rate, sample_rate), sample_rate)[:length]
            peak = float(np.max(np.abs(clip))) or 1.0
            clip = clip / peak * rng.uniform(0.3, 0.9)
            spoken.append(clip)
            noise = _background(length, rng) * rng.uniform(0.1, 0.6)
            target = folder / word
            target.mkdir(parents=True, exist_ok=True)
            _write_wav(target / f"{i:05d}.wav", _place_word(clip, length, rng) + noise, sample_rate)
    target = folder / background_label
    target.mkdir(parents=True, exist_ok=True)
    for i in range(n_per_word):
        _write_wav(target / f"{i:05d}.wav", _background(length, rng), sample_rate)
    for i in range(n_per_word, 2 * n_per_word):
        clip = spoken[int(rng.integers(len(spoken)))]
        noise = _background(length, rng) * rng.uniform(0.1, 0.6)
        _write_wav(target / f"{i:05d}.wav", _place_partial(clip, length, rng) + noise, sample_rate)
    return folder


def load_keyword_features(folder: Path, spec: AudioPreprocess | None = None
                          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Log-mel features, integer labels and sorted class names of a WAV class folder."""
    spec = spec or keyword_preprocess()
    labels = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    features: list[np.ndarray] = []
    targets: list[int] = []
    for index, label in enumerate(labels):
        for path in sorted((Path(folder) / label).glob("*.wav")):
            samples, rate = read_wav(path)
            features.append(audio_features(resample(samples, rate, spec.sample_rate), spec))
            targets.append(index)
    return np.stack(features).astype(np.float32), np.asarray(targets, dtype=np.int64), labels
