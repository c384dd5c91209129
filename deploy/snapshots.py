"""The picture a device sends for ``edge-fleet send DEV snapshot --output FILE``: checked as the
hostile input it may be (size, base64, JPEG header, declared pixels) before anything is written."""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

from edge_agent.errors import EdgeError
from edge_agent.remote.builtin import SNAPSHOT_MAX_BYTES
from edge_agent.sources.imagesize import image_size
from edge_agent.util.fs import atomic_write

SNAPSHOT_KIND = "evt/snapshot"
MAX_MESSAGE_BYTES = 256 * 1024  # the broker's max_packet_size in deploy/mosquitto
MAX_PIXELS = 16384 * 16384  # the largest frame an agent may be configured to take (source.max_image_pixels)


def snapshot_id(payload: bytes) -> str | None:
    """The ``cmd_id`` an ``evt/snapshot`` message answers, or None (not one, or too large to read)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    cmd_id = body.get("cmd_id") if isinstance(body, dict) else None
    return cmd_id if isinstance(cmd_id, str) else None


def decode_snapshot(payload: bytes) -> tuple[bytes, tuple[int, int]]:
    """The JPEG in an ``evt/snapshot`` message and its (width, height) from the JPEG header.

    Raises:
        EdgeError: the message is not a snapshot of at most SNAPSHOT_MAX_BYTES holding a JPEG
            image of at most MAX_PIXELS.
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        raise EdgeError(f"the snapshot message is {len(payload)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise EdgeError(f"the snapshot message is not JSON: {exc}") from None
    data_b64 = body.get("data_b64") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("format") != "jpeg" or not isinstance(data_b64, str):
        raise EdgeError("the snapshot message has no JPEG (format 'jpeg' and data_b64 expected)")
    if len(data_b64) > 4 * ((SNAPSHOT_MAX_BYTES + 2) // 3):
        raise EdgeError(f"the snapshot is over the {SNAPSHOT_MAX_BYTES}-byte limit")
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EdgeError(f"the snapshot's data_b64 is not base64: {exc}") from None
    if body.get("bytes") != len(data):
        raise EdgeError(f"the snapshot says {body.get('bytes')!r} bytes but holds {len(data)}")
    size = image_size(io.BytesIO(data)) if data.startswith(b"\xff\xd8\xff") else None
    if size is None:
        raise EdgeError("the snapshot is not a JPEG image (or its header is damaged)")
    width, height = size
    if not 0 < width * height <= MAX_PIXELS:
        raise EdgeError(f"the snapshot declares {width}x{height} pixels (1..{MAX_PIXELS} accepted)")
    return data, size


def save_snapshot(payload: bytes, path: Path) -> tuple[int, int]:
    """Check the message (:func:`decode_snapshot`) and write its JPEG to ``path`` atomically;
    returns the picture's (width, height).

    Raises:
        EdgeError: the message is refused (nothing written) or ``path`` cannot be written.
    """
    data, size = decode_snapshot(payload)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise EdgeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return size
