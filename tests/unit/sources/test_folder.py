"""An image folder refuses images whose header declares more pixels than allowed, undecoded."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SourceSection
from edge_agent.sources import Frame, create_source
from tests.integration.mjpeg import declare_size


def png_declaring(width: int, height: int) -> bytes:
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    data = bytearray(png.tobytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR (its CRC no longer matches: never decoded)
    return bytes(data)


def test_images_declaring_too_many_pixels_are_skipped_with_a_reason(tmp_path: Path) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))
    assert ok
    (tmp_path / "1-bomb.jpg").write_bytes(declare_size(bytes(jpeg.tobytes()), 20000, 20000))  # 1.2 GB decoded
    (tmp_path / "2-bomb.png").write_bytes(png_declaring(30000, 30000))
    cv2.imwrite(str(tmp_path / "3-good.png"), np.full((24, 32, 3), 90, np.uint8))
    (tmp_path / "4-text.jpg").write_text("not an image")
    source = create_source(SourceSection(uri=str(tmp_path)))
    source.start()
    frame = source.read()  # past both bombs
    assert isinstance(frame, Frame) and frame.image.shape == (24, 32, 3)
    state = source.state()
    assert state["errors"] == 2
    assert state["last_error"] == (
        "skipped 2-bomb.png: image of 30000x30000 is over the 16777216-pixel limit (source.max_image_pixels)")
    assert source.read() is None
    state = source.state()
    assert state["errors"] == 3 and state["state"] == "ended"
    assert state["last_error"].startswith("skipped 4-text.jpg is not an image in a known format")


def test_the_pixel_limit_is_configurable(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((80, 100, 3), np.uint8))
    source = create_source(SourceSection(uri=str(tmp_path), max_image_pixels=64 * 64))
    source.start()
    assert source.read() is None
    assert source.state()["last_error"] == (
        "skipped big.png: image of 100x80 is over the 4096-pixel limit (source.max_image_pixels)")
    source = create_source(SourceSection(uri=str(tmp_path), max_image_pixels=100 * 80))
    source.start()
    frame = source.read()
    assert isinstance(frame, Frame) and frame.image.shape == (80, 100, 3)


def test_each_image_carries_its_file_name(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.bmp"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 6, 3), np.uint8))
    source = create_source(SourceSection(uri=str(tmp_path)))
    source.start()
    frames = [source.read() for _ in range(3)]
    assert [f.file for f in frames if isinstance(f, Frame)] == ["a.jpg", "b.png", "c.bmp"]
    assert frames[0] is not None and isinstance(frames[0], Frame)
    assert frames[0].origin() == {"file": "a.jpg"} and frames[0].position_ms is None
