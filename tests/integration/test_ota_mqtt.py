"""OTA end to end against the REAL agent: ``edge-agent run --state-dir S --public-key K --broker B``
(an installed model, a looping folder source), a real Mosquitto, bundles served over HTTP on
127.0.0.1, and signed ``update_model``/``rollback`` commands sent with the operator's tool
(``deploy.commands.send_command``, the code behind ``edge-fleet send --sign-key``).

What the agent serves is read from what it publishes: ``model_sha256`` (the weights) and
``manifest_sha256`` (the whole bundle) in its results, and its retained ``status`` (a fresh
subscriber gets it from the broker). The test bundles differ in their weights
(``deploy_helpers.repack``), except the manifest-only update, which only the bundle identity
tells apart.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.broker import Mosquitto
from deploy.commands import send_command
from edge_agent.messaging.link import MqttSettings
from edge_agent.model.bundle import read_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.model.loader import bundle_identity
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.remote import ota
from edge_agent.store import layout as store_layout
from edge_agent.util.fs import sha256_file
from tests import deploy_helpers
from tests.fixtures_mqtt import Collector
from tests.fixtures_ssh import BundleSet, DeployKeys
from tests.integration.agent_helpers import LiveAgent, run_agent

pytestmark = pytest.mark.integration

# Two float 16x16x1 classifiers that run their golden vectors (random inputs in [0, 1), mean
# about 0.5) fine and fast, so they pass install and smoke test, but misbehave on a white frame
# (every input 1.0), which is what the agent's source gives:
# - poison: the GATHER index floor(10 * max(input)) is out of bounds: every live inference fails;
# - slow: a WHILE loop runs 5 * SLOW_STEPS * relu(|mean - 0.5| - 0.3) times, 0 for the golden
#   vectors and SLOW_STEPS (hundreds of milliseconds) for a white frame, far over the 3 x 10 ms
#   latency budget the probation allows.
SLOW_STEPS = 6000
SLOW_BUDGET_MS = 10.0
_MODELS_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
poison_path, slow_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(7)
w = tf.constant(rng.normal(size=(256, 10)).astype(np.float32) / 16)
table = tf.constant(rng.normal(size=(10, 10)).astype(np.float32))
@tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 1], tf.float32)])
def poison(x):
    flat = tf.reshape(x, [1, 256])
    idx = tf.cast(tf.reduce_max(flat) * 10.0, tf.int32)
    return tf.nn.softmax(tf.matmul(flat, w) + tf.gather(table, tf.reshape(idx, [1])))
w_in = tf.constant(rng.normal(size=(256, 512)).astype(np.float32) / 16)
w_loop = tf.constant(rng.normal(size=(512, 512)).astype(np.float32) / 23)
w_out = tf.constant(rng.normal(size=(512, 10)).astype(np.float32) / 23)
@tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 1], tf.float32)])
def slow(x):
    flat = tf.reshape(x, [1, 256])
    n = tf.cast(tf.nn.relu(tf.abs(tf.reduce_mean(flat) - 0.5) - 0.3) * 5.0 * steps, tf.int32)
    h = tf.tile(tf.matmul(flat, w_in), [8, 1])
    _, h = tf.while_loop(lambda i, h: i < n, lambda i, h: (i + 1, tf.tanh(tf.matmul(h, w_loop))),
                         [tf.constant(0), h])
    return tf.nn.softmax(tf.matmul(h[:1], w_out))
for fn, path in ((poison, poison_path), (slow, slow_path)):
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    open(path, "wb").write(conv.convert())
"""

