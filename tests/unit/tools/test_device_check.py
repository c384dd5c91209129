"""The pieces of `make device-check` that run on the host (the box itself needs root and nspawn)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import load_config
from tools.device_check.artefacts import agent_config, reuse_pi_artefacts
from tools.device_check.camera import BOUNDARY, Camera
from tools.device_check.checks import _missing
from tools.device_check.watch import Seen
from tools.pi_check.host import BUNDLE, VIDEO


def test_the_device_config_is_one_the_agent_accepts(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(agent_config("box1-cam1", 1883, "http://127.0.0.1:8080/stream.mjpg"))
    config = load_config(path)
    assert config.device_id == "box1-cam1"
    assert config.mqtt.broker == "mqtt://127.0.0.1:1883"
    assert config.source.uri == "http://127.0.0.1:8080/stream.mjpg" and config.source.type == "stream"
    assert config.model.latency_budget_ms == 1000


def test_the_camera_serves_multipart_jpeg() -> None:
    frame = cv2.imencode(".jpg", np.full((24, 32, 3), 200, np.uint8))[1].tobytes()
    camera = Camera([frame], fps=50).start()
    try:
        with urllib.request.urlopen(camera.url, timeout=30) as response:
            assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            data = b""
            while data.count(b"\xff\xd9") < 2:
                data += response.read1(65536)
        part = data.split(b"\r\n\r\n", 1)[1]
        image = cv2.imdecode(np.frombuffer(part[: len(frame)], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (24, 32, 3)
    finally:
        camera.close()


def _seen(*seqs: int) -> list[Seen]:
    return [Seen("edge/v1/box1/evt/classification", {"seq": n}, False, 0.0) for n in seqs]


def test_missing_names_every_lost_number_in_the_window() -> None:
    assert _missing(_seen(3, 4, 6, 9), 2, 6) == [5]
    assert _missing(_seen(3, 4, 5, 6), 2, 6) == []
    assert _missing(_seen(), 2, 4) == [3, 4]
    assert _missing(_seen(1, 2), 2, 2) == []  # an empty window loses nothing


def test_pi_checks_artefacts_are_reused_only_when_complete(tmp_path: Path) -> None:
    pi = tmp_path / "bundle-key"
    (pi / "digits").mkdir(parents=True)
    (pi / "digits" / "digits.keras").write_bytes(b"model")
    (pi / BUNDLE).write_bytes(b"bundle")
    out = tmp_path / "out"
    out.mkdir()
    assert not reuse_pi_artefacts(None, out)
    assert not reuse_pi_artefacts(pi, out), "no video yet: pi-check's folder is incomplete"
    assert list(out.iterdir()) == []
    (pi / VIDEO).write_bytes(b"video")
    assert reuse_pi_artefacts(pi, out)
    assert (out / BUNDLE).read_bytes() == b"bundle" and (out / VIDEO).read_bytes() == b"video"
    assert (out / "digits" / "digits.keras").read_bytes() == b"model"
