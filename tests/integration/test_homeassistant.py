"""Home Assistant against the shipped TLS + ACL Mosquitto config: a real agent publishes discovery,
a client with the ``homeassistant`` certificate reads the configs and evaluates every value template
(Jinja2, as Home Assistant does) against the real messages on its state topic, and cannot write
to the fleet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import jinja2
import pytest

from deploy import certs
from edge_agent.messaging.homeassistant import DiscoveryModel, homeassistant_discovery
from tests.integration.colours_agent import LABELS, colour_frames, colours_bundle, start_colours_agent
from tests.tiny_store import make_bundle

pytestmark = pytest.mark.integration
__all__ = ["colour_frames", "colours_bundle"]  # fixtures

HANG = 60.0  # bounds a hang only
ENV = jinja2.Environment()


def render(template: str, payload: bytes) -> str:
    return ENV.from_string(template).render(value_json=json.loads(payload)).strip()


def test_discovery_templates_and_read_only_identity(tls_broker, pki, collector_factory, colours_bundle,
                                                    colour_frames, tmp_path: Path) -> None:
    dev = f"ha{uuid.uuid4().hex[:8]}"
    root = f"edge/v1/{dev}"
    dev_pair = certs.issue(pki.dir, dev, out_dir=tmp_path / "dev")
    ha_pair = certs.issue(pki.dir, "homeassistant", out_dir=tmp_path / "ha")
    ha = collector_factory(pki.client(ha_pair, tls_broker.url), f"homeassistant/+/{dev}/+/config",
                           f"{root}/status", f"{root}/health", f"{root}/evt/#", "homeassistant/status")
    bundle = tmp_path / "model.bundle"  # its own copy: the test replaces it with other labels
    shutil.copy(colours_bundle, bundle)
    agent = start_colours_agent(
        tls_broker.url, dev, tmp_path / "state", bundle, colour_frames,
        "--ca-file", str(pki.ca.cert), "--cert-file", str(dev_pair.cert), "--key-file", str(dev_pair.key),
        config="[mqtt]\nhomeassistant = true\n", health_interval=1.0)
    # what the agent must announce: the colours classifier, results on every frame, health every 1 s
    expected = dict(homeassistant_discovery(dev, root, DiscoveryModel(
        task="classify", labels=LABELS, health_interval_s=1.0, events="every", model_name="colours")))
    try:
        def configs() -> dict[str, dict]:
            return {m.topic: json.loads(m.payload) for m in ha.messages if m.topic.endswith("/config") and m.payload}

        assert ha.wait(lambda: set(expected) <= set(configs()), HANG), (sorted(configs()), agent.log())
        got = configs()
        assert {t: got[t] for t in expected} == expected
        assert got[f"homeassistant/sensor/{dev}/fps/config"]["expire_after"] == 3  # ceil(2.5 x 1 s)

        # every entity's template against a real message on its state topic
        states = {config["state_topic"] for config in expected.values()}
        assert ha.wait(lambda: all(any(m.topic == t for m in ha.messages) for t in states), HANG), agent.log()
        seen_on: set[str] = set()
        for topic, config in expected.items():
            payloads = [m.payload for m in ha.messages if m.topic == config["state_topic"]]
            values = [render(config["value_template"], p) for p in payloads]
            if "/binary_sensor/" in topic:
                assert set(values) <= {"ON", "OFF"}, (topic, values)
                if "ON" in values:
                    seen_on.add(config["unique_id"])
            elif config["unique_id"].endswith("_last_label"):
                assert set(values) <= set(LABELS), values
            elif "state_class" in config or "unit_of_measurement" in config:
                for value in values:
                    assert value == "None" or float(value) >= 0, (topic, value)  # "None": unknown in HA
        # the looping red, green and blue pictures switch each label's binary sensor on at some point
        assert {f"edge_{dev}_detected_{label}" for label in LABELS} <= seen_on
        assert f"edge_{dev}_duplicate_device_id" not in seen_on
        status = next(m.payload for m in ha.messages if m.topic == f"{root}/status")
        availability = expected[f"homeassistant/sensor/{dev}/fps/config"]["availability"][0]
        assert render(availability["value_template"], status) == "online"

        # Home Assistant's identity is read-only on the fleet: the broker refuses (MQTT 5 PUBACK
        # "Not authorized") every write under edge/v1/, and accepts its own birth message.
        acks: dict[int, tuple[bool, str]] = {}
        done = threading.Condition()

        def on_published(mid: int, ok: bool, reason: str) -> None:
            with done:
                acks[mid] = (ok, reason)
                done.notify_all()

        ha.link.callbacks.on_published = on_published
        forged = [f"{root}/cmd/ping", f"{root}/status", f"{root}/evt/classification", f"{root}/config/desired",
                  f"homeassistant/sensor/{dev}/fps/config"]
        mids = {topic: ha.link.publish(topic, b'{"forged": true}') for topic in forged}
        own = ha.link.publish("homeassistant/status", b"online")
        with done:
            assert done.wait_for(lambda: all(mid in acks for mid in [*mids.values(), own]), HANG)
        assert acks[own][0], acks[own]
        assert {topic: acks[mid][0] for topic, mid in mids.items()} == dict.fromkeys(forged, False), acks
        # and nothing of it reached a reader: the birth message, sent last, arrived; nothing forged before it
        assert ha.wait(lambda: any(m.topic == "homeassistant/status" for m in ha.messages), HANG)
        assert [m.topic for m in ha.messages if m.payload == b'{"forged": true}'] == []
        assert agent.alive, agent.log()

        # A model with other labels (same input and classes): after the swap (SIGHUP re-reads
        # --bundle) the discovery follows, and the configs of the labels gone are deleted.
        new_labels = ("cyan", "magenta", "yellow")
        os.replace(make_bundle(tmp_path / "new.bundle", version="2.0", labels=new_labels), bundle)
        agent.proc.send_signal(signal.SIGHUP)
        gone = {f"homeassistant/binary_sensor/{dev}/detected_{label}/config" for label in LABELS}
        added = {f"homeassistant/binary_sensor/{dev}/detected_{label}/config" for label in new_labels}
        assert ha.wait(lambda: gone <= {m.topic for m in ha.messages if m.payload == b""}
                       and added <= {m.topic for m in ha.messages if m.payload}, HANG), agent.log()
        assert agent.alive, agent.log()
    finally:
        agent.terminate()
        # the broker is shared by the session: leave no retained configs (the device may delete its own)
        from edge_agent.messaging.link import MqttLink

        cleaner = MqttLink(pki.client(dev_pair, tls_broker.url), f"clean-{time.monotonic_ns()}")
        cleaner.start()
        if cleaner.wait_connected(HANG):
            for topic in {m.topic for m in ha.messages if m.topic.endswith("/config")}:
                cleaner.publish(topic, b"", retain=True)
        cleaner.stop()
