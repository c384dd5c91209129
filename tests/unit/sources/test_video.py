"""A video file's frames carry their position on the video's own timeline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SourceSection
from edge_agent.sources import Frame, create_source


def write_clip(path: Path, frames: int, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
    for i in range(frames):
        writer.write(np.full((24, 32, 3), i * 20, np.uint8))
    writer.release()
    return path


def read_all(uri: Path, loop: bool = False, limit: int = 1000) -> list[Frame]:
    source = create_source(SourceSection(uri=str(uri), loop=loop))
    source.start()
    frames: list[Frame] = []
    while len(frames) < limit and (item := source.read()) is not None:
        assert isinstance(item, Frame)
        frames.append(item)
    source.close()
    return frames


def test_frames_carry_their_position_in_the_video(tmp_path: Path) -> None:
    frames = read_all(write_clip(tmp_path / "clip.avi", 12, fps=8))
    assert [f.position_frame for f in frames] == list(range(12))
    assert [f.position_ms for f in frames] == [i * 125.0 for i in range(12)]
    assert [f.timeline_s for f in frames] == [i * 0.125 for i in range(12)]
    assert frames[3].origin() == {"position_ms": 375.0, "position_frame": 3}


def test_a_looping_video_restarts_its_position(tmp_path: Path) -> None:
    frames = read_all(write_clip(tmp_path / "clip.avi", 5, fps=10), loop=True, limit=12)
    assert [f.index for f in frames] == list(range(12))  # the run's count goes on
    assert [f.position_frame for f in frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert [f.position_ms for f in frames][:7] == [0.0, 100.0, 200.0, 300.0, 400.0, 0.0, 100.0]
