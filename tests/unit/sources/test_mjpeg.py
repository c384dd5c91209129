"""MJPEG framing told by the content: boundary lines, bare JPEGs back to back, and neither."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.sources.mjpeg import MAX_GAP_BYTES, MjpegReader, decode_jpeg


def jpeg(value: int) -> bytes:
    _ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))
    return bytes(data.tobytes())


def reader(data: bytes, boundary: bytes | None = None) -> MjpegReader:
    return MjpegReader(io.BytesIO(data), boundary)


def test_boundary_is_learnt_from_the_first_line() -> None:
    a, b = jpeg(10), jpeg(200)
    body = b"".join(b"--ffmpeg\r\nContent-type: image/jpeg\r\nContent-length: %d\r\n\r\n%s\r\n" % (len(p), p)
                    for p in (a, b))
    mjpeg = reader(b"\r\n" + body)
    assert mjpeg.sniff() == "multipart"
    assert [mjpeg.read_part(), mjpeg.read_part(), mjpeg.read_part()] == [a, b, None]


def test_bare_jpegs_back_to_back_with_blanks_between() -> None:
    a, b = jpeg(10), jpeg(200)
    mjpeg = reader(a + b + b"\r\n" + a)
    assert [mjpeg.read_part() for _ in range(4)] == [a, b, a, None]
    assert mjpeg.framing == "jpeg"
    assert int(decode_jpeg(b, 64).mean()) in range(195, 206)


@pytest.mark.parametrize(("data", "reason"), [
    (b"<html>login</html>", "neither a boundary line nor a JPEG start marker"),
    (b"", "ended before its first frame"),
    (b"\n" * (MAX_GAP_BYTES + 10), "only blank bytes"),
    (jpeg(1) + b"garbage", "expected the next JPEG after a JPEG"),
    (jpeg(1) + b" " * (MAX_GAP_BYTES + 10) + jpeg(1), f"more than {MAX_GAP_BYTES} blank bytes"),
    (jpeg(1)[:-10], "in the middle of a part"),
])
def test_what_is_not_mjpeg_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    mjpeg = reader(data)
    with pytest.raises(SourceError, match=reason):
        for _ in range(3):
            mjpeg.read_part()


def test_sniff_consumes_nothing_and_says_other_for_html() -> None:
    mjpeg = reader(b"<html>")
    assert mjpeg.sniff() == "other" and mjpeg.sniff() == "other"
    declared = reader(b"--x\r\n\r\n" + jpeg(5) + b"\r\n", b"x")  # boundary from Content-Type: no sniffing
    assert declared.sniff() == "multipart" and declared.read_part() == jpeg(5)