HANG_S = 60  # bounds a hang only


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("www-mqtt")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def ota_bundles(tmp_path_factory: pytest.TempPathFactory, deploy_keys: DeployKeys) -> dict[str, Path]:
    """``poison`` and ``slow`` (see above), signed with the deploy key."""
    base = tmp_path_factory.mktemp("ota-models")
    poison, slow = base / "poison.tflite", base / "slow.tflite"
    subprocess.run([sys.executable, "-c", _MODELS_SCRIPT, str(poison), str(slow), str(SLOW_STEPS)],
                   check=True, capture_output=True, timeout=300)
    key = load_private_key(deploy_keys.private)
    return {
        "poison": deploy_helpers.bundle_from_model(base / "poison.bundle", poison.read_bytes(), name="poison",
                                                   version="1.0.0", sign_key=key),
        "slow": deploy_helpers.bundle_from_model(base / "slow.bundle", slow.read_bytes(), name="slow",
                                                 version="1.0.0", sign_key=key, latency_budget_ms=SLOW_BUDGET_MS),
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """White frames: the poison and slow models cannot run them well; any real model can."""
    folder = tmp_path_factory.mktemp("ota-frames")
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 255, np.uint8))
    return folder


def _offer(web: tuple[Path, str], bundle: Path, **extra: Any) -> dict[str, Any]:
    shutil.copy(bundle, web[0] / bundle.name)
    return {"url": f"{web[1]}/{bundle.name}", "sha256": sha256_file(bundle),
            "size": bundle.stat().st_size, **extra}


def model_sha(bundle: Path) -> str:
    """The sha256 of the model inside a bundle (what results carry as ``model_sha256``)."""
    return read_bundle(bundle, require_signature=False).manifest.model.sha256


def identity(bundle: Path) -> str:
    """The bundle identity (what status and results carry as ``manifest_sha256``)."""
    return bundle_identity(read_bundle(bundle, require_signature=False).manifest_bytes)


