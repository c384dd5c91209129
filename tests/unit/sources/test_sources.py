"""Capture sources against real files, pipes and a local HTTP server."""

from __future__ import annotations

import io
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import SourceSection
from edge_agent.errors import SourceError
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.sources import AudioWindow, Frame, create_source, detect_source_type
from edge_agent.sources.base import SlidingWindower
from edge_agent.sources.stdin import StdinPcmSource
from edge_agent.sources.stream import MjpegReader, parse_boundary
from edge_agent.util.backoff import Backoff
from tests.integration.mjpeg import MjpegServer

AUDIO = AudioPreprocess(sample_rate=16000, window_s=1.0, hop_s=0.5)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def drain(source, limit: int = 10000) -> list:  # type: ignore[no-untyped-def]
    items = []
    while len(items) < limit and (item := source.read()) is not None:
        items.append(item)
    return items


@pytest.mark.parametrize(
    ("uri", "kind"),
    [("0", "camera"), ("/dev/video2", "camera"), ("rtsp://cam/x", "stream"), ("http://h/s.mjpg", "stream"),
     ("-", "stdin"), ("stdin", "stdin"), ("mic", "mic"), ("mic:2", "mic"), ("a.wav", "wav"), ("a.wav,b.WAV", "wav"),
     ("clip.mp4", "video")],
)
def test_detect_source_type(uri: str, kind: str) -> None:
    assert detect_source_type(uri) == kind


def test_detect_folder(tmp_path: Path) -> None:
    assert detect_source_type(str(tmp_path)) == "folder"


def test_sliding_windower_windows_hops_and_tail() -> None:
    w = SlidingWindower(window=4, hop=2, sample_rate=2)
    out = w.push(np.arange(7, dtype=np.float32))
    assert [(t, list(x)) for t, x in out] == [(0.0, [0, 1, 2, 3]), (1.0, [2, 3, 4, 5])]
    [(t, tail)] = w.flush()
    assert t == 2.0 and list(tail) == [4, 5, 6, 0]
    assert w.flush() == []


def test_backoff_grows_and_is_capped() -> None:
    """The sources share the broker link's backoff (decorrelated jitter, edge_agent.util.backoff):
    every delay within [min, max], the first within [min, 3 × min], growing with failures, and
    back to the first window after a reset."""
    import itertools
    import random

    rng = random.Random(7)
    runs = []
    for _ in range(200):
        b = Backoff(0.5, 2.0, rng)
        delays = [b.next_delay() for _ in range(6)]
        assert 0.5 <= delays[0] <= 1.5 and all(0.5 <= d <= 2.0 for d in delays)
        assert all(d <= 3 * p + 1e-9 for p, d in itertools.pairwise(delays))
        b.reset()
        assert 0.5 <= b.next_delay() <= 1.5
        runs.append(delays)
    mean_first = sum(r[0] for r in runs) / len(runs)
    mean_fourth = sum(r[3] for r in runs) / len(runs)
    # Later attempts reach beyond the first window ([0.5, 1.5]) up to the cap.
    assert mean_fourth > mean_first + 0.1 and max(r[3] for r in runs) > 1.9


def test_wav_source_resamples_and_times_windows(tmp_path: Path) -> None:
    rate = 8000
    write_wav(tmp_path / "a.wav", np.zeros(rate * 2), rate)  # 2 s at 8 kHz
    write_wav(tmp_path / "b.wav", np.zeros(rate), rate)
    src = create_source(SourceSection(uri=f"{tmp_path / 'a.wav'},{tmp_path / 'b.wav'}"), AUDIO)
    src.start()
    items = drain(src)
    assert all(isinstance(i, AudioWindow) and i.samples.size == 16000 for i in items)
    # a.wav: windows at 0, 0.5, 1.0; b.wav (1 s) continues at 2.0
    assert [i.t_start_s for i in items] == [0.0, 0.5, 1.0, 2.0]
    assert [i.index for i in items] == [0, 1, 2, 3]


def test_wav_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        create_source(SourceSection(uri=str(tmp_path / "none.wav")), AUDIO).start()
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    src = create_source(SourceSection(uri=str(tmp_path / "bad.wav")), AUDIO)
    with pytest.raises(SourceError, match="not a PCM WAV"):
        src.start()
    write_wav(tmp_path / "good.wav", np.zeros(16000), 16000)
    src = create_source(SourceSection(uri=f"{tmp_path / 'good.wav'},{tmp_path / 'bad.wav'}"), AUDIO)
    src.start()
    assert isinstance(src.read(), AudioWindow)
    with pytest.raises(SourceError, match="not a PCM WAV"):
        drain(src)


def test_audio_source_needs_audio_model() -> None:
    with pytest.raises(SourceError, match="model takes images"):
        create_source(SourceSection(uri="x.wav"), None)
    with pytest.raises(SourceError, match="model takes audio"):
        create_source(SourceSection(uri="clip.mp4"), AUDIO)


def test_stdin_pcm_source_windows_a_pipe() -> None:
    tone = (0.5 * np.sin(np.arange(16000 * 2) / 5.0) * 32767).astype("<i2").tobytes()
    src = StdinPcmSource(16000, 16000, 16000, 8000, stream=io.BytesIO(tone))
    src.start()
    items = drain(src)
    assert [i.t_start_s for i in items] == [0.0, 0.5, 1.0]
    assert abs(float(items[0].samples.max()) - 0.5) < 0.01


