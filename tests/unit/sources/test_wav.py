"""WAV headers are checked before a sample is read; files are streamed in bounded chunks."""

from __future__ import annotations

import struct
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.preprocess import read_wav, resample
from edge_agent.sources.base import AudioWindow, SlidingWindower
from edge_agent.sources.wav import WavSource


def craft_wav(path: Path, rate: int, channels: int = 1, bits: int = 16, frames: int = 40000,
              declared_bytes: int | None = None) -> Path:
    """A PCM WAV written byte by byte, so its header can say what ``wave`` would refuse to write."""
    width = (bits + 7) // 8
    data = bytes(frames * channels * width)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * width) & 0xFFFFFFFF, channels * width, bits)
    size = len(data) if declared_bytes is None else declared_bytes
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def write_tone(path: Path, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return pcm


@pytest.mark.parametrize(("header", "reason"), [
    ({"rate": 0}, "sample rate 0 Hz is outside 8000..192000 Hz"),
    ({"rate": 1}, "sample rate 1 Hz is outside 8000..192000 Hz"),
    ({"rate": 4_000_000_000}, "sample rate 4000000000 Hz is outside"),
    ({"rate": 16000, "channels": 9}, "9 channels (1 to 8 supported)"),
    ({"rate": 16000, "bits": 64}, "samples of 8 bytes (1 to 4 supported)"),
])
def test_a_header_out_of_range_is_one_line_at_start(tmp_path: Path, header: dict[str, int], reason: str) -> None:
    path = craft_wav(tmp_path / "bad.wav", **header)
    source = WavSource([str(path)], 16000, 16000, 8000)
    with pytest.raises(SourceError) as info:
        source.start()
    message = str(info.value)
    assert reason in message and "bad.wav" in message and "ffmpeg" in message and "\n" not in message


def test_a_bad_second_file_is_one_line_when_reached_and_never_read(tmp_path: Path) -> None:
    good = craft_wav(tmp_path / "good.wav", 16000, frames=16000)
    bad = craft_wav(tmp_path / "bad.wav", 0)
    source = WavSource([str(good), str(bad)], 16000, 16000, 8000)
    source.start()
    assert isinstance(source.read(), AudioWindow)  # the good file first
    with pytest.raises(SourceError, match=r"bad\.wav: sample rate 0 Hz is outside"):
        source.read()


def drain(source: WavSource) -> list[AudioWindow]:
    items = []
    while (item := source.read()) is not None:
        assert isinstance(item, AudioWindow)
        items.append(item)
    return items


def test_streamed_windows_equal_those_of_the_whole_file(tmp_path: Path) -> None:
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    write_tone(first, 3.3, 44100)  # several chunks, resampled 44.1 -> 16 kHz
    write_tone(second, 1.2, 8000)
    source = WavSource([str(first), str(second)], 16000, 16000, 4000)
    source.start()
    got = drain(source)

    expected: list[tuple[float, np.ndarray]] = []
    offset = 0.0
    for path in (first, second):
        samples, rate = read_wav(path)
        samples = resample(samples, rate, 16000)
        windower = SlidingWindower(16000, 4000, 16000)
        expected += [(offset + t, w) for t, w in windower.push(samples) + windower.flush()]
        offset += samples.size / 16000
    assert [i.t_start_s for i in got] == [t for t, _ in expected]
    for item, (_, window) in zip(got, expected, strict=True):
        np.testing.assert_allclose(item.samples, window, atol=1e-6)


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    # 10 minutes at 8 kHz: 9.6 MB of PCM; read whole and resampled to 16 kHz it was
    # 38 MB of float32, and its overlapping windows twice that.
    path = craft_wav(tmp_path / "long.wav", 8000, frames=8000 * 600)
    source = WavSource([str(path)], 16000, 16000, 8000)
    tracemalloc.start()
    try:
        source.start()
        assert source.read() is not None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        source.close()
    assert peak < 4 * 1024 * 1024, peak


def test_a_data_size_larger_than_the_file_reads_what_is_there(tmp_path: Path) -> None:
    path = craft_wav(tmp_path / "short.wav", 16000, frames=20000, declared_bytes=0xFFFFFFF0)
    source = WavSource([str(path)], 16000, 16000, 8000)
    source.start()
    assert [i.t_start_s for i in drain(source)] == [0.0, 0.5]
