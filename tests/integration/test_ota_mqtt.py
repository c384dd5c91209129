"""OTA end to end over a real Mosquitto: signed update_model/rollback commands sent with the
operator tool (deploy.fleet.send_command), a device process running the real MQTT publisher
and command layer with real inference (tests/ota_device.py), bundles served over HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.broker import Mosquitto
from deploy.fleet import send_command
from edge_agent import modelstore
from edge_agent.bundle import sha256_file
from edge_agent.mqtt import MqttSettings
from tests.fixtures_mqtt import agent_env
from tests.fixtures_ssh import BundleSet, DeployKeys

pytestmark = pytest.mark.integration


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


def _offer(web: tuple[Path, str], bundle: Path, **extra: Any) -> dict[str, Any]:
    shutil.copy(bundle, web[0] / bundle.name)
    return {"url": f"{web[1]}/{bundle.name}", "sha256": sha256_file(bundle),
            "size": bundle.stat().st_size, **extra}


class Device:
    def __init__(self, broker: Mosquitto, state: Path, device_id: str, key: Path) -> None:
        self.state, self.device_id, self.key = state, device_id, key
        self.settings = MqttSettings.from_any(None, broker=broker.url, reconnect_max_s=2.0)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ota_device", "--broker", broker.url, "--device-id", device_id,
             "--state-dir", str(state), "--command-key", str(key)],
            stdout=subprocess.PIPE, text=True, env=agent_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert json.loads(line) == {"ready": True}, line
        deadline = time.monotonic() + 20  # wait until connected and subscribed: ping answers
        while time.monotonic() < deadline:
            ack = send_command(self.settings, device_id, "ping", {}, timeout=2)
            if ack is not None and ack.get("status") == "succeeded":
                break
        else:
            raise AssertionError("the device never answered ping")

    def send(self, command: str, args: dict[str, Any], sign_key: Path | None, timeout: float = 60
             ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, float]:
        progress: list[dict[str, Any]] = []
        t0 = time.monotonic()
        final = send_command(self.settings, self.device_id, command, args, timeout=timeout,
                             sign_key=sign_key, on_ack=progress.append)
        return progress, final, time.monotonic() - t0

    def active(self) -> str | None:
        model = modelstore.active_model(self.state)
        return model.sha256 if model else None

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def device(mqtt_broker: Mosquitto, tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet,
           unique_id: str) -> Iterator[Device]:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)
    modelstore.install_model(test_bundles.good, state)
    dev = Device(mqtt_broker, state, unique_id, deploy_keys.public)
    yield dev
    if dev.proc.poll() is None:
        dev.proc.kill()
        dev.proc.wait()


def test_update_over_mqtt_success_then_signed_rollback(device: Device, web: tuple[Path, str],
                                                        test_bundles: BundleSet,
                                                        deploy_keys: DeployKeys) -> None:
    args = _offer(web, test_bundles.good_v2, probation_s=1.0)
    progress, final, elapsed = device.send("update_model", args, deploy_keys.private)
    assert final is not None and final["status"] == "succeeded", (progress, final)
    assert [a["status"] for a in progress] == ["in_progress", "in_progress", "succeeded"]
    assert device.active() == sha256_file(test_bundles.good_v2)
    print(f"update_model -> succeeded over MQTT: {elapsed:.2f} s (1 s probation), "
          f"device timings {final['result']['timings']}")

    # downgrade by update_model is refused; the signed rollback command does it
    progress, final, _ = device.send("update_model", _offer(web, test_bundles.good, probation_s=0),
                                     deploy_keys.private)
    assert final is not None and final["status"] == "failed"
    assert "downgrades need a signed rollback" in final["reason"]
    _, final, _ = device.send("rollback", {}, None, timeout=10)
    assert final is not None and final["status"] == "rejected" and "signature" in final["reason"]
    _, final, elapsed = device.send("rollback", {}, deploy_keys.private, timeout=20)
    assert final is not None and final["status"] == "succeeded", final
    assert device.active() == sha256_file(test_bundles.good)
    print(f"rollback over MQTT: {elapsed:.2f} s round trip, store {final['result']['rollback_ms']} ms")
    stats = device.stop()
    assert stats["errors"] == 0 and stats["inferences"] > 0
    print(f"inference gap around the swaps: {stats['max_gap_ms']} ms")


def test_unsigned_command_rejected(device: Device, web: tuple[Path, str], test_bundles: BundleSet) -> None:
    _, final, _ = device.send("update_model", _offer(web, test_bundles.good_v2), None, timeout=10)
    assert final is not None and final["status"] == "rejected"
    assert device.active() == sha256_file(test_bundles.good)


def test_hash_mismatch_and_bad_bundle_signature(device: Device, web: tuple[Path, str],
                                                test_bundles: BundleSet, deploy_keys: DeployKeys) -> None:
    args = {**_offer(web, test_bundles.good_v2), "sha256": "ab" * 32}
    _, final, _ = device.send("update_model", args, deploy_keys.private)
    assert final is not None and final["status"] == "failed" and "sha256 mismatch" in final["reason"]
    _, final, _ = device.send("update_model", _offer(web, test_bundles.wrong_signature),
                              deploy_keys.private)
    assert final is not None and final["status"] == "failed" and "does not verify" in final["reason"]
    assert device.active() == sha256_file(test_bundles.good)
    assert final["result"]["active"]["bundle_sha256"] == sha256_file(test_bundles.good)


def test_probation_failure_rolls_back_automatically(device: Device, web: tuple[Path, str],
                                                    test_bundles: BundleSet,
                                                    deploy_keys: DeployKeys) -> None:
    args = _offer(web, test_bundles.wrong_input, allow_new_input=True, probation_s=15)
    progress, final, elapsed = device.send("update_model", args, deploy_keys.private)
    assert final is not None and final["status"] == "failed", (progress, final)
    assert "probation failed" in final["reason"] and "rolled back to" in final["reason"]
    assert device.active() == sha256_file(test_bundles.good)
    assert elapsed < 15
    print(f"update_model -> probation failure -> rolled back: {elapsed:.2f} s")
