"""Image sizes read from headers, so a tiny file declaring a huge image is refused undecoded."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.sources.imagesize import check_image_size, image_size
from tests.integration.mjpeg import declare_size


def encode(ext: str, width: int = 37, height: int = 23, params: list[int] | None = None) -> bytes:
    shape = (height, width) if ext == ".pgm" else (height, width, 3)
    image = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
    ok, data = cv2.imencode(ext, image, params or [])
    assert ok
    return bytes(data.tobytes())


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tiff"])
def test_size_of_every_format_the_sources_accept(ext: str) -> None:
    assert image_size(io.BytesIO(encode(ext))) == (37, 23)


def test_lossless_webp_and_a_jpeg_with_comments_fill_bytes_and_exif() -> None:
    assert image_size(io.BytesIO(encode(".webp", params=[cv2.IMWRITE_WEBP_QUALITY, 101]))) == (37, 23)
    jpeg = encode(".jpg")
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 60000) + b"Exif\x00\x00" + bytes(59994)
    padded = jpeg[:2] + app1 + b"\xff\xfe\x00\x05hi!" + b"\xff\xff\xff" + jpeg[2:]
    assert image_size(io.BytesIO(padded)) == (37, 23)
    assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR).shape == (23, 37, 3)


def test_pnm_with_a_comment_and_a_big_endian_tiff() -> None:
    assert image_size(io.BytesIO(b"P5\n# made by hand\n640 480\n255\n" + bytes(10))) == (640, 480)
    entries = struct.pack(">HHII", 256, 4, 1, 70000) + struct.pack(">HHIHH", 257, 3, 1, 9, 0)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries
    assert image_size(io.BytesIO(tiff)) == (70000, 9)


@pytest.mark.parametrize("data", [
    b"", b"GIF89a....", b"\xff\xd8junk", b"\xff\xd8" + b"\xff" * 100000, b"\xff\xd8\xff\xda\x00\x08",
    b"\x89PNG\r\n\x1a\n\x00\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00\xff\xff\xff\xff",
    b"P6 12", b"BM\x00",
])
def test_unknown_or_damaged_headers_give_none(data: bytes) -> None:
    assert image_size(io.BytesIO(data)) is None


def test_a_huge_declared_image_is_refused_before_decoding() -> None:
    bomb = declare_size(encode(".jpg"), 20000, 20000)
    with pytest.raises(SourceError, match=r"part: image of 20000x20000 is over the 16777216-pixel limit"):
        check_image_size(io.BytesIO(bomb), 4096 * 4096, "part")
    assert check_image_size(io.BytesIO(bomb), 20000 * 20000, "part") == (20000, 20000)
    with pytest.raises(SourceError, match="not an image in a known format"):
        check_image_size(io.BytesIO(b"<html>"), 100, "x.jpg")
