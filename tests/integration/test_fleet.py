"""edge-fleet status / send / watch end to end against a real broker and the real ``edge-agent run``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from edge_agent.messaging.link import MqttSettings
from tests.integration.mqtt_helpers import fleet_cli

pytestmark = pytest.mark.integration


def _p95(health: dict) -> float | None:
    latency = health.get("latency_ms") or {}
    for stage in ("total", "invoke"):
        if isinstance(latency.get(stage), dict) and latency[stage].get("p95") is not None:
            return latency[stage]["p95"]
    return None


def test_status_and_send_end_to_end(mqtt_broker, start_agent, collector_factory, unique_id, tmp_path: Path):
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/health")
    agent = start_agent(mqtt_broker, unique_id, tmp_path / "state", health_interval=0.5, keepalive=5)
    url = ["--broker", mqtt_broker.url]
    assert col.wait(lambda: len(col.json("health")) >= 2, 60), agent.log()
    status = fleet_cli("status", unique_id, *url, "--json", "--wait", "4")
    assert status.returncode == 0, status.stderr
    row = {d["device_id"]: d for d in json.loads(status.stdout)["devices"]}[unique_id]
    assert row["state"] == "online" and row["model"] == "digits@1.0.0"
    # The row shows what one of the agent's real health messages said.
    seen = [(h["fps_inferred"], h["cpu_temp_c"], _p95(h)) for h in col.json("health")]
    assert (row["fps"], row["cpu_temp_c"], row["p95_ms"]) in seen, (row, seen)
    assert row["fps"] > 0 and row["p95_ms"] > 0
    assert isinstance(row["outbox_depth"], int) and row["last_seen_ago_s"] < 5
    assert row["gaps"] == 0 and row["duplicates"] == 0

    table = fleet_cli("status", *url, "--wait", "2")
    assert unique_id in table.stdout and "online" in table.stdout

    ping = fleet_cli("send", unique_id, "ping", *url, "--timeout", "10")
    assert ping.returncode == 0, ping.stderr
    ack = json.loads(ping.stdout.strip().splitlines()[-1])
    assert (ack["status"], ack["reason"], ack["command"]) == ("succeeded", "pong", "ping")

    good = fleet_cli("send", unique_id, "set_config", *url, "--args", '{"score_threshold": 0.25}')
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["result"]["config"]["score_threshold"] == 0.25
    bad = fleet_cli("send", unique_id, "set_config", *url, "--args", '{"score_threshold": 7}')
    assert bad.returncode == 1 and json.loads(bad.stdout)["status"] == "rejected"
    unknown = fleet_cli("send", unique_id, "format_disk", *url)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["reason"] == "unknown_command"
    nobody = fleet_cli("send", f"{unique_id}-absent", "ping", *url, "--timeout", "1")
    assert nobody.returncode == 3 and "no ack" in nobody.stderr
    badargs = fleet_cli("send", unique_id, "ping", *url, "--args", "[1")
    assert badargs.returncode == 2 and "--args" in badargs.stderr

    assert agent.alive, agent.log()
    agent.kill9()
    # The will fires 1 s (will delay) after the broker sees the connection drop; the
    # retained `offline` then replaces the birth.
    deadline = time.monotonic() + 15
    state = None
    while time.monotonic() < deadline:
        after = fleet_cli("status", *url, "--json", "--wait", "1")
        state = {d["device_id"]: d for d in json.loads(after.stdout)["devices"]}[unique_id]["state"]
        if state == "offline":
            break
    assert state == "offline"


def test_watch_reports_live(mqtt_broker, start_agent, collector_factory, unique_id, tmp_path: Path):
    col = collector_factory(MqttSettings(broker=mqtt_broker.url, keepalive=5), f"edge/v1/{unique_id}/evt/+")
    agent = start_agent(mqtt_broker, unique_id, tmp_path / "state")
    assert col.wait(lambda: bool(col.on("evt/classification")), 60), agent.log()
    out = fleet_cli("watch", "--broker", mqtt_broker.url, "--duration", "3", "--interval", "0.5")
    assert out.returncode == 0, out.stderr
    assert "DEVICE" in out.stdout and unique_id in out.stdout, agent.log()


def test_no_broker_is_a_clear_error():
    out = fleet_cli("status", "--broker", "http://nowhere")
    assert out.returncode == 2 and "mqtt://host:port" in out.stderr
    assert "Traceback" not in out.stderr


def test_send_keeps_the_first_final_ack(mqtt_broker, unique_id: str) -> None:
    """A device whose ``in_progress`` arrives after its ``failed`` (an agent before issue 11):
    the final answer stays ``failed``; a late progress ack must not replace it."""
    from deploy.commands import send_command
    from edge_agent.messaging.link import MqttLink
    from edge_agent.messaging.paho_client import InboundMessage

    settings = MqttSettings(broker=mqtt_broker.url, keepalive=5)
    device = MqttLink(settings, f"{unique_id}-device", subscriptions=(f"edge/v1/{unique_id}/cmd/#",))
    subscribed = threading.Event()
    device.callbacks.on_subscribed = lambda mid, codes: subscribed.set()

    def answer(message: InboundMessage) -> None:
        cmd_id = json.loads(message.payload)["id"]
        for status in ("failed", "in_progress"):
            device.publish(f"edge/v1/{unique_id}/ack", json.dumps({"id": cmd_id, "status": status}).encode(), qos=1)

    device.callbacks.on_message = answer
    device.start()
    try:
        assert subscribed.wait(10)
        progress: list[dict] = []
        final = send_command(settings, unique_id, "ping", {}, timeout=10, on_ack=progress.append)
    finally:
        device.stop()
    assert final is not None and final["status"] == "failed", final
    assert [a["status"] for a in progress] == ["failed"]
