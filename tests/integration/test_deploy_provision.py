"""``edge-deploy install-agent`` giving each host its own device id and certificate (real sshd).

One sshd (tests/fixtures_ssh.py) is reached under two names, ``127.0.0.1`` and ``localhost``:
two hosts as far as install-agent is concerned. Both names are the same machine, so each
real install goes below its own ``--root``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from deploy.pki import Pki
from tests.fixtures_ssh import SshDevice
from tests.integration.test_deploy import _probe_wheel

pytestmark = pytest.mark.integration


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False)


def _host(device: SshDevice, name: str) -> str:
    return f"{device.host.partition('@')[0]}@{name}"


def _ssh(device: SshDevice) -> list[str]:
    return ["--port", str(device.port), "--identity", str(device.identity), "--known-hosts", str(device.known_hosts)]


def _cn(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_dry_run_shows_each_hosts_id_and_issues_nothing(sshd_device: SshDevice, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert _deploy("pki", "init", "--dir", str(pki)).returncode == 0
    proc = _deploy("install-agent", "--host", _host(sshd_device, "127.0.0.1"), "--host",
                   _host(sshd_device, "localhost"), *_ssh(sshd_device), "--pki", str(pki),
                   "--device-id-template", "cam-{host}", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"[{_host(sshd_device, '127.0.0.1')}:{sshd_device.port}] device id cam-127.0.0.1" in proc.stdout
    assert f"[{_host(sshd_device, 'localhost')}:{sshd_device.port}] device id cam-localhost" in proc.stdout
    assert "upload the agent configuration (device id cam-localhost)" in proc.stdout
    assert Pki(pki).entries() == []  # a dry run issues no certificate

    # two hosts that would share an id: refused before anything is done
    proc = _deploy("install-agent", "--host", _host(sshd_device, "127.0.0.1"), "--host",
                   _host(sshd_device, "localhost"), *_ssh(sshd_device), "--device-id-template", "cam-01", "--dry-run")
    assert proc.returncode == 2 and "would both get device id 'cam-01'" in proc.stderr, proc.stderr
    assert "step 1" not in proc.stdout


def test_two_hosts_get_their_own_ids_and_certificates(sshd_device: SshDevice, tmp_path: Path) -> None:
    if shutil.which("python3") is None or shutil.which("systemctl") is None:
        pytest.skip("the device side needs python3 (with venv) and systemctl")
    pki_dir = tmp_path / "pki"
    assert _deploy("pki", "init", "--dir", str(pki_dir)).returncode == 0
    wheel = _probe_wheel(tmp_path)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    configs: dict[str, dict[str, object]] = {}
    for name in ("127.0.0.1", "localhost"):
        root = tmp_path / f"root-{name}"
        proc = _deploy("install-agent", "--host", _host(sshd_device, name), *_ssh(sshd_device), "--root", str(root),
                       "--upload-dir", str(uploads), "--package", str(wheel), "--pki", str(pki_dir),
                       "--device-id-template", "cam-{host}", "--broker", "mqtts://broker.example.org:8883")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        etc = root / "etc/edge-agent"
        config = tomllib.loads((etc / "config.toml").read_text())
        configs[name] = config
        device_id = config["device_id"]
        assert device_id == f"cam-{name}"
        assert f"device id {device_id}" in proc.stdout
        assert config["mqtt"] == {
            **config["mqtt"],  # type: ignore[dict-item]
            "broker": "mqtts://broker.example.org:8883",
            "ca_file": "/run/credentials/edge-agent.service/mqtt-ca.crt",
            "cert_file": "/run/credentials/edge-agent.service/mqtt-client.crt",
            "key_file": "/run/credentials/edge-agent.service/mqtt-client.key",
        }
        creds = etc / "credentials"
        assert _cn(creds / "mqtt-client.crt") == device_id
        assert (creds / "mqtt-ca.crt").read_bytes() == (pki_dir / "ca.crt").read_bytes()
        for cred in ("mqtt-client.crt", "mqtt-client.key", "mqtt-ca.crt"):
            assert (creds / cred).stat().st_mode & 0o777 == 0o600, cred
        key = Pki(pki_dir).pair(device_id)
        assert (creds / "mqtt-client.key").read_bytes() == key.key.read_bytes()
        assert list(uploads.iterdir()) == []
    assert configs["127.0.0.1"]["device_id"] != configs["localhost"]["device_id"]
    entries = Pki(pki_dir).entries()
    assert sorted(e.name for e in entries) == ["cam-127.0.0.1", "cam-localhost"]

    # again: a kept config naming another id is refused; the certificate is reused while valid
    root = tmp_path / "root-localhost"
    argv = ["install-agent", "--host", _host(sshd_device, "localhost"), *_ssh(sshd_device), "--root", str(root),
            "--upload-dir", str(uploads), "--package", str(wheel), "--pki", str(pki_dir),
            "--device-id-template", "cam-{host}"]
    config = root / "etc/edge-agent/config.toml"
    config.write_text('device_id = "someone-else"\n')
    client_key = root / "etc/edge-agent/credentials/mqtt-client.key"
    client_key.write_text("the device's own\n")
    proc = _deploy(*argv)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "has another device_id than the certificate CN cam-localhost" in proc.stdout
    assert config.read_text() == 'device_id = "someone-else"\n'
    assert client_key.read_text() == "the device's own\n"  # refused before any credential was replaced
    proc = _deploy(*argv, "--force-config")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tomllib.loads(config.read_text())["device_id"] == "cam-localhost"
    assert _cn(root / "etc/edge-agent/credentials/mqtt-client.crt") == "cam-localhost"
    assert Pki(pki_dir).entries() == entries  # both runs reused the valid certificate
