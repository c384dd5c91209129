"""The picture an operator saves with ``edge-fleet send DEV snapshot --output``: hostile messages
are refused with one line and nothing written."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.snapshots import MAX_MESSAGE_BYTES, decode_snapshot, save_snapshot, snapshot_id
from edge_agent.errors import EdgeError
from edge_agent.remote.builtin import SNAPSHOT_MAX_BYTES


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))
    assert ok
    return bytes(data.tobytes())


def _message(data: bytes, **override: Any) -> bytes:
    body = {"cmd_id": "c1", "format": "jpeg", "bytes": len(data), "annotated": True,
            "data_b64": base64.b64encode(data).decode(), **override}
    return json.dumps(body).encode()


def _huge_header_jpeg(w: int, h: int) -> bytes:
    """A JPEG header (SOI, SOF0) declaring w x h pixels and nothing to decode."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def test_a_good_snapshot_is_saved(tmp_path: Path) -> None:
    jpeg = _jpeg()
    out = tmp_path / "snap.jpg"
    assert save_snapshot(_message(jpeg), out) == (64, 48)
    assert out.read_bytes() == jpeg
    assert snapshot_id(_message(jpeg)) == "c1"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"x" * (MAX_MESSAGE_BYTES + 1), "over the"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "no JPEG"),
    (_message(_jpeg(), format="png"), "no JPEG"),
    (_message(_jpeg(), data_b64=7), "no JPEG"),
    (_message(_jpeg(), data_b64="A" * (4 * SNAPSHOT_MAX_BYTES // 3 + 8)), "over the"),
    (_message(_jpeg(), data_b64="!!!!"), "not base64"),
    (_message(_jpeg(), bytes=3), "says 3 bytes"),
    (_message(b"GIF89a" + b"\x00" * 40), "not a JPEG"),
    (_message(b"\xff\xd8\xff" + b"\x00" * 40), "not a JPEG"),
    (_message(_huge_header_jpeg(65535, 65535)), "declares 65535x65535"),
    (_message(_huge_header_jpeg(0, 10)), "declares 0x10"),
])
def test_hostile_snapshots_are_refused_and_nothing_is_written(tmp_path: Path, payload: bytes, reason: str) -> None:
    out = tmp_path / "snap.jpg"
    with pytest.raises(EdgeError, match=reason):
        save_snapshot(payload, out)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_id_reads_only_what_it_can() -> None:
    assert snapshot_id(b"x" * (MAX_MESSAGE_BYTES + 1)) is None
    assert snapshot_id(b"[") is None
    assert snapshot_id(b'{"cmd_id": 5}') is None
    assert snapshot_id(b'"c1"') is None


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match=r"cannot write .*missing"):
        save_snapshot(_message(_jpeg()), tmp_path / "missing" / "snap.jpg")
    assert decode_snapshot(_message(_jpeg()))[1] == (64, 48)
