"""``make demo``: the whole system end to end on this machine.

1. Train a CNN on real handwritten digits, convert it to a verified int8 bundle
   (report printed), and inspect it.
2. Sign the bundle with a fresh Ed25519 key and install it into a device's model
   store with the public key pinned (verify, smoke test in a child process, swap).
3. Start the shipped Mosquitto configuration (mutual TLS, per-device ACL) with a
   generated CA, a device certificate and an operator certificate.
4. Run ``edge-agent`` as device ``demo-pi`` on a video of held-out digits, over
   mqtts; an operator subscribes with ``mosquitto_sub`` and the agent's per-frame
   accuracy is compared with the converter's int8 figure.
5. ``edge-fleet status`` and ``edge-fleet send demo-pi ping``; the device's own
   Prometheus ``/metrics`` (``edge-agent run --metrics``) and the fleet exporter's
   (``edge-fleet exporter``); then a clean stop that leaves the retained status
   ``offline``, which ``edge-fleet status demo-pi`` reports with exit code 1.
6. A model from elsewhere: a small detector exported in Ultralytics' YOLOv8 int8
   layout (``[1, 4 + C, N]``) is recognised by ``edge-agent inspect``, given a
   starting sidecar, wrapped into a signed bundle with ``edge-convert wrap``,
   installed, and run on frames whose drawn boxes are known.

Everything runs on 127.0.0.1; outputs land in ``demo-out/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from converter.demo import DEMO_DIR, run_converter_demo
from deploy.broker import LocalPki, Mosquitto, free_port, make_pki, start_tls_broker

DEVICE = "demo-pi"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0 and check:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"demo: {Path(cmd[0]).name} failed with exit code {proc.returncode}")
    return proc


def render_test_video(path: Path) -> np.ndarray:
    """Held-out digits (the converter's validation split) as a lossless FFV1 video; returns labels."""
    from converter.examples import digits_split

    _, _, x_test, y_test = digits_split()
    height, width = x_test.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 30, (width * 2, height * 2))
    for image in x_test:
        big = cv2.resize(image, (width * 2, height * 2), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return y_test


def _tls_args(pki: LocalPki, name: str) -> list[str]:
    pair = pki.clients[name]
    return ["--ca-file", str(pki.ca.cert), "--cert-file", str(pair.cert), "--key-file", str(pair.key)]


def run_demo(out: Path = DEMO_DIR) -> int:
    out = out.resolve()
    started = time.perf_counter()
    bundle = run_converter_demo(out)
    report = json.loads((out / "digits.report.json").read_text())

    _banner("4 signing the bundle and installing it on the device (public key pinned)")
    keys = out / "keys"
    shutil.rmtree(keys, ignore_errors=True)
    keys.mkdir(parents=True)
    private, public = keys / "release.key", keys / "release.pub"
    _run([_tool("edge-deploy"), "keygen", "--private", str(private), "--public", str(public)])
    _run([_tool("edge-deploy"), "sign", str(bundle), "--key", str(private)])
    state = out / "device"
    shutil.rmtree(state, ignore_errors=True)
    _run([_tool("edge-agent"), "install-model", str(bundle), "--state-dir", str(state), "--public-key", str(public)])

    _banner("5 broker: the shipped Mosquitto config (mutual TLS, per-device ACL) on 127.0.0.1")
    broker_dir = out / "broker"
    shutil.rmtree(broker_dir, ignore_errors=True)
    broker_dir.mkdir(parents=True)
    pki = make_pki(broker_dir / "pki", [DEVICE, "fleet"])
    broker: Mosquitto = start_tls_broker(broker_dir, pki)
    print(f"broker {broker.url}, CA {pki.ca.cert}", flush=True)
    agent: subprocess.Popen[str] | None = None
    sub: subprocess.Popen[str] | None = None
    exporter: subprocess.Popen[str] | None = None
    try:
        video = out / "held-out-digits.mkv"
        labels = render_test_video(video)
        events_file = out / "events.jsonl"
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(pki.ca.cert),
             "--cert", str(pki.clients["fleet"].cert), "--key", str(pki.clients["fleet"].key),
             "-i", "demo-operator", "-q", "1", "-t", f"edge/v1/{DEVICE}/evt/#"],
            stdout=events_file.open("w"), stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        _banner(f"6 edge-agent run: device {DEVICE}, {len(labels)} frames of held-out digits over mqtts")
        preview, metrics, exporter_port = free_port(), free_port(), free_port()
        exporter = subprocess.Popen([_tool("edge-fleet"), "exporter", "--broker", broker.url,
                                     *_tls_args(pki, "fleet"), "--listen", f"127.0.0.1:{exporter_port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        agent_cmd = [_tool("edge-agent"), "run", "--state-dir", str(state), "--public-key", str(public),
                     "--source", str(video), "--fps", "40", "--events", "every", "--device-id", DEVICE,
                     "--health-interval", "1", "--broker", broker.url, *_tls_args(pki, DEVICE),
                     "--preview", f"127.0.0.1:{preview}", "--metrics", f"127.0.0.1:{metrics}"]
        print("$ edge-agent " + " ".join(agent_cmd[1:]), flush=True)
        agent = subprocess.Popen(agent_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        _banner("7 operator view while the device works")
        fleet = [_tool("edge-fleet")]
        # what the model sees, its answer drawn on it: the live preview page and an annotated snapshot
        with urllib.request.urlopen(f"http://127.0.0.1:{preview}/snapshot.jpg", timeout=10) as response:
            (out / "preview.jpg").write_bytes(response.read())
        print(f"live preview: http://127.0.0.1:{preview}/ (one frame saved to {out / 'preview.jpg'})", flush=True)
        _run([*fleet, "send", DEVICE, "snapshot", "--args", '{"annotated": true}', "--output",
              str(out / "snapshot.jpg"), "--broker", broker.url, *_tls_args(pki, "fleet")])
        _run([*fleet, "status", DEVICE, "--broker", broker.url, *_tls_args(pki, "fleet"), "--wait", "2"])
        _run([*fleet, "send", DEVICE, "ping", "--broker", broker.url, *_tls_args(pki, "fleet")])
        _show_metrics(f"http://127.0.0.1:{metrics}/metrics", "the device's own /metrics (edge-agent --metrics)",
                      ("edge_agent_frames_inferred_total", "edge_agent_inference_seconds_count",
                       "edge_agent_model_info", "edge_agent_results_total"))
        _show_metrics(f"http://127.0.0.1:{exporter_port}/metrics", "the fleet exporter (edge-fleet exporter)",
                      ("edge_device_up", "edge_device_fps_inferred", "edge_device_inference_p95_seconds",
                       "edge_fleet_messages_total", "edge_device_seq_gaps_total", "edge_device_duplicates_total"))
        agent.wait(timeout=120)
        agent_err = agent.stderr.read() if agent.stderr else ""
        if agent.returncode != 0:
            sys.stderr.write(agent_err[-3000:])
            raise SystemExit(f"demo: edge-agent failed with exit code {agent.returncode}")
        print(agent_err.strip()[-1500:], flush=True)
        time.sleep(1.0)
        sub.send_signal(signal.SIGINT)
        sub.wait(10)

        _banner("8 results as the operator received them")
        frames: dict[int, str] = {}
        last: dict[str, object] = {}
        for line in events_file.read_text().splitlines():
            payload = json.loads(line)
            if payload.get("classes"):
                frames[int(payload["frame"])] = payload["classes"][0]["label"]
                last = payload
        predicted = np.array([int(frames.get(i, -1)) for i in range(len(labels))])
        accuracy = float(np.mean(predicted == labels))
        print(f"events received: {len(frames)} of {len(labels)} frames; the last one came from "
              f"{last.get('position_ms')} ms (frame {last.get('position_frame')}) into the video")
        print(f"agent per-frame accuracy over MQTT: {accuracy:.2%}; converter int8 accuracy: "
              f"{report['accuracy_int8']:.2%}; float: {report['accuracy_float']:.2%}")
        # the device stopped cleanly: offline, so `status DEVICE` exits 1 (scripts can rely on it)
        gone = _run([*fleet, "status", DEVICE, "--broker", broker.url, *_tls_args(pki, "fleet"), "--wait", "1"],
                    check=False)
        print(f"edge-fleet status {DEVICE}: exit code {gone.returncode} (1: offline or stale)", flush=True)
        if gone.returncode != 1:
            raise SystemExit(f"demo: edge-fleet status exited {gone.returncode} for a stopped device, not 1")
    finally:
        for proc in (agent, sub, exporter):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        broker.stop()
    run_detector_demo(out, private, public)
    run_ladder_demo(out)
    print(f"\ndemo done in {time.perf_counter() - started:.0f} s; outputs in {out}/")
    return 0


def _show_metrics(url: str, title: str, names: tuple[str, ...]) -> None:
    """Print the samples of ``names`` from a Prometheus endpoint (what Prometheus would scrape)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    print(f"{title}: {url}", flush=True)
    for line in text.splitlines():
        if line.startswith(names) and not line.startswith("#"):
            print("  " + line, flush=True)


def _box_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def run_detector_demo(out: Path, private: Path, public: Path) -> None:
    """Stage 9: a third-party-layout detector through inspect, wrap, install and run."""
    _banner("9 a model from elsewhere: a detector in Ultralytics' YOLOv8 int8 layout")
    shapes = out / "shapes"
    shutil.rmtree(shapes, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    print("$ python -m converter.shapes (train a small shapes detector, export YOLO/SSD layouts)", flush=True)
    proc = subprocess.run([sys.executable, "-m", "converter.shapes", str(shapes)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"demo: the shapes detector failed to build (exit code {proc.returncode})")
    model = shapes / "shapes_v8_int8.tflite"
    (shapes / "shapes_v8_int8.toml").unlink()  # as it would arrive: a bare .tflite
    sidecar = shapes / "starter.toml"
    _run([_tool("edge-agent"), "inspect", str(model), "--write-sidecar", str(sidecar)])
    # The shapes tell the layout; the labels and the preprocessing are the user's to give.
    sidecar.write_text(
        'name = "shapes"\nversion = "1"\ntask = "detect"\nlabels = ["square", "circle"]\n'
        '[preprocess]\nkind = "image"\nwidth = 64\nheight = 64\ncolor = "rgb"\nresize = "letterbox"\n'
        'pad_value = 114\nstd = [255.0]\n[output]\ndetection_format = "yolo"\nscore_threshold = 0.5\n'
        'iou_threshold = 0.5\nmax_detections = 10\n')
    bundle = shapes / "shapes.bundle"
    _run([_tool("edge-convert"), "wrap", str(model), "--sidecar", str(sidecar), "--calibration",
          str(shapes / "test_images"), "--output", str(bundle), "--sign-key", str(private)])
    state = out / "device-detector"
    shutil.rmtree(state, ignore_errors=True)
    _run([_tool("edge-agent"), "install-model", str(bundle), "--state-dir", str(state), "--public-key", str(public)])
    cmd = [_tool("edge-agent"), "run", "--state-dir", str(state), "--public-key", str(public),
           "--source", str(shapes / "test_images"), "--events", "every", "--health-interval", "3600"]
    print("$ edge-agent " + " ".join(cmd[1:]), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-3000:])
        raise SystemExit(f"demo: edge-agent failed with exit code {run.returncode}")
    shown = 0
    truth = json.loads((shapes / "truth.json").read_text())
    files = sorted(truth)
    hits = 0
    for line in run.stdout.splitlines():
        message = json.loads(line)
        if not message["topic"].endswith("/evt/detection"):
            continue
        payload = message["payload"]
        if shown < 2:
            print(json.dumps(payload))
            shown += 1
        expected = truth[files[payload["frame"]]][0]
        best = payload["detections"][0] if payload["detections"] else None
        hits += bool(best and best["label"] == expected["label"] and _box_iou(best["box"], expected["box"]) >= 0.5)
    print(f"detections matching the drawn shape (label and IoU >= 0.5): {hits} of {len(files)} frames")


def run_ladder_demo(out: Path) -> None:
    """Stage 10: a model plain int8 wrecks, recovered by the converter's ladder at no cost."""
    _banner("10 a model plain int8 breaks: the recovery ladder (cross-layer equalisation, no training data)")
    info = json.loads((out / "digits" / "info.json").read_text())
    model = out / "digits_outlier.keras"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    print("$ python -m converter.examples outlier (one Dense unit x300, the next layer's weights /300: "
          "the same float function)", flush=True)
    proc = subprocess.run([sys.executable, "-m", "converter.examples", "outlier", "--model", info["models"]["keras"],
                           "--out", str(model)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"demo: building the outlier model failed (exit code {proc.returncode})")
    cmd = [_tool("edge-convert"), str(model), "--calibration", info["train"], "--validation", info["test"],
           "--output", str(out / "digits_outlier.bundle"), "--min-agreement", "0.99",
           "--report", str(out / "digits_outlier.report.json")]
    print("$ edge-convert " + " ".join(cmd[1:]), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = run.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("recovery ladder")), len(lines))
    print("\n".join(lines[start:]), flush=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-3000:])
        raise SystemExit(f"demo: edge-convert on the outlier model exited {run.returncode}")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
