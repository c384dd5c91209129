"""The agent end to end with small real TFLite models (built once per session in a child process)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.messaging.publishers import Publisher
from edge_agent.model.bundle import extract_bundle, read_bundle, write_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.model.loader import load_model
from tests.integration.agent_helpers import ROOT, LiveAgent, agent_env, events, run_agent
from tests.integration.mjpeg import MjpegServer

pytestmark = pytest.mark.integration

COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}


@pytest.fixture(scope="module")
def models(agent_models_dir: Path) -> Path:
    """The hand-built agent models (built once per session, see tests/fixtures_models.py)."""
    return agent_models_dir


def make_bundle(models: Path, out: Path, version: str = "1", sign_key: Path | None = None) -> Path:
    """A real bundle around the float colours model (manifest from its sidecar)."""
    loaded = load_model(models / "colours.tflite")
    manifest = loaded.manifest.model_copy(update={"version": version})
    key = load_private_key(sign_key) if sign_key else None
    write_bundle(out, manifest, (models / "colours.tflite").read_bytes(),
                 {"labels.txt": b"red\ngreen\nblue\n"}, key)
    return out


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(["red", "red", "green", "blue", "blue", "red"]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), COLOURS_BGR[name], np.uint8))
    return folder


def top_labels(messages: list[dict[str, Any]], kind: str = "evt/classification") -> list[str]:
    return [p["classes"][0]["label"] for p in events(messages, kind)]


@pytest.mark.parametrize("model", ["colours.tflite", "colours_int8.tflite"])
def test_plain_tflite_with_sidecar_every_frame(models: Path, colour_folder: Path, tmp_path: Path,
                                               model: str) -> None:
    code, messages, stderr = run_agent("--bundle", models / model, "--source", colour_folder,
                                       "--events", "every", "--state-dir", tmp_path / "state",
                                       "--device-id", "cam-1")
    assert code == 0, stderr
    assert top_labels(messages) == ["red", "red", "green", "blue", "blue", "red"]
    first = messages[0]
    assert first["topic"] == "edge/v1/cam-1/status" and first["payload"]["state"] == "online"
    assert first["payload"]["model"]["name"] in ("colours", "colours-int8")
    evt = events(messages, "evt/classification")
    assert [e["frame"] for e in evt] == list(range(6))
    assert [e["seq"] for e in evt] == sorted(e["seq"] for e in evt)
    for key in ("device_id", "boot_id", "session", "seq", "ts_ms", "replayed", "latency_ms", "model_sha256"):
        assert key in evt[0]
    assert messages[-1]["payload"]["state"] == "offline"
    health = events(messages, "health")[-1]
    assert health["frames_inferred"] == 6 and health["frames_dropped"] == 0
    assert set(health["latency_ms"]) == {"capture", "preprocess", "invoke", "decode", "publish"}
    assert health["source"]["type"] == "folder"
    assert "6 inferred" in stderr and "source ended" in stderr


def test_change_policy_is_the_default(models: Path, colour_folder: Path, tmp_path: Path) -> None:
    code, messages, stderr = run_agent("--bundle", models / "colours.tflite", "--source", colour_folder,
                                       "--state-dir", tmp_path)
    assert code == 0, stderr
    assert top_labels(messages) == ["red", "green", "blue", "red"]


def test_bundle_installed_directory_and_signature(models: Path, colour_folder: Path, tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(private, public)
    bundle = make_bundle(models, tmp_path / "colours.bundle", sign_key=private)
    installed = tmp_path / "installed"
    installed.mkdir()
    extract_bundle(read_bundle(bundle), installed)
    for target in (bundle, installed):
        code, messages, stderr = run_agent("--bundle", target, "--source", colour_folder, "--events",
                                           "every", "--public-key", public, "--state-dir", tmp_path / "s")
        assert code == 0, stderr
        assert len(top_labels(messages)) == 6
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    generate_keypair(other_private, other_public)
    code, messages, stderr = run_agent("--bundle", bundle, "--source", colour_folder,
                                       "--public-key", other_public, "--state-dir", tmp_path / "s")
    assert code != 0 and messages == []
    assert "signature does not verify" in stderr and len(stderr.strip().splitlines()) == 1


def test_detection_finds_drawn_square_in_source_pixels(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    # 320x240 → 64x64: x scale 0.2, y scale 0.2667; squares chosen to land on the model's 4 px grid.
    boxes = [(80, 90, 160, 150), (200, 30, 280, 90)]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        img = np.full((240, 320, 3), 10, np.uint8)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), thickness=-1)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    code, messages, stderr = run_agent("--bundle", models / "squares.tflite", "--source", folder,
                                       "--events", "every", "--state-dir", tmp_path / "s")
    assert code == 0, stderr
    results = events(messages, "evt/detection")
    assert len(results) == 2
    for result, expected in zip(results, boxes, strict=True):
        assert len(result["detections"]) == 1
        det = result["detections"][0]
        assert det["label"] == "square" and det["score"] > 0.9
        assert det["box"] == pytest.approx(list(expected), abs=3.0)


def test_check_command(models: Path, tmp_path: Path) -> None:
    code, _, stderr = run_agent("--bundle", models / "colours.tflite", command="check")
    assert code == 0, stderr
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--bundle",
                           str(models / "colours_int8.tflite"), "--json", "--runs", "5"],
                          capture_output=True, text=True, env=agent_env(), cwd=str(ROOT), timeout=60,
                          check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["passed"] and report["latency_ms"] > 0


def test_config_file_and_config_errors(models: Path, colour_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "from-file"\nstate_dir = "{tmp_path / "st"}"\n[model]\nbundle = "{models / "colours.tflite"}"\n'
        f'[source]\nuri = "{colour_folder}"\n[events]\npolicy = "every"\n'
    )
    code, messages, stderr = run_agent("--config", config)
    assert code == 0, stderr
    assert messages[0]["topic"] == "edge/v1/from-file/status" and len(top_labels(messages)) == 6

    config.write_text('[model]\nthreds = 2\n')
    code, messages, stderr = run_agent("--config", config, "--source", colour_folder)
    assert code != 0 and messages == []
    assert stderr.strip().splitlines() == [f"edge-agent: error: {config}: unknown setting 'model.threds' "
                                           "(check the spelling; see the config reference)"]
    config.write_text('[health]\ninterval_s = "often"\n')
    code, _, stderr = run_agent("--config", config)
    assert code != 0 and "invalid 'health.interval_s'" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_agent("--events", "sometimes", "--bundle", models / "colours.tflite",
                                "--source", colour_folder)
    assert code != 0 and "events.policy" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["missing_bundle", "checksum", "unreadable_source", "not_a_video",
                                     "corrupt_mp4", "no_sidecar",
                                     "audio_source_for_image_model", "bad_delegate", "sidecar_size_mismatch"])
def test_clear_errors(models: Path, colour_folder: Path, tmp_path: Path, problem: str) -> None:
    bundle, source = models / "colours.tflite", str(colour_folder)
    expected, extra = "", []
    if problem == "missing_bundle":
        bundle, expected = tmp_path / "nope.bundle", "not found"
    elif problem == "checksum":
        good = make_bundle(models, tmp_path / "good.bundle")
        bundle = tmp_path / "tampered.bundle"
        buffer = io.BytesIO()
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(buffer, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "model.tflite":
                    data = data[:-1] + bytes([data[-1] ^ 1])
                dst.writestr(info.filename, data)
        bundle.write_bytes(buffer.getvalue())
        expected = "does not match the manifest sha256"
    elif problem == "unreadable_source":
        source = str(tmp_path / "missing.mp4")
        expected = "not found"
    elif problem == "not_a_video":  # OpenCV's own "[ WARN:0@…] global cap.cpp…" line must not show
        source, expected = str(ROOT / "README.md"), "not a video"
    elif problem == "corrupt_mp4":  # nor FFmpeg's "[mov,mp4,… @ 0x…] moov atom not found"
        (tmp_path / "broken.mp4").write_bytes(b"\0\0\0\x18ftypisom" + bytes(range(256)) * 4)
        source, expected = str(tmp_path / "broken.mp4"), "not a video"
    elif problem == "no_sidecar":
        bundle = tmp_path / "lonely.tflite"
        bundle.write_bytes((models / "colours.tflite").read_bytes())
        expected = "sidecar"
    elif problem == "sidecar_size_mismatch":
        bundle = tmp_path / "wrong.tflite"
        bundle.write_bytes((models / "colours.tflite").read_bytes())
        (tmp_path / "wrong.toml").write_text((models / "colours.toml").read_text().replace("width = 16", "width = 20"))
        expected = "fix the preprocess section"
    elif problem == "bad_delegate":
        extra, expected = ["--delegate", str(tmp_path / "libnope.so")], "cannot load delegate"
    else:
        source, expected = "clip.wav", "model takes images"
    code, messages, stderr = run_agent("--bundle", bundle, "--source", source, "--state-dir", tmp_path / "s", *extra)
    lines = stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error:") and expected in lines[0], stderr
    assert "Traceback" not in stderr
    assert not events(messages, "evt/classification")


def test_running_the_agent_never_imports_tensorflow_or_pydantic(
    models: Path, colour_folder: Path, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from edge_agent.cli.main import main\n"
        f"code = main(['run', '--bundle', {str(models / 'colours_int8.tflite')!r}, '--source', "
        f"{str(colour_folder)!r}, '--state-dir', {str(tmp_path)!r}])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'converter', 'pydantic'))\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
        "sys.exit(code or (1 if bad else 0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=agent_env(),
                          cwd=str(ROOT), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stderr


def test_mjpeg_stream_reconnects_and_reports_state(models: Path, tmp_path: Path) -> None:
    colour = {"bgr": COLOURS_BGR["red"]}
    server = MjpegServer(lambda i: np.full((60, 80, 3), colour["bgr"], np.uint8), fps=40)
    server.start()
    agent = LiveAgent("--bundle", models / "colours.tflite", "--source", server.url, "--events", "every",
                      "--health-interval", "0.2", "--state-dir", tmp_path, "--duration", "60")
    try:
        def is_result(label: str):  # type: ignore[no-untyped-def]
            return lambda m: m["topic"].endswith("evt/classification") and m["payload"]["classes"][0]["label"] == label

        first = agent.wait_for(is_result("red"), timeout=10)
        agent.wait_for(is_result("red"), start=first + 5, timeout=5)
        server.stop()
        down = agent.wait_for(lambda m: m["topic"].endswith("/health")
                              and m["payload"]["source"]["state"] == "reconnecting", timeout=10)
        colour["bgr"] = COLOURS_BGR["green"]
        server = MjpegServer(server.frame, port=server.port, fps=40)
        server.start()
        back = agent.wait_for(is_result("green"), start=down, timeout=15)
        health = agent.wait_for(lambda m: m["topic"].endswith("/health")
                                and m["payload"]["source"]["state"] == "connected", start=back, timeout=5)
        state = agent.messages[health]["payload"]["source"]
        assert state["reconnects"] >= 1 and state["type"] == "stream" and state["live"] is True
        agent.wait_for(is_result("green"), start=back + 5, timeout=5)
    finally:
        code = agent.finish(signal.SIGINT)
        server.stop()
    assert code == 0, agent.stderr
    assert "SIGINT" in agent.stderr and "inferred" in agent.stderr
    assert agent.messages[-1]["payload"]["state"] == "offline"


def test_sighup_swaps_the_model_without_restart(models: Path, colour_folder: Path, tmp_path: Path) -> None:
    v1 = make_bundle(models, tmp_path / "v1.bundle", version="1")
    v2 = make_bundle(models, tmp_path / "v2.bundle", version="2")
    current = tmp_path / "current.bundle"
    current.symlink_to(v1)
    agent = LiveAgent("--bundle", current, "--source", colour_folder, "--loop", "--fps", "50",
                      "--events", "every", "--state-dir", tmp_path / "s", "--duration", "60")
    try:
        agent.wait_for(lambda m: m["topic"].endswith("evt/classification"), timeout=10)
        tmp_link = tmp_path / "next.bundle"
        tmp_link.symlink_to(v2)
        os.replace(tmp_link, current)
        before = len(agent.messages)
        agent.send(signal.SIGHUP)
        i = agent.wait_for(
            lambda m: m["topic"].endswith("/status") and m["payload"].get("model", {}).get("version") == "2",
            start=before, timeout=10,
        )
        agent.wait_for(lambda m: m["topic"].endswith("evt/classification"), start=i, timeout=5)
    finally:
        code = agent.finish(signal.SIGTERM)
    assert code == 0, agent.stderr
    assert "SIGTERM" in agent.stderr
    frames = [p["frame"] for p in events(agent.messages, "evt/classification")]
    assert frames == sorted(frames)  # no restart: frame numbers keep counting up


def test_max_frames_and_fps_pacing_of_a_file(models: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(40):
        writer.write(np.full((48, 64, 3), COLOURS_BGR["red" if i < 20 else "blue"], np.uint8))
    writer.release()
    code, messages, stderr = run_agent("--bundle", models / "colours.tflite", "--source", clip,
                                       "--events", "every", "--state-dir", tmp_path, "--max-frames", "30")
    assert code == 0, stderr
    assert len(top_labels(messages)) == 30 and "max frames reached" in stderr
    code, messages, stderr = run_agent("--bundle", models / "colours.tflite", "--source", clip, "--fps", "100",
                                       "--events", "every", "--state-dir", tmp_path)
    assert code == 0, stderr
    labels = top_labels(messages)
    assert labels[0] == "red" and labels[-1] == "blue"
    health = events(messages, "health")[-1]
    assert health["frames_in"] == 40
    assert health["frames_inferred"] + health["frames_dropped"] == 40


class MemoryPublisher(Publisher):
    """Keeps every message (the registry entry for "stdout" is swapped for it)."""

    def __init__(self, **options: Any) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.started_with: Any = None

    def start(self, control: Any = None) -> None:
        self.started_with = control

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.messages.append((kind, payload))

    def stop(self, timeout: float = 5.0) -> None:
        self.messages.append(("status", {"state": "offline"}))

    def stats(self) -> dict[str, Any]:
        return {"outbox_depth": 0}

    @property
    def connected(self) -> bool:
        return True


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_agent_control_interface_in_process(models: Path, colour_folder: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError
    from edge_agent.messaging import publishers

    monkeypatch.setitem(publishers.PUBLISHERS, "stdout", MemoryPublisher)
    cli = {"model": {"bundle": models / "colours.tflite"}, "state_dir": tmp_path / "state",
           "source": {"uri": str(colour_folder), "loop": True, "fps": 50}, "health": {"interval_s": 60}}
    agent = Agent(load_config(None, cli, environ={}))
    agent.start()
    try:
        pub = agent.publisher
        assert isinstance(pub, MemoryPublisher) and pub.started_with is agent
        wait_until(lambda: agent.progress_counter >= 5)
        assert agent.is_healthy()
        assert (tmp_path / "state" / "agent.pid").read_text().split()[0] == str(os.getpid())  # for install-model
        info = agent.status_info()
        assert info["model"]["name"] == "colours" and info["config_version"] == 0 and "state" not in info
        assert pub.messages[0][0] == "status" and pub.messages[0][1]["state"] == "online"

        reported = agent.apply_config({"events": "every", "score_threshold": 0.2, "fps": 100,
                                       "health_interval_s": 0.1, "version": 7})
        assert reported == {"version": 7, "events": "every", "score_threshold": 0.2, "top_k": 3, "fps": 100,
                            "health_interval_s": 0.1}
        saved = json.loads((tmp_path / "state" / "config-overrides.json").read_text())
        assert saved["version"] == 7 and saved["settings"]["events"] == "every"
        with pytest.raises(ConfigError):
            agent.apply_config({"fps": -3})
        with pytest.raises(ConfigError):
            agent.apply_config({"model": "other"})
        assert agent.reported_config()["fps"] == 100  # unchanged by the refused changes

        count = len([m for m in pub.messages if m[0] == "evt/classification"])
        wait_until(lambda: len([m for m in pub.messages if m[0] == "evt/classification"]) >= count + 12)
        wait_until(lambda: any(m[0] == "health" for m in pub.messages))  # 0.1 s interval applied
        health = next(m[1] for m in pub.messages if m[0] == "health")
        assert health["outbox_depth"] == 0 and health["source"]["type"] == "folder"
        assert health["latency_ms"]["invoke"]["p95"] is not None and health["fps_inferred"] > 0

        jpeg = agent.snapshot_jpeg(20_000)
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8" and len(jpeg) <= 20_000
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (48, 64, 3)

        before = agent.progress_counter
        assert agent.reload_model()["name"] == "colours"
        wait_until(lambda: agent.progress_counter > before + 3)
        assert agent.health_extra()["config_version"] == 7
    finally:
        agent.request_stop("test")
        agent.stop()

    again = Agent(load_config(None, cli, environ={}))  # overrides survive a restart
    again.start()
    try:
        assert again.status_info()["config_version"] == 7 and again.reported_config()["events"] == "every"
    finally:
        again.request_stop("test")
        again.stop()


def test_reload_rereads_the_config_file(models: Path, colour_folder: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError
    from edge_agent.messaging import publishers

    monkeypatch.setitem(publishers.PUBLISHERS, "stdout", MemoryPublisher)
    path = tmp_path / "agent.toml"
    base = (f'state_dir = "{tmp_path / "state"}"\n[model]\nbundle = "{models / "colours.tflite"}"\n'
            f'[source]\nuri = "{colour_folder}"\nloop = true\nfps = 50\n')
    path.write_text(base + '[events]\npolicy = "change"\n')
    agent = Agent(load_config(path, environ={}), config_path=path)
    agent.start()
    try:
        assert agent.reported_config()["events"] == "change"
        path.write_text(base + '[events]\npolicy = "interval:0.5"\nscore_threshold = 0.3\n')
        agent.reload()
        assert agent.reported_config()["events"] == "interval:0.5"
        assert agent.reported_config()["score_threshold"] == 0.3
        path.write_text(base + '[events]\npolicy = "never"\n')
        with pytest.raises(ConfigError):
            agent.reload()
        assert agent.reported_config()["events"] == "interval:0.5"  # a bad file changes nothing
        wait_until(lambda: agent.progress_counter >= 3)
    finally:
        agent.request_stop("test")
        agent.stop()


def test_paced_file_drops_oldest_when_inference_is_slow(models: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent import tasks
    from edge_agent.agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.messaging import publishers
    from edge_agent.tasks.classify import ClassifyTask

    class SlowClassify(ClassifyTask):
        def decode(self, outputs, item, context):  # type: ignore[no-untyped-def]
            time.sleep(0.02)  # a 20 ms model
            return super().decode(outputs, item, context)

    monkeypatch.setitem(publishers.PUBLISHERS, "stdout", MemoryPublisher)
    monkeypatch.setitem(tasks.TASKS, "classify", SlowClassify)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(60):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((24, 32, 3), COLOURS_BGR["red"], np.uint8))
    cli = {"model": {"bundle": models / "colours.tflite"}, "state_dir": tmp_path / "state",
           "source": {"uri": str(folder), "fps": 200, "queue_size": 2}, "events": {"policy": "every"}}
    agent = Agent(load_config(None, cli, environ={}))
    agent.run()
    stats = agent.stats
    assert stats.frames_in == 60
    assert stats.frames_dropped > 20  # capture (200 fps) never waited for inference (50 fps)
    assert stats.frames_inferred + stats.frames_dropped == 60
    published = [p["frame"] for k, p in agent.publisher.messages if k == "evt/classification"]  # type: ignore[union-attr]
    assert published == sorted(published) and published[-1] == 59  # the newest frame is never dropped
