"""Two real agents with one device id on a real Mosquitto: both say so (log, health, status,
stop summary) and back off, so they swap the connection at most once per backoff instead of
kicking each other off several times a second."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from edge_agent.messaging.link import MqttSettings
from tests.integration.colours_agent import colour_frames, colours_bundle, start_colours_agent
from tests.integration.mqtt_helpers import RealAgent, wait_until

pytestmark = pytest.mark.integration
__all__ = ["colour_frames", "colours_bundle"]  # fixtures

HANG = 90.0  # bounds a hang only
BACKOFF = 4  # duplicate_backoff_s: a flagged agent reconnects after 4-8 s (normally after 1-2 s)


def connects(broker_log: Path, client_id: str) -> list[int]:
    """Mosquitto's timestamps (whole seconds) of every connection made as ``client_id``."""
    pattern = rf"^(\d+): New client connected from \S+ as {re.escape(client_id)} "
    return [int(m.group(1)) for m in re.finditer(pattern, broker_log.read_text(), re.MULTILINE)]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_agents_with_one_device_id_report_it_and_do_not_thrash(
        mqtt_broker_fn, collector_factory, colours_bundle, colour_frames, tmp_path: Path, unique_id: str,
        protocol: str) -> None:
    config = f"[mqtt]\nreconnect_min_s = 1\nreconnect_max_s = 2\nduplicate_backoff_s = {BACKOFF}\n"
    root = f"edge/v1/{unique_id}"
    col = collector_factory(MqttSettings(broker=mqtt_broker_fn.url, keepalive=5), f"{root}/health", f"{root}/status")

    def start(name: str) -> RealAgent:
        return start_colours_agent(mqtt_broker_fn.url, unique_id, tmp_path / name, colours_bundle, colour_frames,
                                   "--mqtt-protocol", protocol, config=config, health_interval=0.5)

    first = start("a")
    assert col.wait(lambda: any(b.get("state") == "online" for b in col.json("/status")), HANG), first.log()
    second = start("b")
    agents = (first, second)
    said = f"duplicate_device_id: another client connected as {unique_id}"
    try:
        assert wait_until(lambda: all(said in agent.log_path.read_text() for agent in agents), HANG), \
            [agent.log() for agent in agents]
        flagged_at = len(connects(mqtt_broker_fn.log, unique_id))
        # health and the birth message say so too
        assert col.wait(lambda: any(b.get("duplicate_device_id") is True and b.get("duplicate_device_id_count", 0) >= 1
                                    for b in col.json("/health")), HANG)
        assert col.wait(lambda: any(b.get("state") == "online" and b.get("duplicate_device_id") is True
                                    for b in col.json("/status")), HANG)
        # No thrash: once both know, each reconnect waits the duplicate backoff, so two consecutive
        # connections with this id are at least BACKOFF s apart (Mosquitto logs whole seconds).
        assert wait_until(lambda: len(connects(mqtt_broker_fn.log, unique_id)) >= flagged_at + 2, HANG)
        times = connects(mqtt_broker_fn.log, unique_id)[flagged_at - 1:flagged_at + 2]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= BACKOFF - 1 for gap in gaps), (gaps, times)
    finally:
        codes = [agent.terminate() for agent in agents]
    assert codes == [0, 0], [agent.log() for agent in agents]
    for agent in agents:
        summary = [line for line in agent.log().splitlines() if line.startswith("edge-agent: SIGTERM")]
        assert summary and said in summary[-1], agent.log()
    # every health message of either agent carries the flag's fields
    assert all("duplicate_device_id" in json.dumps(b) for b in col.json("/health"))
