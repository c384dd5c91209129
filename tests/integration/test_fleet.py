"""edge-fleet status / send / watch end to end against a real broker and a publishing agent process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.mqtt_helpers import Driver, fleet_cli

pytestmark = pytest.mark.integration


def test_status_and_send_end_to_end(mqtt_broker, unique_id, tmp_path: Path):
    driver = Driver(mqtt_broker.url, unique_id, tmp_path / "state", "--health-every", "5", rate=10)
    url = ["--broker", mqtt_broker.url]
    try:
        driver.wait_seqs(12)
        status = fleet_cli("status", *url, "--json", "--wait", "4")
        assert status.returncode == 0, status.stderr
        row = {d["device_id"]: d for d in json.loads(status.stdout)["devices"]}[unique_id]
        assert row["state"] == "online" and row["model"] == "digits@1.0"
        assert (row["fps"], row["cpu_temp_c"], row["p95_ms"]) == (10.0, 48.5, 12.5)
        assert isinstance(row["outbox_depth"], int) and row["last_seen_ago_s"] < 5
        assert row["gaps"] == 0 and row["duplicates"] == 0

        table = fleet_cli("status", *url, "--wait", "2")
        assert unique_id in table.stdout and "online" in table.stdout

        ping = fleet_cli("send", unique_id, "ping", *url, "--timeout", "10")
        assert ping.returncode == 0, ping.stderr
        ack = json.loads(ping.stdout.strip().splitlines()[-1])
        assert (ack["status"], ack["reason"], ack["command"]) == ("succeeded", "pong", "ping")

        good = fleet_cli("send", unique_id, "set_config", *url, "--args", '{"threshold": 0.25}')
        assert good.returncode == 0 and json.loads(good.stdout)["result"]["config"]["threshold"] == 0.25
        bad = fleet_cli("send", unique_id, "set_config", *url, "--args", '{"threshold": 7}')
        assert bad.returncode == 1 and json.loads(bad.stdout)["status"] == "rejected"
        unknown = fleet_cli("send", unique_id, "format_disk", *url)
        assert unknown.returncode == 1 and json.loads(unknown.stdout)["reason"] == "unknown_command"
        nobody = fleet_cli("send", f"{unique_id}-absent", "ping", *url, "--timeout", "1")
        assert nobody.returncode == 3 and "no ack" in nobody.stderr
        badargs = fleet_cli("send", unique_id, "ping", *url, "--args", "[1")
        assert badargs.returncode == 2 and "--args" in badargs.stderr

        driver.kill9()
        after = fleet_cli("status", *url, "--json", "--wait", "1")
        # The will has fired by now (keepalive 2 s, will delay 1 s) or fires within the wait.
        row = {d["device_id"]: d for d in json.loads(after.stdout)["devices"]}[unique_id]
        assert row["state"] in ("offline", "online")
    finally:
        driver.close()


def test_watch_reports_live(mqtt_broker, unique_id, tmp_path: Path):
    driver = Driver(mqtt_broker.url, unique_id, tmp_path / "state", rate=20, count=40)
    try:
        out = fleet_cli("watch", "--broker", mqtt_broker.url, "--duration", "3", "--interval", "0.5")
        assert out.returncode == 0, out.stderr
        assert "DEVICE" in out.stdout and unique_id in out.stdout
    finally:
        driver.close()


def test_no_broker_is_a_clear_error():
    out = fleet_cli("status", "--broker", "http://nowhere")
    assert out.returncode == 2 and "mqtt://host:port" in out.stderr
    assert "Traceback" not in out.stderr
