"""A real agent frozen with SIGSTOP: its retained status still says ``online``, but ``edge-fleet
status`` shows it ``stale`` and exits 1; after SIGCONT it is ``online`` again, exit 0."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.messaging.link import MqttSettings
from tests import tflite_builders as tb
from tests.integration.mqtt_helpers import RealAgent, fleet_cli

pytestmark = pytest.mark.integration

HANG = 300.0  # bounds a hang only (an agent without health_interval_s would be stale after 2.5 x 30 s)


def _row(stdout: str, device: str) -> dict[str, object]:
    rows = {r["device_id"]: r for r in json.loads(stdout)["devices"]}
    return rows[device]


def test_sigstopped_agent_is_stale_and_status_fails(mqtt_broker_fn, collector_factory, unique_id: str,
                                                    tmp_path: Path) -> None:
    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.image_classifier())
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, colour in enumerate(((0, 0, 255), (0, 255, 0), (255, 0, 0))):
        assert cv2.imwrite(str(frames / f"{i}.png"), np.full((32, 32, 3), colour, np.uint8))
    url = ["--broker", mqtt_broker_fn.url]
    col = collector_factory(MqttSettings(broker=mqtt_broker_fn.url, keepalive=5), f"edge/v1/{unique_id}/health")
    # A long keepalive: the broker must not drop the frozen client (and send its will) during the test.
    agent = RealAgent(mqtt_broker_fn.url, unique_id, tmp_path / "state", model, frames, fps=5.0,
                      health_interval=0.5, keepalive=600)
    try:
        assert col.wait(lambda: len(col.json("health")) >= 2, HANG), agent.log()
        fresh = fleet_cli("status", unique_id, *url, "--json", timeout=HANG)
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert _row(fresh.stdout, unique_id)["state"] == "online"

        agent.proc.send_signal(signal.SIGSTOP)
        try:
            frozen = fleet_cli("status", unique_id, *url, "--json", timeout=HANG)
            assert frozen.returncode == 1, frozen.stdout + frozen.stderr
            assert _row(frozen.stdout, unique_id)["state"] == "stale"
            assert json.loads(frozen.stdout)["ok"] is False
            table = fleet_cli("status", *url, timeout=HANG)  # no device named: every one seen is judged
            assert table.returncode == 1 and "stale" in table.stdout, table.stdout
        finally:
            agent.proc.send_signal(signal.SIGCONT)

        seen = len(col.json("health"))
        assert col.wait(lambda: len(col.json("health")) > seen, HANG), agent.log()
        back = fleet_cli("status", unique_id, *url, "--json", timeout=HANG)
        assert back.returncode == 0, back.stdout + back.stderr
        assert _row(back.stdout, unique_id)["state"] == "online"
        absent = fleet_cli("status", unique_id, f"{unique_id}-absent", *url, "--json", "--wait", "1")
        assert absent.returncode == 1 and _row(absent.stdout, f"{unique_id}-absent")["state"] == "unknown"
    finally:
        agent.close()