def test_stdin_source_resamples_input_rate() -> None:
    pcm = np.zeros(8000, dtype="<i2").tobytes()  # 1 s at 8 kHz
    src = StdinPcmSource(8000, 16000, 16000, 8000, stream=io.BytesIO(pcm))
    items = drain(src)
    assert len(items) == 1 and items[0].samples.size == 16000


def test_microphone_without_sounddevice_is_a_clear_error() -> None:
    pytest.importorskip("numpy")
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        src = create_source(SourceSection(uri="mic"), AUDIO)
        with pytest.raises(SourceError, match="sounddevice"):
            src.start()
    else:
        pytest.skip("sounddevice is installed")


def test_folder_source_in_name_order_skipping_bad_files(tmp_path: Path) -> None:
    for i, value in enumerate((10, 20, 30)):
        cv2.imwrite(str(tmp_path / f"{2 - i}.png"), np.full((4, 6, 3), value, np.uint8))
    (tmp_path / "9.png").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("ignored")
    src = create_source(SourceSection(uri=str(tmp_path)))
    src.start()
    items = drain(src)
    assert [int(i.image[0, 0, 0]) for i in items] == [30, 20, 10]
    assert src.state()["errors"] == 1


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        create_source(SourceSection(uri=str(tmp_path))).start()


def test_video_file_every_frame_in_order(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(12):
        writer.write(np.full((24, 32, 3), i * 20, np.uint8))
    writer.release()
    src = create_source(SourceSection(uri=str(path)))
    src.start()
    items = drain(src)
    assert len(items) == 12 and all(isinstance(i, Frame) for i in items)
    assert [i.index for i in items] == list(range(12))
    assert [round(float(i.image.mean()) / 20) for i in items] == list(range(12))
    looped = create_source(SourceSection(uri=str(path), loop=True))
    looped.start()
    assert len(drain(looped, limit=30)) == 30


def test_unreadable_video_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        create_source(SourceSection(uri=str(tmp_path / "none.mp4"))).start()
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match=r"junk\.mp4"):
        create_source(SourceSection(uri=str(tmp_path / "junk.mp4"))).start()


def test_missing_camera_device_errors() -> None:
    with pytest.raises(SourceError, match="does not exist"):
        create_source(SourceSection(uri="/dev/video99")).start()


def test_mjpeg_part_parser_with_and_without_length() -> None:
    assert parse_boundary('multipart/x-mixed-replace; boundary="--myb"') == b"myb"
    assert parse_boundary("multipart/x-mixed-replace; boundary=--") is None
    assert parse_boundary("multipart/x-mixed-replace") is None
    jpeg = b"\xff\xd8hello\xff\xd9"
    with_len = b"--myb\r\nContent-Type: image/jpeg\r\nContent-Length: 9\r\n\r\n" + jpeg + b"\r\n"
    no_len = b"--myb\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n"
    reader = MjpegReader(io.BytesIO(with_len + no_len), b"myb")
    assert reader.read_part() == jpeg
    assert reader.read_part() == jpeg
    assert reader.read_part() is None


@pytest.mark.parametrize("with_length", [True, False])
def test_stream_source_reads_and_reconnects(with_length: bool) -> None:
    server = MjpegServer(lambda i: np.full((24, 32, 3), 200, np.uint8), fps=50, with_length=with_length)
    server.start()
    src = create_source(SourceSection(uri=server.url, reconnect_min_s=0.05, reconnect_max_s=0.2,
                                      read_timeout_s=1.0))
    assert src.live
    src.start()
    try:
        first = src.read()
        assert isinstance(first, Frame) and first.image.shape == (24, 32, 3)
        assert src.state()["state"] == "connected" and src.state()["mode"] == "mjpeg"
        server.stop()
        server2 = MjpegServer(lambda i: np.full((24, 32, 3), 50, np.uint8), port=server.port, fps=50)
        time.sleep(0.2)
        server2.start()
        deadline = time.monotonic() + 5
        frame = src.read()
        while frame is not None and frame.image.mean() > 100 and time.monotonic() < deadline:
            frame = src.read()
        assert frame is not None and frame.image.mean() < 100
        assert src.state()["reconnects"] >= 1
        server2.stop()
    finally:
        src.stop()
        src.close()
        server.stop()


def test_stream_source_keeps_retrying_while_down() -> None:
    from tests.integration.mjpeg import free_port

    src = create_source(SourceSection(uri=f"http://127.0.0.1:{free_port()}/x", reconnect_min_s=0.05,
                                      reconnect_max_s=0.1))
    src.start()
    import threading

    threading.Timer(0.4, src.stop).start()
    assert src.read() is None
    assert src.state()["state"] == "reconnecting" and src.state()["errors"] >= 2
    assert "127.0.0.1" in src.state()["last_error"]


def test_stream_source_polls_a_jpeg_snapshot_url() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    _ok, jpeg = cv2.imencode(".jpg", np.full((10, 12, 3), 99, np.uint8))
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(jpeg)))
            self.end_headers()
            self.wfile.write(jpeg.tobytes())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = create_source(SourceSection(uri=f"http://127.0.0.1:{server.server_address[1]}/snap.jpg"))
        src.start()
        frames = [src.read() for _ in range(3)]
        assert all(isinstance(f, Frame) and f.image.shape == (10, 12, 3) for f in frames)
        assert src.state()["mode"] == "snapshot" and len(hits) == 3
        src.close()
    finally:
        server.shutdown()
        server.server_close()
