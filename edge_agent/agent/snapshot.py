"""The ``snapshot`` command's picture: the latest frame as a JPEG under a size cap."""

from __future__ import annotations

from typing import Any


def encode_jpeg(image: Any, max_bytes: int) -> bytes | None:
    """JPEG of ``image`` no larger than ``max_bytes`` (lower quality, then smaller size)."""
    import cv2

    current = image
    for _ in range(8):
        for quality in (85, 70, 50, 35):
            ok, data = cv2.imencode(".jpg", current, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(data) <= max_bytes:
                return bytes(data.tobytes())
        h, w = current.shape[:2]
        if h < 16 or w < 16:
            return None
        current = cv2.resize(current, (max(1, int(w * 0.7)), max(1, int(h * 0.7))), interpolation=cv2.INTER_AREA)
    return None
