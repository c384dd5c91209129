"""The real ``edge-agent run --broker`` against a real Mosquitto (fixtures from tests.fixtures_mqtt)."""

from __future__ import annotations

import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.messaging.link import MqttSettings
from tests.integration.agent_helpers import LiveAgent
from tests.integration.test_agent import COLOURS_BGR, models  # noqa: F401 - module fixture

pytestmark = pytest.mark.integration


def test_run_with_broker_publishes_birth_results_health_and_offline(
    mqtt_broker, collector_factory, unique_id, models: Path, tmp_path: Path  # noqa: F811
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(["red", "green", "blue"]):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((30, 40, 3), COLOURS_BGR[name], np.uint8))
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/#")
    agent = LiveAgent("--bundle", models / "colours.tflite", "--source", folder, "--loop", "--fps", "20",
                      "--events", "every", "--broker", mqtt_broker.url, "--device-id", unique_id,
                      "--health-interval", "0.5", "--state-dir", tmp_path / "state", "--duration", "30")
    try:
        assert col.wait(lambda: len(col.json("evt/classification")) >= 6 and col.json("health"), 20), agent.messages
        birth = col.json("status")[0]
        assert birth["state"] == "online" and birth["model"]["name"] == "colours"
        labels = [m["classes"][0]["label"] for m in col.json("evt/classification")[:6]]
        assert labels == ["red", "green", "blue", "red", "green", "blue"]
        health = col.json("health")[0]
        assert health["source"]["type"] == "folder" and "latency_ms" in health
    finally:
        code = agent.finish(signal.SIGTERM)
    assert code == 0, agent.stderr
    assert agent.messages == []  # with a broker nothing goes to stdout
    assert col.wait(lambda: any(m.get("state") == "offline" for m in col.json("status")), 5), agent.stderr
