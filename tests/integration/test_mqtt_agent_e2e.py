"""The real ``edge-agent run --broker`` against a real Mosquitto: birth, health, events, commands, will."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.messaging.link import MqttSettings
from tests.fixtures_mqtt import REPO, agent_env
from tests.integration.mqtt_helpers import connected_with, fleet_cli

pytestmark = pytest.mark.integration

KEEPALIVE = 5  # the agent's config allows 5 s at least
WILL_DELAY = 1
HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run


def _images(folder: Path, n: int = 12) -> Path:
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), (rng.random((32, 32)) * 255).astype(np.uint8))
    return folder


def test_real_agent_over_mqtt(mqtt_broker, digits_bundle, collector_factory, unique_id, tmp_path: Path):
    # A persistent session: a collector reconnect on a loaded machine cannot lose the will.
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=10), f"edge/v1/{unique_id}/#",
                            client_id=f"col-{unique_id}", session_expiry_s=120)
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--bundle", str(digits_bundle), "--source",
         str(_images(tmp_path / "imgs")), "--loop", "--fps", "20", "--events", "every", "--device-id", unique_id,
         "--state-dir", str(tmp_path / "state"), "--broker", mqtt_broker.url, "--keepalive", str(KEEPALIVE),
         "--will-delay", str(WILL_DELAY), "--health-interval", "1"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=agent_env())
    try:
        ok = col.wait(lambda: len(col.json("evt/classification")) >= 10 and len(col.json("health")) >= 2, HANG)
        assert ok, (tmp_path / "agent.log").read_text()[-3000:]
        birth = col.json("status")[0]
        assert birth["state"] == "online" and birth["model"]["sha256"]
        health = col.json("health")[-1]
        assert health["fps_inferred"] > 0 and health["connected"] is True
        outbox = health["outbox"]
        assert (outbox["evicted"], outbox["refused_oversize"], outbox["undeliverable"], outbox["write_errors"],
                outbox["replayed"]) == (0, 0, 0, 0, 0), outbox
        seqs = [m["seq"] for m in col.json("")]
        assert len(seqs) == len(set(seqs))

        sent = fleet_cli("send", unique_id, "ping", "--broker", mqtt_broker.url, "--timeout", "30")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.strip().splitlines()[-1])["status"] == "succeeded"
        # --wait bounds the wait; status returns as soon as every online device has sent health.
        status = fleet_cli("status", unique_id, "--broker", mqtt_broker.url, "--json", "--wait", "30")
        assert status.returncode == 0, status.stdout + status.stderr
        row = {d["device_id"]: d for d in json.loads(status.stdout)["devices"]}[unique_id]
        assert row["state"] == "online" and row["fps"] and row["gaps"] == 0

        # What bounds the will's delay is what the agent told the broker (no stopwatch).
        assert connected_with(mqtt_broker.log.read_text(), unique_id, "5", KEEPALIVE)
        proc.kill()
        proc.wait(10)
        assert col.wait(lambda: any(m.get("state") == "offline" for m in col.json("status")), HANG), (
            [(m.topic, m.retain, m.payload[:300]) for m in col.on("status")],
            mqtt_broker.log.read_text()[-3000:], (tmp_path / "agent.log").read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
