"""The live preview of the real ``edge-agent run --preview`` on a video made with OpenCV: each HTTP
endpoint, the viewer limit, encoding only while watched, a real headless Chromium showing the
picture; and ``edge-fleet send DEV snapshot --output`` through a real Mosquitto."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.broker import Mosquitto, free_port
from edge_agent.agent.preview import BOUNDARY
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings
from tests.integration.agent_helpers import ROOT, agent_env
from tests.integration.mqtt_helpers import fleet_cli
from tests.tiny_store import make_bundle, shared

BLUE = (200, 40, 30)  # BGR: the colours model says "blue"
W, H = 320, 240


def _video(path: Path) -> Path:
    """20 frames of a blue scene with a white disc moving across (MJPG in AVI, written by OpenCV)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for i in range(20):
        image = np.full((H, W, 3), BLUE, np.uint8)
        cv2.circle(image, (40 + i * 10, 160), 20, (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("preview")
    bundle = shared("preview-colours", lambda d: make_bundle(d / "colours.bundle"))
    return bundle, _video(folder / "blue.avi")


class Agent:
    """``edge-agent run --preview`` in a child process (log in a file, killed at the end)."""

    def __init__(self, tmp: Path, bundle: Path, video: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = tmp / f"agent-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--bundle", str(bundle), "--source", str(video),
             "--loop", "--fps", "20", "--state-dir", str(tmp / f"state-{self.port}"),
             "--preview", str(self.port), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, cwd=ROOT, env=agent_env())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def results(self) -> dict[str, Any]:
        status, headers, body = self.get("/results.json")
        assert status == 200 and headers["content-type"] == "application/json"
        data: dict[str, Any] = json.loads(body)
        return data

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout  # bounds a hang only
        while True:
            assert self.proc.poll() is None, f"the agent ended: {self.log()}"
            try:
                data = self.results()
                if predicate(data):
                    return data
            except (ConnectionError, OSError):
                pass  # not listening yet
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start(scene: tuple[Path, Path], tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def run(*extra: str) -> Agent:
        agent = Agent(tmp_path, *scene, *extra)
        made.append(agent)
        return agent

    yield run
    for agent in made:
        agent.stop()


class Stream:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().strip()):
            key, _, value = line.decode().partition(":")
            self.headers[key.lower()] = value.strip()

    def frame(self) -> np.ndarray:
        assert self.file.readline() == f"--{BOUNDARY}\r\n".encode()
        headers = {}
        while (line := self.file.readline().strip()):
            key, _, value = line.decode().partition(":")
            headers[key.lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        body = self.file.read(int(headers["content-length"]))
        assert self.file.read(2) == b"\r\n"
        return _decode(body)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def _is_blue(pixel: np.ndarray) -> bool:
    return bool(np.abs(pixel.astype(int) - BLUE).max() < 25)


def test_preview_endpoints_limits_and_encoding_only_while_watched(start: Callable[..., Agent],
                                                                  tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[preview]\nmax_clients = 2\n")
    agent = start("--config", str(config))
    first = agent.wait_for(lambda d: d["latest"] is not None and d["health"]["frames_inferred"] >= 5, "results")
    assert first["latest"]["event_type"] == "classification"
    assert first["latest"]["result"]["classes"][0]["label"] == "blue"
    assert first["model"]["name"] == "colours" and first["health"]["source"]["type"] == "video"
    # inference goes on, nothing is encoded: nobody watches
    later = agent.wait_for(lambda d: d["health"]["frames_inferred"] >= first["health"]["frames_inferred"] + 10,
                           "more inferences")
    assert later["preview"] == {"viewers": 0, "max_clients": 2, "frames_encoded": 0, "clients_refused": 0}

    status, headers, page = agent.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<img id="live" src="/stream.mjpg"' in page and b'fetch("/results.json"' in page

    streams = [Stream(agent.port), Stream(agent.port)]
    for stream in streams:
        assert stream.status == 200
        assert stream.headers["content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        for _ in range(3):
            image = stream.frame()
            assert image.shape == (H, W, 3)
            assert _is_blue(image[60, 160])  # the scene
            assert not _is_blue(image[5, 5])  # the label drawn in the corner
    status, _, body = agent.get("/stream.mjpg")
    assert status == 503 and b"max_clients=2" in body
    watched = agent.results()["preview"]
    assert watched["viewers"] == 2 and watched["frames_encoded"] >= 3 and watched["clients_refused"] == 1

    status, headers, jpeg = agent.get("/snapshot.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert _decode(jpeg).shape == (H, W, 3)

    for stream in streams:
        stream.close()
    idle = agent.wait_for(lambda d: d["preview"]["viewers"] == 0, "the viewers to be noticed gone")
    after = agent.wait_for(
        lambda d: d["health"]["frames_inferred"] >= idle["health"]["frames_inferred"] + 10, "more inferences")
    assert after["preview"]["frames_encoded"] == idle["preview"]["frames_encoded"]
    assert agent.proc.poll() is None
    agent.proc.terminate()
    assert agent.proc.wait(30) == 0, agent.log()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/sysdeps)")
def test_chromium_shows_the_live_picture_and_the_results(start: Callable[..., Agent], tmp_path: Path) -> None:
    agent = start()
    agent.wait_for(lambda d: d["latest"] is not None, "a first result")
    shot = tmp_path / "preview.png"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=800,600",
               "--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'chromium'}"]
    url = f"http://127.0.0.1:{agent.port}/"
    done = subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 and shot.exists(), done.stderr.decode()[-2000:]
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (600, 800)
    # the picture fills the top of the page (4:3 in 800 wide, at most 80% of the height: 640x480)
    blue = np.all(np.abs(image.astype(int) - BLUE) < 40, axis=2)
    assert blue[:480].mean() > 0.5, f"only {blue[:480].mean():.0%} of the picture area shows the scene"
    assert blue[0:30, 80:200].mean() < 0.9  # the label box over the corner of the picture
    assert agent.results()["preview"]["frames_encoded"] >= 1  # the browser was a viewer

    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    assert "blue 1.00" in text and "model colours 1.0" in text, text[-1500:]


class HostileDevice:
    """Answers ``snapshot`` commands like a device would, with a picture chosen by the test."""

    def __init__(self, broker: str, device: str, picture: bytes) -> None:
        self.device, self.picture = device, picture
        self.link = MqttLink(MqttSettings(broker=broker, keepalive=5), f"hostile-{uuid.uuid4().hex[:8]}",
                             subscriptions=(f"edge/v1/{device}/cmd/+",))
        self.link.callbacks.on_message = self._on_command
        self.link.start()
        assert self.link.wait_connected(30)

    def _on_command(self, message: InboundMessage) -> None:
        cmd = json.loads(message.payload)
        root = f"edge/v1/{self.device}"
        self.link.publish(f"{root}/evt/snapshot", json.dumps({
            "cmd_id": cmd["id"], "format": "jpeg", "bytes": len(self.picture),
            "data_b64": base64.b64encode(self.picture).decode()}).encode())
        self.link.publish(f"{root}/ack", json.dumps({"id": cmd["id"], "status": "succeeded"}).encode())


def test_fleet_send_snapshot_output_saves_the_annotated_frame(start: Callable[..., Agent], tmp_path: Path,
                                                              mqtt_broker: Mosquitto, unique_id: str) -> None:
    agent = start("--broker", mqtt_broker.url, "--device-id", unique_id)
    agent.wait_for(lambda d: d["latest"] is not None, "a first result")
    url = ("--broker", mqtt_broker.url)
    # the inbox subscribes after the connection: ping until the device answers
    deadline = time.monotonic() + 60
    while fleet_cli("send", unique_id, "ping", *url, "--timeout", "5").returncode != 0:
        assert time.monotonic() < deadline, agent.log()

    pictures = {}
    for annotated in (True, False):
        out = tmp_path / f"snap-{annotated}.jpg"
        sent = fleet_cli("send", unique_id, "snapshot", *url, "--args", json.dumps({"annotated": annotated}),
                         "--output", str(out), "--timeout", "20")
        assert sent.returncode == 0, sent.stdout + sent.stderr + agent.log()
        assert json.loads(sent.stdout)["status"] == "succeeded"
        assert f"saved {W}x{H} JPEG to {out}" in sent.stderr
        pictures[annotated] = _decode(out.read_bytes())
    assert _is_blue(pictures[True][60, 160]) and _is_blue(pictures[False][60, 160])
    assert not _is_blue(pictures[True][5, 5]) and _is_blue(pictures[False][5, 5])  # the label: annotated only

    wrong = fleet_cli("send", unique_id, "ping", *url, "--output", str(tmp_path / "x.jpg"))
    assert wrong.returncode == 2 and "only the snapshot command" in wrong.stderr


def test_fleet_send_snapshot_refuses_a_hostile_picture(tmp_path: Path, mqtt_broker: Mosquitto,
                                                       unique_id: str) -> None:
    # a JPEG header declaring 65535 x 65535 pixels: whoever opens the file would allocate 12 GB
    bomb = b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9"
    device = HostileDevice(mqtt_broker.url, unique_id, bomb)
    try:
        out = tmp_path / "snap.jpg"
        sent = fleet_cli("send", unique_id, "snapshot", "--broker", mqtt_broker.url, "--output", str(out),
                         "--timeout", "20")
    finally:
        device.link.stop()
    assert sent.returncode == 2, sent.stdout + sent.stderr
    assert f"refusing the snapshot from {unique_id}, nothing written" in sent.stderr
    assert "65535x65535" in sent.stderr and not out.exists() and list(tmp_path.iterdir()) == []
