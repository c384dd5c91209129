"""The shipped Mosquitto ACL (deploy/mosquitto/edge.acl) against what the agent publishes."""

from __future__ import annotations

from deploy.broker import SHIPPED_ACL
from edge_agent.messaging.homeassistant import homeassistant_discovery


def test_a_device_may_write_exactly_its_own_discovery_configs() -> None:
    """A sensor added to HA_SENSORS without its ACL line would be dropped by the broker."""
    rules = [line.split() for line in SHIPPED_ACL.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
    discovery = {rule[2] for rule in rules if rule[:2] == ["pattern", "write"] and rule[2].startswith("homeassistant/")}
    published = {topic.replace("/cam-01/", "/%u/") for topic, _ in homeassistant_discovery("cam-01", "edge/v1/cam-01")}
    assert discovery == published
    assert not any("+" in topic or "#" in topic for topic in discovery)
