"""The shipped Mosquitto ACL (deploy/mosquitto/edge.acl) against what the agent publishes."""

from __future__ import annotations

from deploy.broker import SHIPPED_ACL
from edge_agent.messaging.homeassistant import COMPONENTS, DiscoveryModel, homeassistant_discovery


def _rules() -> list[list[str]]:
    return [line.split() for line in SHIPPED_ACL.read_text().splitlines() if line.strip()[:1] not in ("", "#")]


def test_a_device_may_write_exactly_its_own_discovery_configs() -> None:
    """One object id level of the agent's two components under the device's own node id; every config
    the agent publishes (any task, any label) is inside, so none is dropped by the broker."""
    discovery = {rule[2] for rule in _rules() if rule[:2] == ["pattern", "write"]
                 and rule[2].startswith("homeassistant/")}
    assert discovery == {f"homeassistant/{component}/%u/+/config" for component in COMPONENTS}
    for task in (None, "classify", "detect", "audio_classify"):
        model = DiscoveryModel(task=task, labels=("person", "a/b", "#"))
        for topic, _ in homeassistant_discovery("cam-01", "edge/v1/cam-01", model):
            _, component, node, oid, tail = topic.split("/")
            assert component in COMPONENTS and node == "cam-01" and tail == "config" and "+" not in oid


def test_homeassistant_is_read_only_on_the_fleet() -> None:
    rules = _rules()
    start = rules.index(["user", "homeassistant"])
    end = next(i for i in range(start + 1, len(rules)) if rules[i][0] in ("user", "pattern"))
    mine = rules[start + 1:end]
    assert [r for r in mine if r[:2] == ["topic", "write"]] == [["topic", "write", "homeassistant/status"]]
    assert sorted(r[2] for r in mine if r[:2] == ["topic", "read"]) == sorted(
        ["homeassistant/#", "edge/v1/+/status", "edge/v1/+/health", "edge/v1/+/evt/#"])
