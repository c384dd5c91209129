"""Health keys are named the same on stdout and MQTT: one real agent publishes to stdout, another
to MQTT (a broker that is down: the health message waits in the outbox, read back from its
SQLite file), and their health bodies and retained status bodies are compared key by key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.messaging.outbox import Outbox
from edge_agent.messaging.publishers.mqtt import MqttPublisher
from tests.tiny_store import make_bundle, shared

HANG = 60.0  # only bounds a hang
ENVELOPE_KEYS = {"schema", "device_id", "boot_id", "session", "seq", "ts_ms", "replayed"}
# What only a broker connection has: connection attempts, refusals, direct messages (status,
# acks) paho could not take, the command inbox's counters, and another client with our id.
MQTT_ONLY = {"connects", "refused", "direct_dropped", "direct_refused_oversize", "desired_dropped", "commands",
             "commands_rejected", "duplicate_device_id", "duplicate_device_id_count", "duplicate_device_id_how"}
# The stdout queue keeps no bytes, ages or rows in flight, and never stores to disk.
OUTBOX_MQTT_ONLY = {"bytes", "inflight", "oldest_age_s", "evicted_age", "refused_oversize", "undeliverable",
                    "dropped", "sent_unstored", "replayed"}


def _run(tmp_path: Path, publisher: str, **extra: Any) -> Agent:
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    for i, colour in enumerate([(0, 0, 255), (0, 255, 0)]):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((48, 64, 3), colour, np.uint8))
    bundle = shared("health-keys-colours", lambda d: make_bundle(d / "c.bundle"))
    cli = {"model": {"bundle": bundle}, "state_dir": tmp_path / f"state-{publisher}", "publisher": publisher,
           "source": {"uri": str(frames), "loop": True, "fps": 100}, **extra}
    agent = Agent(load_config(None, cli, environ={}))
    agent.start()
    try:
        deadline = time.monotonic() + HANG
        while agent.progress_counter < 3:
            assert time.monotonic() < deadline, "no inferences"
            time.sleep(0.02)
    finally:
        agent.request_stop("test")
        agent.stop(timeout=2.0)  # publishes a last health message
    return agent


def _body(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in ENVELOPE_KEYS}


def test_stdout_and_mqtt_health_and_status_use_the_same_keys(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    stdout_agent = _run(tmp_path, "stdout")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    stdout_health = _body(next(m["payload"] for m in reversed(lines) if m["topic"].endswith("/health")))
    stdout_status = _body(next(m["payload"] for m in lines if m["topic"].endswith("/status")))

    agent = _run(tmp_path, "mqtt", mqtt={"broker": "mqtt://127.0.0.1:1", "reconnect_max_s": 1})
    assert isinstance(agent.publisher, MqttPublisher)
    outbox = Outbox(tmp_path / "state-mqtt" / "outbox.db")
    try:
        rows = outbox.take(1000)
    finally:
        outbox.close()
    mqtt_health = _body(json.loads(next(r.payload for r in reversed(rows) if r.topic.endswith("/health"))))
    mqtt_status = _body(agent.publisher._status_body("online"))  # the birth the broker would get

    assert set(stdout_health) == set(mqtt_health) - MQTT_ONLY
    assert set(mqtt_health) >= MQTT_ONLY  # the list above names keys that exist
    assert set(stdout_health["outbox"]) == set(mqtt_health["outbox"]) - OUTBOX_MQTT_ONLY
    assert set(mqtt_health["outbox"]) >= OUTBOX_MQTT_ONLY
    assert (stdout_health["publisher"], mqtt_health["publisher"]) == ("stdout", "mqtt")
    # The last health is built while the stdout writer may still hold a line (a busy machine), so
    # its depth is whatever was in flight; once stopped, the stdout queue is empty. The MQTT
    # outbox keeps what the absent broker never took.
    assert isinstance(stdout_health["outbox"]["depth"], int) and stdout_health["outbox"]["depth"] >= 0
    assert stdout_agent.publisher is not None and stdout_agent.publisher.stats()["outbox"]["depth"] == 0
    assert mqtt_health["outbox"]["depth"] >= 1
    assert stdout_health["health_interval_s"] == mqtt_health["health_interval_s"] == 30.0
    assert set(stdout_status) == set(mqtt_status)
    assert stdout_status["health_interval_s"] == mqtt_status["health_interval_s"] == 30.0
