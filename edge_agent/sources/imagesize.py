"""Image dimensions read from a file's header, before anything is decoded.

A few hundred bytes can declare a 20000x20000 image, and OpenCV allocates the
whole of it (1.2 GB) before it finds the data missing. The sources read the size
here first and refuse what is over their pixel limit (:func:`check_image_size`).
Covers the formats the sources accept: JPEG, PNG, BMP, WebP, PNM and TIFF.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import BinaryIO, Literal

from edge_agent.errors import SourceError

FORMATS = "JPEG, PNG, BMP, WebP, PNM, TIFF"
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_JPEG_SEGMENTS = 256  # segments (and fill bytes) before the frame header; real files have a dozen
MAX_TIFF_ENTRIES = 4096

# JPEG markers without a length field, and the start-of-frame markers holding the image size.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

Size = tuple[int, int]  # (width, height)


def _jpeg(f: BinaryIO) -> Size | None:
    f.seek(2)
    for _ in range(MAX_JPEG_SEGMENTS):
        pair = f.read(2)
        if len(pair) < 2 or pair[0] != 0xFF:
            return None
        marker = pair[1]
        if marker == 0xFF:  # a fill byte: the marker follows it
            f.seek(-1, io.SEEK_CUR)
            continue
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        field = f.read(2)
        length = int.from_bytes(field, "big")
        if len(field) < 2 or length < 2:
            return None
        if marker in _SOF:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        f.seek(length - 2, io.SEEK_CUR)
    return None


def _png(f: BinaryIO) -> Size | None:
    head = f.read(24)
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _bmp(f: BinaryIO) -> Size | None:
    head = f.read(26)
    if len(head) < 26:
        return None
    if int.from_bytes(head[14:18], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
    width = int.from_bytes(head[18:22], "little", signed=True)
    height = int.from_bytes(head[22:26], "little", signed=True)  # negative: stored top-down
    return abs(width), abs(height)


def _webp(f: BinaryIO) -> Size | None:
    head = f.read(30)
    if len(head) < 30 or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


def _pnm(f: BinaryIO) -> Size | None:
    head = f.read(1024)
    text = re.sub(rb"#[^\n]*", b" ", head[2:])  # comments may sit between the fields
    fields = text.split(None, 2)
    if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    return int(fields[0]), int(fields[1])


def _tiff(f: BinaryIO) -> Size | None:
    order: Literal["little", "big"] = "little" if f.read(2) == b"II" else "big"
    f.seek(4)
    f.seek(int.from_bytes(f.read(4), order))
    count = int.from_bytes(f.read(2), order)
    if count > MAX_TIFF_ENTRIES:
        return None
    found: dict[int, int] = {}
    for _ in range(count):
        entry = f.read(12)
        if len(entry) < 12:
            return None
        tag, kind = int.from_bytes(entry[0:2], order), int.from_bytes(entry[2:4], order)
        if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength as SHORT or LONG
            found[tag] = int.from_bytes(entry[8:10] if kind == 3 else entry[8:12], order)
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


_MAGIC: tuple[tuple[bytes, Callable[[BinaryIO], Size | None]], ...] = (
    (b"\xff\xd8", _jpeg),
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"BM", _bmp),
    (b"RIFF", _webp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    *((b"P%d" % n, _pnm) for n in range(1, 7)),
)


def image_size(f: BinaryIO) -> Size | None:
    """(width, height) from the header of the image in ``f`` (seekable); None when not found.

    None means: not one of the formats above, or a header too damaged to read.
    """
    head = f.read(8)
    for magic, parse in _MAGIC:
        if head.startswith(magic):
            f.seek(0)
            try:
                return parse(f)
            except (OSError, ValueError):  # a seek before the start, or an offset past any file
                return None
    return None


def check_image_size(f: BinaryIO, max_pixels: int, what: str) -> Size:
    """The image's size when it is within ``max_pixels``; SourceError naming ``what`` otherwise."""
    size = image_size(f)
    if size is None:
        raise SourceError(f"{what} is not an image in a known format ({FORMATS}) or its header is damaged")
    width, height = size
    if width * height > max_pixels:
        raise SourceError(
            f"{what}: image of {width}x{height} is over the {max_pixels}-pixel limit (source.max_image_pixels)"
        )
    if width == 0 or height == 0:
        raise SourceError(f"{what}: image of {width}x{height} pixels is empty")
    return size
