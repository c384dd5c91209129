"""``edge-deploy pki`` against a real Mosquitto running the shipped TLS config with its CRL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.broker import Mosquitto, free_port, tls_config
from deploy.pki import Pki
from edge_agent.messaging.link import MqttSettings
from tests.integration.mqtt_helpers import wait_until

pytestmark = pytest.mark.integration

HANG = 60.0  # bounds a hang only


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True,
                          timeout=HANG, check=False)


def _publish(broker: Mosquitto, pki: Pki, name: str, role: str = "device",
             topic: str | None = None) -> subprocess.CompletedProcess[str]:
    """One QoS 1 publish with ``name``'s certificate through the real mosquitto_pub: exit 0 only when the
    TLS handshake and CONNECT were accepted and the PUBACK came back."""
    pair = pki.pair(name, role)
    return subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "--cafile", str(pki.ca_cert),
         "--cert", str(pair.cert), "--key", str(pair.key), "-i", f"{name}-probe", "-q", "1",
         "-t", topic or f"edge/v1/{name}/status", "-m", "probe", "-d"],
        capture_output=True, text=True, timeout=HANG, check=False)


@pytest.fixture
def crl_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Pki]]:
    """A fleet CA made by the real CLI, and the shipped config reading its crl.pem."""
    directory = tmp_path / "pki"
    for argv in (["init"], ["issue", "localhost", "--role", "server", "--ip", "127.0.0.1"],
                 ["issue", "cam-01"], ["issue", "cam-02"], ["issue", "fleet", "--role", "operator"]):
        proc = _deploy("pki", *argv, "--dir", str(directory))
        assert proc.returncode == 0, proc.stderr
    pki = Pki(directory)
    server = pki.pair("localhost", "server")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    port = free_port()
    conf = tls_config(workdir, port, pki.ca_cert, server.cert, server.key, crl=pki.crl)
    broker = Mosquitto(workdir, conf + "log_type information\n", port, tls=True)  # logs "Reloading config."
    assert f"crlfile {pki.crl}" in broker.conf.read_text()
    broker.start()
    yield broker, pki
    broker.stop()


def test_revoked_device_refused_after_restart(crl_broker: tuple[Mosquitto, Pki]) -> None:
    broker, pki = crl_broker
    assert _publish(broker, pki, "cam-01").returncode == 0
    assert _publish(broker, pki, "cam-02").returncode == 0

    proc = _deploy("pki", "revoke", "cam-01", "--dir", str(pki.directory))
    assert proc.returncode == 0, proc.stderr
    assert "restart Mosquitto" in proc.stdout and "crlfile" in proc.stdout
    broker.stop()
    broker.start()

    offset = len(broker.log.read_text())
    refused = _publish(broker, pki, "cam-01")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    # the broker's OpenSSL refused the certificate (it logs no finer reason; the client may see the
    # "certificate revoked" alert or only a dropped connection, depending on TLS 1.3 timing)
    # the client may give up before the broker has logged why: wait for the line, not for a time
    assert wait_until(lambda: "certificate verify failed" in broker.log.read_text()[offset:], HANG), \
        broker.log.read_text()[offset:]
    assert _publish(broker, pki, "cam-02").returncode == 0  # the others keep working

    # a new certificate for the same device id is not on the CRL
    proc = _deploy("pki", "issue", "cam-01", "--dir", str(pki.directory))
    assert proc.returncode == 0, proc.stderr
    assert _publish(broker, pki, "cam-01").returncode == 0


def test_sighup_reloads_the_crl(crl_broker: tuple[Mosquitto, Pki], collector_factory: Callable[..., Any]) -> None:
    """What docs/deploy.md says: Mosquitto (2.0.11 here, Debian 12's) re-reads crlfile on SIGHUP
    (``systemctl reload mosquitto``): new connections of a revoked certificate are refused, and a
    connection opened before is not checked again."""
    broker, pki = crl_broker
    pair = pki.pair("cam-01")
    settings = MqttSettings(broker=broker.url, ca_file=pki.ca_cert, cert_file=pair.cert, key_file=pair.key,
                            keepalive=5, reconnect_max_s=2)
    device = collector_factory(settings, "edge/v1/cam-01/cmd/#", client_id="cam-01")  # connected before
    assert _deploy("pki", "revoke", "cam-01", "--dir", str(pki.directory)).returncode == 0
    assert broker.proc is not None
    offset = len(broker.log.read_text())
    os.kill(broker.proc.pid, signal.SIGHUP)
    # Mosquitto logs the reload once it has handled the signal: wait for that line, not for a time.
    assert wait_until(lambda: "Reloading config" in broker.log.read_text()[offset:], HANG), broker.log.read_text()
    refused = _publish(broker, pki, "cam-01")
    assert refused.returncode != 0, refused
    # the client may give up before the broker has logged why: wait for the line, not for a time
    assert wait_until(lambda: "certificate verify failed" in broker.log.read_text()[offset:], HANG), \
        broker.log.read_text()[offset:]
    assert _publish(broker, pki, "cam-02").returncode == 0

    # the connection opened before the revocation still works: only a restart cuts it off
    assert _publish(broker, pki, "fleet", "operator", topic="edge/v1/cam-01/cmd/ping").returncode == 0
    assert device.wait(lambda: bool(device.on("/cmd/ping")), HANG)
    assert device.link.stats.connects == 1
