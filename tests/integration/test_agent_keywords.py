"""The converter's keyword bundle on spoken words (espeak-ng) separated by silence."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from edge_agent.preprocess import read_wav, resample
from tests.integration.agent_helpers import events, run_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
]

WORDS = ["down", "left", "no", "right", "up", "left", "down"]
RATE = 16000


def speak_sentence(words: list[str], path: Path, period_s: float = 1.5, offset_s: float = 0.55) -> Path:
    """Words spoken by espeak-ng, one every ``period_s`` seconds, low noise in between."""
    rng = np.random.default_rng(3)
    signal = np.zeros(int(RATE * (offset_s + period_s * len(words) + 1.0)), np.float32)
    for k, word in enumerate(words):
        clip_path = path.parent / f"{word}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(clip_path), word], check=True,
                       capture_output=True, timeout=30)
        clip, rate = read_wav(clip_path)
        clip = resample(clip, rate, RATE)
        clip = clip / float(np.max(np.abs(clip))) * 0.6
        start = int(RATE * (offset_s + k * period_s))
        signal[start : start + clip.size] += clip
    signal += rng.normal(0.0, 0.002, signal.size).astype(np.float32)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_words_reported_in_order_once_each(keyword_bundle: Path, tmp_path: Path) -> None:
    wav = speak_sentence(WORDS, tmp_path / "sentence.wav")
    code, messages, stderr = run_agent("--bundle", keyword_bundle, "--source", wav, "--state-dir", tmp_path)
    assert code == 0, stderr
    found = events(messages, "evt/audio")
    assert [e["label"] for e in found] == WORDS
    starts = [e["t_start_s"] for e in found]
    for k, t in enumerate(starts):  # each event's window contains its word's onset
        onset = 0.55 + 1.5 * k
        assert t <= onset + 0.1 and t + 1.0 >= onset
    for event in found:
        assert event["classes"][0]["label"] == event["label"]
        assert "_background" not in [c["label"] for c in event["classes"]]

    # The same audio as raw PCM on stdin (as from `arecord -f S16_LE -r 16000 -c 1`).
    samples, _ = read_wav(wav)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    code, messages, stderr = run_agent("--bundle", keyword_bundle, "--source", "-", "--sample-rate", "16000",
                                       "--state-dir", tmp_path, stdin=pcm)
    assert code == 0, stderr
    assert [e["label"] for e in events(messages, "evt/audio")] == WORDS


def test_silence_and_noise_give_no_events(keyword_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = np.concatenate([np.zeros(RATE * 2), rng.normal(0, 0.03, RATE * 3)]).astype(np.float32)
    path = tmp_path / "noise.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes((noise * 32767).astype("<i2").tobytes())
    code, messages, stderr = run_agent("--bundle", keyword_bundle, "--source", path, "--state-dir", tmp_path)
    assert code == 0, stderr
    assert events(messages, "evt/audio") == []
    assert events(messages, "health")[-1]["frames_inferred"] >= 16


def test_source_failure_mid_run_is_reported_with_nonzero_exit(keyword_bundle: Path, tmp_path: Path) -> None:
    good = speak_sentence(WORDS[:2], tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF garbage")
    code, messages, stderr = run_agent("--bundle", keyword_bundle, "--source", f"{good},{bad}",
                                       "--state-dir", tmp_path)
    assert code == 1
    assert [e["label"] for e in events(messages, "evt/audio")] == WORDS[:2]  # the good file was analysed
    assert "source error" in stderr and "bad.wav" in stderr and "Traceback" not in stderr