class Device:
    """The real ``edge-agent run`` with a store, a pinned key and a broker; watched over MQTT."""

    def __init__(self, broker: Mosquitto, state: Path, device_id: str, key: Path, frames: Path,
                 collector: Collector, *extra: str | Path) -> None:
        self.broker, self.state, self.device_id = broker, state, device_id
        self.settings = MqttSettings.from_any(None, broker=broker.url, reconnect_max_s=2.0)
        self.col = collector
        self.agent = LiveAgent(
            "--state-dir", state, "--public-key", key, "--broker", broker.url, "--device-id", device_id,
            "--source", frames, "--loop", "--fps", "20", "--events", "every", "--health-interval", "1",
            "--keepalive", "5", *extra,
        )
        self.wait(lambda: len(self.results()) >= 3, 30, "no results from the agent")
        ack = send_command(self.settings, device_id, "ping", {}, timeout=10)  # subscribed to commands
        assert ack is not None and ack.get("status") == "succeeded", ack

    def results(self) -> list[dict[str, Any]]:
        return self.col.json("/evt/classification")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        if not self.col.wait(lambda: predicate() or self.agent.proc.poll() is not None, timeout) \
                or not predicate():
            code = self.agent.proc.poll()
            raise AssertionError(f"{what} (agent exit code {code}); stderr: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        if self.agent.proc.poll() is None:
            return "(agent running)"
        self.agent.finish()
        return self.agent.stderr[-3000:]

    def send(self, command: str, args: dict[str, Any], sign_key: Path | None, timeout: float = 20
             ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, float]:
        progress: list[dict[str, Any]] = []
        t0 = time.monotonic()
        final = send_command(self.settings, self.device_id, command, args, timeout=timeout,
                             sign_key=sign_key, on_ack=progress.append)
        return progress, final, time.monotonic() - t0

    def serving(self, bundle: Path, n: int = 5, timeout: float = 15) -> list[dict[str, Any]]:
        """The next ``n`` results come from this bundle (its weights and its manifest), the agent
        still runs, and the retained status names the same bundle. Returns those results."""
        start = len(self.results())
        self.wait(lambda: len(self.results()) >= start + n + 2, timeout, f"no new results from {bundle.name}")
        fresh = self.results()[start + 2:]  # +2: in flight before a swap
        assert {r["model_sha256"] for r in fresh} == {model_sha(bundle)}, fresh[-1]
        assert {r["manifest_sha256"] for r in fresh} == {identity(bundle)}, fresh[-1]
        status = self.retained_status()
        assert status["state"] == "online", status
        assert status["model"]["sha256"] == model_sha(bundle), status
        assert status["model"]["manifest_sha256"] == identity(bundle), status
        return fresh

    def retained_status(self) -> dict[str, Any]:
        """What a fresh subscriber gets: the broker's retained ``status`` of this device."""
        col = Collector(self.settings, (f"edge/v1/{self.device_id}/status",)).start()
        try:
            assert col.wait(lambda: bool(col.on("/status")), 5), "no retained status"
            message = col.on("/status")[0]
            assert message.retain
            body: dict[str, Any] = json.loads(message.payload)
            return body
        finally:
            col.stop()

    def health(self) -> dict[str, Any]:
        """The next health message."""
        start = len(self.col.json("/health"))
        self.wait(lambda: len(self.col.json("/health")) > start, 15, "no health message")
        return self.col.json("/health")[start]

    def store_active(self) -> str | None:
        model = store_layout.active_model(self.state)
        return model.sha256 if model else None

    def stop(self) -> None:
        code = self.agent.finish(signal.SIGTERM, timeout=15)
        assert code == 0, self.agent.stderr[-3000:]


@pytest.fixture
def device(mqtt_broker: Mosquitto, tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet,
           unique_id: str, frames: Path, collector_factory: Callable[..., Collector],
           request: pytest.FixtureRequest) -> Iterator[Device]:
    """The agent; a test marked ``agent_config(TEXT)`` runs it with ``--config`` holding TEXT."""
    extra: list[str | Path] = []
    marker = request.node.get_closest_marker("agent_config")
    if marker is not None:
        config = tmp_path / "agent.toml"
        config.write_text(marker.args[0].format(root=request.getfixturevalue("web")[0]))
        extra = ["--config", config]
    state = tmp_path / "state"
    state.mkdir()
    code, _, err = run_agent(test_bundles.good, "--state-dir", state, "--public-key", deploy_keys.public,
                             command="install-model", timeout=60)
    assert code == 0, err
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/#")
    dev = Device(mqtt_broker, state, unique_id, deploy_keys.public, frames, col, *extra)
    yield dev
    if dev.agent.proc.poll() is None:
        dev.agent.finish(signal.SIGKILL)


def test_update_success_downgrade_refused_signed_rollback(device: Device, web: tuple[Path, str],
                                                         test_bundles: BundleSet,
                                                         deploy_keys: DeployKeys) -> None:
    old, new = test_bundles.good, test_bundles.good_v2
    assert model_sha(old) != model_sha(new)  # else serving() could not tell them apart
    device.serving(old)
    progress, final, elapsed = device.send("update_model", _offer(web, new, probation_s=1.0),
                                           deploy_keys.private, timeout=30)
    assert final is not None and final["status"] == "succeeded", (progress, final, device.stderr_tail())
    assert [a["status"] for a in progress] == ["in_progress", "in_progress", "succeeded"], progress
    assert "probation" in progress[1]["reason"]
    assert final["result"]["active"]["sha256"] == model_sha(new)
    assert final["result"]["active"]["manifest_sha256"] == identity(new)
    assert device.store_active() == sha256_file(new)
    device.serving(new)
    print(f"\nreal agent: update_model -> succeeded {elapsed:.2f} s (1 s probation), "
          f"device timings {final['result']['timings']}")

    # the same model again is a no-op
    _, final, _ = device.send("update_model", _offer(web, new, probation_s=0), deploy_keys.private)
    assert final is not None and final["status"] == "succeeded" and final["reason"] == "already active"

    # a downgrade by update_model is refused; only the signed rollback command does it
    _, final, _ = device.send("update_model", _offer(web, old, probation_s=0), deploy_keys.private)
    assert final is not None and final["status"] == "failed", final
    assert "downgrades need a signed rollback" in final["reason"]
    device.serving(new)
    _, final, _ = device.send("rollback", {}, None, timeout=10)
    assert final is not None and final["status"] == "rejected" and "signature" in final["reason"], final
    _, final, elapsed = device.send("rollback", {}, deploy_keys.private, timeout=20)
    assert final is not None and final["status"] == "succeeded", final
    assert final["result"]["active"]["manifest_sha256"] == identity(old)
    assert device.store_active() == sha256_file(old)
    device.serving(old)
    print(f"real agent: rollback {elapsed:.2f} s round trip, store {final['result']['rollback_ms']} ms")

    # forward again without probation: the bare download + install + smoke test + swap time
    progress, final, elapsed = device.send("update_model", _offer(web, new, probation_s=0),
                                           deploy_keys.private, timeout=30)
    assert final is not None and final["status"] == "succeeded", (progress, final)
    device.serving(new)
    print(f"real agent: update_model -> succeeded {elapsed:.2f} s (no probation), "
          f"device timings {final['result']['timings']}")
    device.stop()


def test_manifest_only_update_is_reported_as_a_swap(device: Device, web: tuple[Path, str],
                                                    test_bundles: BundleSet, deploy_keys: DeployKeys,
                                                    tmp_path: Path) -> None:
    """Same weights, new labels: the agent swaps, and status, results and health name the new
    bundle. Guards against identifying a running model by its weights only (results and status
    would not change) and against a post-reload check that cannot see this swap."""
    new = deploy_helpers.relabelled(test_bundles.good, tmp_path / "relabelled.bundle",
                                    load_private_key(deploy_keys.private), prefix="new-")
    assert model_sha(new) == model_sha(test_bundles.good) and identity(new) != identity(test_bundles.good)
    device.serving(test_bundles.good)
    progress, final, _ = device.send("update_model", _offer(web, new, probation_s=0), deploy_keys.private)
    assert final is not None and final["status"] == "succeeded", (progress, final, device.stderr_tail())
    assert final["result"]["active"]["manifest_sha256"] == identity(new)
    results = device.serving(new)
    labels = {c["label"] for r in results for c in r["classes"]}
    assert labels and all(label.startswith("new-") for label in labels), labels
    health = device.health()
    assert health["model_sha256"] == model_sha(new) and health["manifest_sha256"] == identity(new), health
    device.stop()


def test_rejected_and_failed_updates_keep_the_old_model(device: Device, web: tuple[Path, str],
                                                        test_bundles: BundleSet, deploy_keys: DeployKeys,
                                                        tmp_path: Path) -> None:
    offer = _offer(web, test_bundles.good_v2)
    # unsigned command
    _, final, _ = device.send("update_model", offer, None, timeout=10)
    assert final is not None and final["status"] == "rejected" and "signature" in final["reason"], final
    # command signed with a key the device does not trust
    stranger = tmp_path / "stranger.key"
    generate_keypair(stranger, tmp_path / "stranger.pub")
    _, final, _ = device.send("update_model", offer, stranger, timeout=10)
    assert final is not None and final["status"] == "rejected" and "signature" in final["reason"], final
    # hash mismatch
    _, final, _ = device.send("update_model", {**offer, "sha256": "ab" * 32}, deploy_keys.private)
    assert final is not None and final["status"] == "failed" and "sha256 mismatch" in final["reason"], final
    # bundle signed by another key
    _, final, _ = device.send("update_model", _offer(web, test_bundles.wrong_signature), deploy_keys.private)
    assert final is not None and final["status"] == "failed" and "does not verify" in final["reason"], final
    assert final["result"]["active"]["manifest_sha256"] == identity(test_bundles.good)
    # detached signature in the command that does not match the bundle
    bad_sig = {**offer, "signature": "A" * 86 + "=="}
    _, final, _ = device.send("update_model", bad_sig, deploy_keys.private)
    assert final is not None and final["status"] == "failed" and "bad signature" in final["reason"], final
    assert device.store_active() == sha256_file(test_bundles.good)
    device.serving(test_bundles.good)
    device.stop()


def test_probation_failure_rolls_back_automatically(device: Device, web: tuple[Path, str],
                                                    test_bundles: BundleSet, deploy_keys: DeployKeys,
                                                    ota_bundles: dict[str, Path]) -> None:
    """Every inference of the new model fails. The probation is the longest allowed: the final
    ack only arrives within the command's timeout when the failure is detected early."""
    device.serving(test_bundles.good)
    args = _offer(web, ota_bundles["poison"], allow_new_input=True, probation_s=ota.MAX_PROBATION_S)
    progress, final, elapsed = device.send("update_model", args, deploy_keys.private, timeout=HANG_S)
    assert final is not None and final["status"] == "failed", (progress, final, device.stderr_tail())
    assert [a["status"] for a in progress] == ["in_progress", "in_progress", "failed"], progress
    assert "probation failed: error rate" in final["reason"] and "rolled back to" in final["reason"], final
    assert final["result"]["active"]["manifest_sha256"] == identity(test_bundles.good)
    assert device.store_active() == sha256_file(test_bundles.good)
    device.serving(test_bundles.good)
    print(f"\nreal agent: update_model -> probation failure -> rolled back {elapsed:.2f} s, "
          f"device timings {final['result']['timings']}")
    device.stop()


def test_too_slow_in_probation_rolls_back(device: Device, web: tuple[Path, str], test_bundles: BundleSet,
                                          deploy_keys: DeployKeys, ota_bundles: dict[str, Path]) -> None:
    """The slow model passes install (its smoke test is fast) but each live inference takes
    hundreds of milliseconds against a 10 ms budget: the agent's own latency figures fail the
    probation, and the agent rolls back and reports it. With the latency check gone the
    probation (the longest allowed) would outlast the command's timeout."""
    device.serving(test_bundles.good)
    args = _offer(web, ota_bundles["slow"], allow_new_input=True, probation_s=ota.MAX_PROBATION_S)
    progress, final, _ = device.send("update_model", args, deploy_keys.private, timeout=HANG_S)
    assert final is not None and final["status"] == "failed", (progress, final, device.stderr_tail())
    assert [a["status"] for a in progress] == ["in_progress", "in_progress", "failed"], progress
    reason = final["reason"]
    assert reason.startswith("probation failed: p95 inference latency "), reason
    assert f"above 3 x the {SLOW_BUDGET_MS:g} ms budget; rolled back to " in reason, reason
    assert final["result"]["active"]["manifest_sha256"] == identity(test_bundles.good)
    assert device.store_active() == sha256_file(test_bundles.good)
    device.serving(test_bundles.good)
    device.stop()


def test_reload_failure_rolls_back(device: Device, web: tuple[Path, str], test_bundles: BundleSet,
                                   deploy_keys: DeployKeys, tmp_path: Path) -> None:
    """A signed audio model (the same weights, a waveform window of the same size) installs and
    passes its smoke test, but the running agent cannot swap it in: its source gives images. The
    store must go back to the old model, the agent keep serving it, and the ack say so."""
    manifest = read_bundle(test_bundles.good, require_signature=False).manifest
    samples = int(np.prod(manifest.inputs[0].shape[1:]))
    audio = deploy_helpers.repack(
        test_bundles.good, tmp_path / "audio.bundle", load_private_key(deploy_keys.private),
        same_weights=True, version=f"{manifest.version}.5", task="audio_classify",
        preprocess=AudioPreprocess(feature="waveform", sample_rate=16000, window_s=samples / 16000,
                                   hop_s=samples / 16000),
    )
    device.serving(test_bundles.good)
    args = _offer(web, audio, allow_new_input=True, probation_s=0)
    progress, final, _ = device.send("update_model", args, deploy_keys.private, timeout=HANG_S)
    assert final is not None and final["status"] == "failed", (progress, final, device.stderr_tail())
    assert [a["status"] for a in progress] == ["in_progress", "failed"], progress
    reason = final["reason"]
    assert reason.startswith("the running agent cannot load the new model: the new model does not fit the "
                             "running source (audio input instead of image); restart the agent"), reason
    assert f"rolled back to {manifest.name} {manifest.version}" in reason, reason
    assert final["result"]["active"]["manifest_sha256"] == identity(test_bundles.good)
    assert device.store_active() == sha256_file(test_bundles.good)
    device.serving(test_bundles.good)
    device.stop()


class _HangingServer:
    """Answers each GET with headers announcing a body, then sends nothing until stopped."""

    def __init__(self) -> None:
        import socket

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/model.bundle"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
            self.requests += 1
            threading.Thread(target=lambda c=conn: (self.stop.wait(HANG_S), c.close()), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.agent_config(f"""
[ota]
file_root = "{{root}}"
download_timeout_s = {HANG_S * 2}
""")
def test_acks_in_order_file_root_and_a_rollback_that_cancels_a_hanging_download(
        device: Device, web: tuple[Path, str], test_bundles: BundleSet, deploy_keys: DeployKeys) -> None:
    """Issue 11, against the real agent: ``in_progress`` always comes before ``failed``; ``file://``
    reaches only ``ota.file_root`` (from the agent's config file); a rollback sent while a download
    hangs is not refused as busy: it rolls back at once and the update ends ``failed`` (cancelled)."""
    import socket

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every download is refused at once
    for _ in range(3):
        progress, final, _ = device.send("update_model", {"url": f"http://127.0.0.1:{port}/m.bundle",
                                                          "sha256": "a" * 64, "size": 10}, deploy_keys.private)
        assert [a["status"] for a in progress] == ["in_progress", "failed"], progress
        assert final is not None and final["reason"] == "download failed: Connection refused", final

    shutil.copy(test_bundles.good_v2, web[0] / test_bundles.good_v2.name)
    offer = {"url": (web[0] / test_bundles.good_v2.name).as_uri(), "sha256": sha256_file(test_bundles.good_v2),
             "size": test_bundles.good_v2.stat().st_size, "probation_s": 0}
    _, final, _ = device.send("update_model", offer, deploy_keys.private, timeout=HANG_S)
    assert final is not None and final["status"] == "succeeded", (final, device.stderr_tail())
    _, final, _ = device.send("update_model", {**offer, "url": "file:///etc/passwd"}, deploy_keys.private)
    assert final is not None and final["status"] == "rejected", final
    assert final["reason"] == f"invalid_args: file:// path /etc/passwd is outside ota.file_root {web[0]}", final
    device.serving(test_bundles.good_v2)

    hanging = _HangingServer()
    try:
        update: dict[str, Any] = {}

        def send_update() -> None:
            _, update["final"], _ = device.send("update_model", {"url": hanging.url, "sha256": "b" * 64,
                                                                 "size": 100000}, deploy_keys.private, timeout=HANG_S)

        sender = threading.Thread(target=send_update)
        sender.start()
        device.wait(lambda: hanging.requests > 0, HANG_S, "the download never reached the server")
        progress, final, _ = device.send("rollback", {}, deploy_keys.private, timeout=HANG_S)
        assert final is not None and (final["status"], final["reason"]) == ("succeeded", "rolled back"), final
        sender.join(HANG_S)
    finally:
        hanging.close()
    assert update["final"] is not None and update["final"]["status"] == "failed", update
    assert update["final"]["reason"].startswith("cancelled: the rollback command "), update
    assert device.store_active() == sha256_file(test_bundles.good)
    device.serving(test_bundles.good)
    device.stop()
