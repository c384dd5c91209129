"""Mutual TLS with the shipped Mosquitto config and ACL (deploy/mosquitto)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent.messaging.link import MqttError, MqttLink, MqttSettings
from tests.integration.mqtt_helpers import fleet_cli

pytestmark = pytest.mark.integration

HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run


def _refused(broker, settings: MqttSettings) -> bool:
    """True when the client never got connected although it tried at least twice.

    Mosquitto logs every TCP connection it accepts ("New connection from …"); the client only
    tries again after an attempt failed. So two attempts seen in the broker's log, and no
    connection, is a refusal, however slow the machine: no waiting a fixed time for a
    connection that might have come later.
    """
    offset = len(broker.log.read_text())
    link = MqttLink(settings, f"probe-{time.monotonic_ns()}")
    link.start()
    try:
        deadline = time.monotonic() + HANG
        while not link.connected and broker.log.read_text()[offset:].count("New connection from") < 2:
            assert time.monotonic() < deadline, "neither connected nor tried again"
            time.sleep(0.05)
        return not link.connected and link.stats.connects == 0
    finally:
        link.stop()


def test_device_confined_to_its_own_topics(tls_broker, pki, collector_factory):
    fleet = collector_factory(pki.client(pki.fleet, tls_broker.url), "edge/v1/#")
    assert fleet.suback[0] == [1]  # the operator may read everything
    dev_a = collector_factory(pki.client(pki.dev_a, tls_broker.url), "edge/v1/dev-a/cmd/+", "edge/v1/dev-b/#",
                              "edge/v1/dev-b/cmd/+")
    dev_b = collector_factory(pki.client(pki.dev_b, tls_broker.url), "edge/v1/dev-b/cmd/+")
    codes = dev_a.suback[0]
    assert codes[0] == 1, "a device may subscribe to its own commands"
    # Mosquitto grants the SUBACK for filters the ACL denies but never delivers through them;
    # either way dev-a must receive nothing of dev-b (checked below).

    # dev-a tries dev-b's telemetry and commands and its own command topic, then writes its own
    # topic last. The broker handles one connection's packets in order and queues to each
    # subscriber in order, so once that last message is in, anything forged that got through is
    # in too; the operator's commands, sent after it, arrive after anything forged for the same
    # device. No sleeping to give forged messages "time to arrive".
    dev_a.link.publish("edge/v1/dev-b/evt/x", b'{"forged": true}')
    dev_a.link.publish("edge/v1/dev-b/status", b'{"state": "offline"}', retain=True)
    dev_a.link.publish("edge/v1/dev-b/cmd/ping", b'{"forged": "command"}')
    dev_a.link.publish("edge/v1/dev-a/cmd/ping", b'{"self": "command"}')
    dev_a.link.publish("edge/v1/dev-a/evt/x", b'{"own": true}')
    # dev-b's real telemetry.
    dev_b.link.publish("edge/v1/dev-b/evt/x", b'{"real": "b"}')
    assert fleet.wait(lambda: bool(fleet.on("dev-a/evt/x")) and bool(fleet.on("dev-b/evt/x")), HANG)
    # The operator's commands to both devices.
    fleet.link.publish("edge/v1/dev-b/cmd/ping", b'{"for": "b"}')
    fleet.link.publish("edge/v1/dev-a/cmd/ping", b'{"for": "a"}')
    assert dev_a.wait(lambda: bool(dev_a.on("dev-a/cmd/ping")), HANG)
    assert dev_b.wait(lambda: bool(dev_b.on("dev-b/cmd/ping")), HANG)
    assert [json.loads(m.payload) for m in fleet.on("dev-b/evt/x")] == [{"real": "b"}], "forged dev-b telemetry"
    assert not fleet.on("dev-b/status"), "dev-a forged dev-b's status"
    assert [json.loads(m.payload) for m in dev_b.on("cmd/ping")] == [{"for": "b"}], "dev-a commanded dev-b"
    assert [json.loads(m.payload) for m in dev_a.on("")] == [{"for": "a"}], \
        "dev-a received dev-b's traffic or wrote its own command topic"


@pytest.mark.parametrize("which", ["foreign_ca", "expired", "no_cert"])
def test_bad_client_certificates_are_refused(tls_broker, pki, which: str):
    if which == "foreign_ca":
        settings = pki.client(pki.foreign, tls_broker.url)
    elif which == "expired":
        settings = pki.client(pki.expired, tls_broker.url)
    else:
        settings = MqttSettings(broker=tls_broker.url, ca_file=pki.ca.cert, keepalive=5, reconnect_max_s=1)
    assert _refused(tls_broker, settings)
    # Control: the same broker accepts a good certificate.
    assert not _refused(tls_broker, pki.client(pki.dev_a, tls_broker.url))


def test_server_certificate_is_verified(tls_broker, pki):
    # The broker's certificate does not chain to this CA: the client refuses the broker.
    settings = MqttSettings(broker=tls_broker.url, ca_file=pki.foreign_ca.cert, cert_file=pki.dev_a.cert,
                            key_file=pki.dev_a.key, keepalive=5, reconnect_max_s=1)
    assert _refused(tls_broker, settings)


def test_no_way_to_skip_verification():
    with pytest.raises(MqttError):
        MqttSettings(broker="mqtt://127.0.0.1:1", cert_file=Path("c"), key_file=Path("k")).validate()
    assert "insecure" not in " ".join(MqttSettings.__dataclass_fields__)


def test_agent_and_fleet_over_mutual_tls(tls_broker, pki, start_agent, tmp_path: Path):
    agent = start_agent(tls_broker, "dev-a", tmp_path / "state", "--ca-file", str(pki.ca.cert), "--cert-file",
                        str(pki.dev_a.cert), "--key-file", str(pki.dev_a.key))
    tls = ["--broker", tls_broker.url, "--ca-file", str(pki.ca.cert), "--cert-file", str(pki.fleet.cert),
           "--key-file", str(pki.fleet.key)]
    fleet = MqttLink(pki.client(pki.fleet, tls_broker.url), f"fleet-{time.monotonic_ns()}",
                     subscriptions=("edge/v1/dev-a/evt/+",))
    results: list[bytes] = []
    fleet.callbacks.on_message = lambda m: results.append(m.payload)
    fleet.start()
    try:
        deadline = time.monotonic() + HANG
        while len(results) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(results) >= 10, agent.log()
        # --wait bounds the wait; status returns as soon as every online device has sent health.
        status = fleet_cli("status", "dev-a", *tls, "--json", "--wait", "30")  # other tests' devices may be offline
        assert status.returncode == 0, status.stderr
        devices = {d["device_id"]: d for d in json.loads(status.stdout)["devices"]}
        assert devices["dev-a"]["state"] == "online"
        sent = fleet_cli("send", "dev-a", "ping", *tls, "--timeout", "30")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    finally:
        fleet.stop()


def test_hostname_is_checked(pki, tmp_path: Path):
    """A broker whose certificate names another host is refused, even though the CA is trusted."""
    from deploy import certs
    from deploy.broker import SHIPPED_ACL, SHIPPED_CONF, Mosquitto, free_port, render_config, run_as_user

    wrong = certs.issue(pki.dir, "other.example", server=True, dns=["other.example"], out_dir=tmp_path)
    port = free_port()
    conf = render_config(SHIPPED_CONF.read_text(), {
        "user": run_as_user(), "listener": f"{port} 127.0.0.1", "acl_file": str(SHIPPED_ACL),
        "persistence_location": f"{tmp_path}/", "cafile": str(pki.ca.cert), "certfile": str(wrong.cert),
        "keyfile": str(wrong.key), "crlfile": None,
    })
    broker = Mosquitto(tmp_path, conf, port, tls=True)
    broker.start()
    try:
        assert _refused(broker, pki.client(pki.dev_a, broker.url))
    finally:
        broker.stop()


def test_homeassistant_discovery_confined_to_the_devices_own_sensors(tls_broker, pki, collector_factory,
                                                                      tmp_path: Path):
    """The agent's discovery configs reach Home Assistant; under homeassistant/ a device may write only
    sensor and binary_sensor configs of its own node id (tests/integration/test_homeassistant.py: the rest)."""
    from deploy import certs
    from edge_agent.messaging.envelope import EnvelopeFactory
    from edge_agent.messaging.homeassistant import homeassistant_discovery
    from edge_agent.messaging.publishers.mqtt import MqttPublisher

    ha_pair = certs.issue(pki.dir, "homeassistant", out_dir=tmp_path / "ha")
    ha = collector_factory(pki.client(ha_pair, tls_broker.url), "homeassistant/#", "edge/v1/dev-a/status")
    expected = {topic for topic, _ in homeassistant_discovery("dev-a", "edge/v1/dev-a")}
    # the real publisher of dev-a, discovery on: every config it publishes is let through
    state = tmp_path / "state"
    pub = MqttPublisher({"broker": tls_broker.url, "ca_file": str(pki.ca.cert), "cert_file": str(pki.dev_a.cert),
                         "key_file": str(pki.dev_a.key), "homeassistant": True, "keepalive": 5},
                        envelope=EnvelopeFactory("dev-a", state), state_dir=state)
    pub.start()
    try:
        assert ha.wait(lambda: expected <= {m.topic for m in ha.messages}, HANG), [m.topic for m in ha.messages]
        assert ha.wait(lambda: bool(ha.on("dev-a/status")), HANG), "Home Assistant cannot read availability"
    finally:
        pub.stop(2)
    dev_a = collector_factory(pki.client(pki.dev_a, tls_broker.url), "edge/v1/dev-a/cmd/+")
    forged = [
        "homeassistant/switch/dev-a/relay/config",  # another component under its own node id
        "homeassistant/light/dev-a/fps/config",
        "homeassistant/sensor/dev-a/config",  # object id = its own name, without a node id
        "homeassistant/sensor/dev-a/fps/config/x",  # a deeper topic
        "homeassistant/sensor/dev-a/fps/state",
        "homeassistant/sensor/dev-b/fps/config",  # another device's sensor
        "homeassistant/status",  # Home Assistant's own birth message
    ]
    for topic in forged:
        dev_a.link.publish(topic, b'{"forged": true}', retain=True)
    # last, one of its own configs again: once that is in, anything forged before it would be too
    last = sorted(expected)[0]
    dev_a.link.publish(last, b'{"last": true}', retain=True)
    try:
        assert ha.wait(lambda: any(m.payload == b'{"last": true}' for m in ha.on(last)), HANG)
        assert [m.topic for m in ha.messages if m.payload == b'{"forged": true}'] == []
    finally:
        for topic in expected:  # the broker is shared by the session: leave no retained configs
            dev_a.link.publish(topic, b"", retain=True)
