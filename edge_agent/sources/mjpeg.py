"""MJPEG framing, bounded in bytes and time: multipart/x-mixed-replace parts or bare JPEGs
back to back, told apart by the content itself (a boundary line or a JPEG start marker),
so a camera with a wrong ``Content-Type`` or a command's stdout reads the same way.
"""

from __future__ import annotations

import io
import math
import re
import time
from typing import Any, Literal

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import SourceStallError, import_cv2
from edge_agent.sources.imagesize import check_image_size

MAX_PART_BYTES = 8 * 1024 * 1024  # default of source.max_part_bytes: the memory a server can make us hold
MAX_HEADER_LINES = 64  # part headers (and blank lines between parts)
MAX_LINE_BYTES = 8192  # one boundary or part header line
MAX_PREAMBLE_BYTES = 64 * 1024  # data a server may send before its first boundary line
MAX_GAP_BYTES = 4096  # blank bytes allowed before the first marker or between bare JPEGs
READ_CHUNK = 64 * 1024

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_BLANK = b" \t\r\n"

Framing = Literal["multipart", "jpeg", "other"]


def parse_boundary(content_type: str) -> bytes | None:
    """Boundary of a multipart content type (without the leading ``--``)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        return None
    boundary = match.group(1).strip().lstrip("-")
    return boundary.encode("latin-1") if boundary else None


def decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray:
    """A BGR image from one frame's bytes; SourceError when too large (by its header) or undecodable."""
    check_image_size(io.BytesIO(data), max_pixels, f"frame of {len(data)} bytes")
    cv2 = import_cv2()

    image: np.ndarray | None = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"undecodable image of {len(data)} bytes")
    return image


