"""``edge-fleet send`` to several devices and to ``--all`` online devices, against real agents on
a real Mosquitto (its own broker: ``--all`` means every device on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.messaging.link import MqttSettings
from tests.integration.colours_agent import colour_frames, colours_bundle, start_colours_agent
from tests.integration.mqtt_helpers import fleet_cli

pytestmark = pytest.mark.integration
__all__ = ["colour_frames", "colours_bundle"]  # fixtures

HANG = 60.0  # bounds a hang only


def test_send_to_several_and_to_all_online_devices(mqtt_broker_fn, collector_factory, colours_bundle,
                                                   colour_frames, tmp_path: Path, unique_id: str) -> None:
    ids = [f"{unique_id}-a", f"{unique_id}-b"]
    ghost = f"{unique_id}-gone"  # a device that went offline: its retained status says so
    col = collector_factory(MqttSettings(broker=mqtt_broker_fn.url, keepalive=5), "edge/v1/+/status")
    col.link.publish(f"edge/v1/{ghost}/status", json.dumps({"state": "offline"}).encode(), retain=True)
    agents = [start_colours_agent(mqtt_broker_fn.url, d, tmp_path / d, colours_bundle, colour_frames) for d in ids]
    broker = ["--broker", mqtt_broker_fn.url]
    try:
        assert col.wait(lambda: {b.get("device_id") for b in col.json("/status") if b.get("state") == "online"}
                        >= set(ids), HANG), [a.log() for a in agents]

        everyone = fleet_cli("send", "--all", "ping", "--json", "--timeout", "30", *broker)
        assert everyone.returncode == 0, everyone.stderr
        rows = json.loads(everyone.stdout)
        assert [(r["device"], r["status"], r["reason"]) for r in rows] == [(d, "succeeded", "pong") for d in ids]
        assert all(r["ack"]["device_id"] == r["device"] and r["ack"]["command"] == "ping" for r in rows)

        # one line per device; a device that never answers is a timeout (exit 3)
        some = fleet_cli("send", *ids, ghost, "ping", "--timeout", "5", *broker)
        assert some.returncode == 3, some.stderr
        lines = [line.split(None, 2) for line in some.stdout.splitlines()]
        assert lines == [[ids[0], "succeeded", "pong"], [ids[1], "succeeded", "pong"],
                         [ghost, "timeout", "no final ack within 5 s"]]

        # a rejection anywhere: exit 1
        bad = fleet_cli("send", *ids, "no_such_command", "--json", "--timeout", "30", *broker)
        assert bad.returncode == 1, bad.stderr
        assert {(r["device"], r["status"]) for r in json.loads(bad.stdout)} == {(d, "rejected") for d in ids}
        assert all(r["reason"].startswith("unknown_command") for r in json.loads(bad.stdout))

        # --output is for one device only; wrong targets are one line and exit 2
        for argv, message in [((*ids, "snapshot", "--output", str(tmp_path / "x.jpg")), "name exactly one device"),
                              (("--all", ids[0], "ping"), "either --all or device ids"),
                              (("a/b", "ping"), "is not a device id")]:
            refused = fleet_cli("send", *argv, *broker)
            assert refused.returncode == 2 and message in refused.stderr and refused.stderr.count("\n") == 1, \
                refused.stderr
        assert not (tmp_path / "x.jpg").exists()
    finally:
        for agent in agents:
            agent.close()
