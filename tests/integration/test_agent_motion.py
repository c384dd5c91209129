"""Motion gating and result origins through the real agent, on videos made with OpenCV: a still
scene with short bursts of a moving square, counted from the video's own timeline."""

from __future__ import annotations

import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import tflite_builders as tb
from tests.integration.agent_helpers import events, run_agent

pytestmark = pytest.mark.integration

FPS = 10
FRAMES = 100
BURSTS = (range(20, 25), range(60, 63))  # frames in which a white square crosses the picture
HOLD_S, MAX_INTERVAL_S = 0.5, 3.0


def still_scene_with_bursts(path: Path) -> Path:
    """A textured still background; in each burst a square moves 25 px a frame across it."""
    background = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8), (9, 9), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    for i in range(FRAMES):
        image = background.copy()
        for burst in BURSTS:
            if i in burst:
                x = 10 + 25 * (i - burst.start)
                cv2.rectangle(image, (x, 40), (x + 23, 69), (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return path


def expected_inferred() -> list[int]:
    """Frames to infer by the video's timeline: while moving and HOLD_S after, and every
    MAX_INTERVAL_S (the first frame too) — in frame counts, since frames are 1/FPS s apart."""
    moving = {i for burst in BURSTS for i in burst}
    hold, interval = round(HOLD_S * FPS), round(MAX_INTERVAL_S * FPS)
    out: list[int] = []
    last_motion = -10**9
    for i in range(FRAMES):
        if i in moving:
            last_motion = i
        if i - last_motion <= hold or not out or i - out[-1] >= interval:
            out.append(i)
    return out


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.image_classifier())
    return model


def test_motion_gating_infers_bursts_hold_and_max_interval_by_the_video_timeline(
        colours: Path, tmp_path: Path) -> None:
    clip = still_scene_with_bursts(tmp_path / "still.avi")
    config = tmp_path / "agent.toml"
    config.write_text(f"[motion]\nhold_s = {HOLD_S}\nmax_interval_s = {MAX_INTERVAL_S}\n")
    code, messages, stderr = run_agent("--bundle", colours, "--source", clip, "--events", "every", "--motion",
                                       "--config", config, "--state-dir", tmp_path / "state")
    assert code == 0, stderr
    results = events(messages, "evt/classification")
    expected = expected_inferred()
    assert expected == [0, *range(20, 30), 59, *range(60, 68), 97]  # the schedule, spelled out
    assert [r["position_frame"] for r in results] == expected
    assert [r["position_ms"] for r in results] == [i * 1000.0 / FPS for i in expected]
    health = events(messages, "health")[-1]
    assert health["frames_in"] == FRAMES and health["frames_inferred"] == len(expected)
    assert health["frames_skipped_motion"] == FRAMES - len(expected)
    assert f"{FRAMES - len(expected)} skipped (no motion)" in stderr

    # Without --motion every frame is inferred, each result with its place in the video.
    code, messages, stderr = run_agent("--bundle", colours, "--source", clip, "--events", "every",
                                       "--state-dir", tmp_path / "state")
    assert code == 0, stderr
    results = events(messages, "evt/classification")
    assert [r["position_frame"] for r in results] == list(range(FRAMES))
    assert [r["position_ms"] for r in results] == [i * 1000.0 / FPS for i in range(FRAMES)]
    assert "file" not in results[0]
    assert events(messages, "health")[-1]["frames_skipped_motion"] == 0


def test_folder_results_carry_the_file_name(colours: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["a-red.png", "b-green.jpg", "c-blue.png"]
    for name, bgr in zip(names, [(0, 0, 255), (0, 255, 0), (255, 0, 0)], strict=True):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), bgr, np.uint8))
    code, messages, stderr = run_agent("--bundle", colours, "--source", folder, "--events", "every",
                                       "--state-dir", tmp_path / "state")
    assert code == 0, stderr
    results = events(messages, "evt/classification")
    assert [r["file"] for r in results] == names
    assert [r["classes"][0]["label"] for r in results] == ["red", "green", "blue"]
    assert "position_ms" not in results[0]


def test_motion_gating_of_an_audio_source_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "updown.tflite"
    model.write_bytes(tb.audio_classifier(samples=1600, rate=16000))
    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(bytes(16000 * 2))
    code, messages, stderr = run_agent("--bundle", model, "--source", wav, "--motion",
                                       "--state-dir", tmp_path / "state")
    assert code == 2 and messages == []
    assert stderr.strip().splitlines() == ["edge-agent: error: motion gating needs pictures, but the wav source "
                                           "gives audio; drop --motion (motion.enabled)"], stderr