class MjpegReader:
    """Splits an MJPEG byte stream into its frames, bounded in bytes and time.

    With ``boundary`` (from a multipart Content-Type) the stream is multipart; without
    one the framing is recognised from the first bytes (:meth:`sniff`): a ``--name``
    line is a multipart boundary, a JPEG start marker starts bare JPEGs back to back
    (``ffmpeg -f mjpeg -``, ``rpicam-vid --codec mjpeg -o -``).

    ``stream`` needs ``read1`` (an ``http.client.HTTPResponse``, ``io.BytesIO`` or a
    pipe). Each limit raises :class:`SourceError` with a one-line reason; a frame that
    does not complete within ``stall_s`` raises :class:`SourceStallError`. ``scanned``
    counts the bytes examined for end markers: each byte once, plus one per read.
    """

    def __init__(self, stream: Any, boundary: bytes | None, stall_s: float | None = None,
                 max_part_bytes: int = MAX_PART_BYTES) -> None:
        self._stream = stream
        self._boundary = boundary.lstrip(b"-") if boundary else None
        self.framing: Framing | None = "multipart" if self._boundary else None
        self._stall_s = stall_s
        self._max_part = max_part_bytes
        self._deadline = math.inf
        self._buffer = bytearray()
        self._after_part = False  # past the preamble: only blank lines may precede a boundary
        self.scanned = 0

    def sniff(self) -> Framing:
        """The framing, read from the first non-blank bytes (nothing is consumed).

        Raises SourceError when the stream ends (or is only blanks) before any marker.
        """
        if self.framing is not None:
            return self.framing
        self._start_deadline()
        while True:
            start = len(self._buffer) - len(self._buffer.lstrip(_BLANK))
            head = bytes(self._buffer[start : start + 2])
            if len(head) == 2:
                break
            if start > MAX_GAP_BYTES:
                raise SourceError(f"MJPEG: only blank bytes in the first {MAX_GAP_BYTES} bytes")
            if not self._fill():
                raise SourceError("MJPEG: the stream ended before its first frame")
        if head == _SOI:
            self.framing = "jpeg"
        elif head == b"--":
            self._boundary = self._first_line_boundary(start)
            self.framing = "multipart" if self._boundary else "other"
        else:
            self.framing = "other"
        return self.framing

    def _first_line_boundary(self, start: int) -> bytes | None:
        """The boundary named by the ``--name`` line at ``start`` (read on until its newline)."""
        while (end := self._buffer.find(b"\n", start)) < 0:
            if len(self._buffer) - start > MAX_LINE_BYTES or not self._fill():
                return None
        name = bytes(self._buffer[start:end]).strip().lstrip(b"-")
        return name if name and len(name) <= 200 else None

    def read_part(self) -> bytes | None:
        """The next frame's bytes, or None when the stream ended between frames."""
        if self.framing is None and self.sniff() == "other":
            raise SourceError("MJPEG: the stream starts with neither a boundary line nor a JPEG start marker")
        self._start_deadline()
        if self.framing == "jpeg":
            return self._read_bare_jpeg()
        if not self._skip_to_boundary():
            return None
        length = self._read_headers()
        self._after_part = True
        if length is None:
            return self._read_to_end_of_image()
        while len(self._buffer) < length:
            if not self._fill():
                raise SourceError(
                    f"MJPEG: server closed the stream in the middle of a part ({len(self._buffer)} of {length} bytes)"
                )
        part = bytes(self._buffer[:length])
        del self._buffer[:length]
        return part

    def _start_deadline(self) -> None:
        if self._stall_s is not None:
            self._deadline = time.monotonic() + self._stall_s

    def _fill(self) -> bool:
        """Append what one read returns; False at the end of the stream."""
        if time.monotonic() > self._deadline:
            raise SourceStallError(f"MJPEG: no complete frame within {self._stall_s:g} s (server trickles or stalls)")
        chunk = self._stream.read1(READ_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _read_bare_jpeg(self) -> bytes | None:
        """One JPEG of a back-to-back sequence (a few blank bytes between them are tolerated)."""
        skipped = 0
        while True:
            blanks = len(self._buffer) - len(self._buffer.lstrip(_BLANK))
            del self._buffer[:blanks]
            skipped += blanks
            if skipped > MAX_GAP_BYTES:
                raise SourceError(f"MJPEG: more than {MAX_GAP_BYTES} blank bytes between two JPEGs")
            if len(self._buffer) >= 2:
                break
            if not self._fill():
                if self._buffer:
                    raise SourceError("MJPEG: the stream ended in the middle of a JPEG")
                return None
        if self._buffer[:2] != _SOI:
            raise SourceError("MJPEG: expected the next JPEG after a JPEG, got other data")
        return self._read_to_end_of_image()

    def _read_line(self, limit: int, too_long: str) -> bytes | None:
        """One line with its newline (at most ``limit`` bytes), or None at the end of the stream."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= limit or (end < 0 and len(self._buffer) >= limit):
                raise SourceError(too_long)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            start = len(self._buffer)
            if not self._fill():
                return None

    def _skip_to_boundary(self) -> bool:
        """Consume up to and including the next boundary line; False at the end of the stream."""
        assert self._boundary is not None
        preamble = MAX_PREAMBLE_BYTES
        blank_lines = 0
        while True:
            if self._after_part:
                line = self._read_line(MAX_LINE_BYTES, "MJPEG: expected the boundary after a part, got a long line")
            else:
                line = self._read_line(preamble, f"MJPEG: no boundary line in the first {MAX_PREAMBLE_BYTES} bytes")
            if line is None:
                return False
            core = line.strip()
            if core.startswith(b"--") and core.lstrip(b"-") in (self._boundary, self._boundary + b"--"):
                return core.lstrip(b"-") == self._boundary  # the closing boundary ends the stream
            if not self._after_part:
                preamble -= len(line)
            elif core:
                raise SourceError("MJPEG: expected the boundary after a part, got other data (wrong Content-Length?)")
            else:
                blank_lines += 1
                if blank_lines > MAX_HEADER_LINES:
                    raise SourceError(f"MJPEG: more than {MAX_HEADER_LINES} blank lines between parts")

    def _read_headers(self) -> int | None:
        """Part headers up to the blank line; returns the Content-Length, if any."""
        length: int | None = None
        for _ in range(MAX_HEADER_LINES):
            line = self._read_line(MAX_LINE_BYTES, f"MJPEG: part header line longer than {MAX_LINE_BYTES} bytes")
            if line is None:
                raise SourceError("MJPEG: server closed the stream in the middle of part headers")
            if not line.strip():
                return length
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                text = value.strip()
                if not re.fullmatch(r"[0-9]{1,12}", text):
                    raise SourceError(f"MJPEG: bad Content-Length {text[:20]!r}")
                length = int(text)
                if length > self._max_part:
                    raise SourceError(
                        f"MJPEG: part too large: {length} bytes, over the {self._max_part}-byte limit "
                        "(source.max_part_bytes)"
                    )
        raise SourceError(f"MJPEG: more than {MAX_HEADER_LINES} part headers")

    def _read_to_end_of_image(self) -> bytes:
        """A frame without Content-Length: up to the JPEG end-of-image marker.

        Each search covers only the bytes not searched yet, plus one for a marker
        split across two reads: linear in the frame's size, however it arrives.
        """
        start = 0
        while True:
            limit = min(len(self._buffer), self._max_part)
            end = self._buffer.find(_EOI, start, limit)
            self.scanned += limit - start
            if end >= 0:
                part = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 2]
                return part
            if limit >= self._max_part:
                raise SourceError(
                    f"MJPEG: part too large: no end marker in {self._max_part} bytes without Content-Length "
                    "(source.max_part_bytes)"
                )
            start = max(0, limit - 1)  # the marker may straddle two reads
            if not self._fill():
                raise SourceError("MJPEG: server closed the stream in the middle of a part")
