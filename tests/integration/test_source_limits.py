"""Hostile source input through the real agent: one line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tflite_builders as tb
from tests.integration.agent_helpers import run_agent
from tests.unit.sources.test_wav import craft_wav

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("rate", [0, 1])
def test_a_wav_header_with_an_absurd_rate_is_one_line(tmp_path: Path, rate: int) -> None:
    # Before: rate 0 raised ZeroDivisionError; rate 1 resampled 40 000 frames to 640 M samples (5 GB).
    model = tmp_path / "updown.tflite"
    model.write_bytes(tb.audio_classifier(samples=1600, rate=16000))
    wav = craft_wav(tmp_path / "odd.wav", rate)
    code, messages, stderr = run_agent("--bundle", model, "--source", wav, "--state-dir", tmp_path / "state")
    assert code == 2 and messages == []
    lines = stderr.strip().splitlines()
    assert lines == [f"edge-agent: error: WAV file {wav}: sample rate {rate} Hz is outside 8000..192000 Hz; "
                     "convert it, e.g. `ffmpeg -i IN -ar 16000 -ac 1 -sample_fmt s16 OUT.wav`"], stderr
