"""edge-deploy against a real sshd standing in for a device (tests/fixtures_ssh.py)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import modelstore
from edge_agent.bundle import sha256_file
from tests.fixtures_ssh import BundleSet, DeployKeys, SshDevice

pytestmark = pytest.mark.integration


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.fixture
def device_state(tmp_path: Path, deploy_keys: DeployKeys) -> Path:
    state = tmp_path / "device-state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)
    return state


def _push(device: SshDevice, state: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _deploy("push", str(bundle), *device.ssh_args(), "--state-dir", str(state), *extra)


def _active(state: Path) -> str | None:
    model = modelstore.active_model(state)
    return model.sha256 if model else None


def test_push_good_then_every_bad_bundle_refused(
    sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet
) -> None:
    proc = _push(sshd_device, device_state, test_bundles.good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    good = _active(device_state)
    assert good == sha256_file(test_bundles.good)
    short = modelstore.active_model(device_state).manifest.short_sha  # type: ignore[union-attr]
    assert "installed; active" in proc.stdout and short in proc.stdout

    for kind, why in [
        ("tampered", "sha256"), ("truncated", "not a bundle"), ("unsigned", "not signed"),
        ("wrong_signature", "does not verify"), ("wrong_input", "input"), ("too_slow", "latency"),
    ]:
        # --skip-local-check: the device itself must refuse it
        proc = _push(sshd_device, device_state, getattr(test_bundles, kind), "--skip-local-check")
        assert proc.returncode == 1, (kind, proc.stdout, proc.stderr)
        assert "FAILED" in proc.stdout and why in proc.stdout, (kind, proc.stdout)
        assert short in proc.stdout  # the answer names the model still active
        assert _active(device_state) == good, kind
    # still serving: the active model loads and passes its golden vectors
    active = modelstore.active_model(device_state)
    assert active is not None
    assert modelstore.run_smoke_child(active.bundle_path)["passed"]
    assert not list((device_state / "tmp").iterdir())
    # without --skip-local-check a corrupt bundle never leaves the operator's machine
    proc = _push(sshd_device, device_state, test_bundles.tampered)
    assert proc.returncode == 2 and "altered or corrupt" in proc.stderr


def test_push_rollback_status(sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet) -> None:
    assert _push(sshd_device, device_state, test_bundles.good).returncode == 0
    proc = _push(sshd_device, device_state, test_bundles.good_v2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v2 = modelstore.active_model(device_state)
    assert v2 is not None and v2.sha256 == sha256_file(test_bundles.good_v2)

    proc = _deploy("status", *sshd_device.ssh_args(), "--state-dir", str(device_state), "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["ok"]
    assert row["data"]["active"]["version"] == v2.manifest.version
    assert row["data"]["previous"]["bundle_sha256"] == sha256_file(test_bundles.good)
    assert row["data"]["service"] == "unknown"  # no systemd in the test container
    proc = _deploy("status", *sshd_device.ssh_args(), "--state-dir", str(device_state))
    assert re.search(r"active \S+ \S+ \([0-9a-f]{12}\)", proc.stdout)
    assert re.search(r"previous \S+ \S+ \([0-9a-f]{12}\); service unknown", proc.stdout)

    proc = _deploy("rollback", *sshd_device.ssh_args(), "--state-dir", str(device_state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rolled back" in proc.stdout
    assert _active(device_state) == sha256_file(test_bundles.good)


def test_several_hosts_table_and_failure_exit(
    sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# fleet\n{sshd_device.host}:{sshd_device.port}\n"
                     f"{sshd_device.host}:{dead_port}  # offline device\n")
    proc = _deploy("push", str(test_bundles.good), "--hosts-file", str(hosts),
                   *sshd_device.ssh_args(with_host=False),
                   "--state-dir", str(device_state), "--connect-timeout", "3")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "RESULT", "SUMMARY"]
    ok_line = next(line for line in lines if f":{sshd_device.port} " in line)
    bad_line = next(line for line in lines if f":{dead_port} " in line)
    assert " ok " in ok_line and "installed" in ok_line
    assert "FAILED" in bad_line
    assert _active(device_state) == sha256_file(test_bundles.good)


def test_push_to_a_closed_port_says_cannot_connect(
    sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens here once the socket is closed
    proc = _deploy("push", str(test_bundles.good), "--host", f"{sshd_device.host}:{closed}",
                   *sshd_device.ssh_args(with_host=False), "--state-dir", str(device_state),
                   "--connect-timeout", "3", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [row] = json.loads(proc.stdout)
    assert not row["ok"] and row["summary"] == "unreachable"
    assert row["detail"] == f"cannot connect to 127.0.0.1:{closed}: Connection refused", row
    assert "scp" not in proc.stdout and _active(device_state) is None


def test_install_agent_dry_run_shows_every_step(sshd_device: SshDevice, deploy_keys: DeployKeys,
                                                tmp_path: Path) -> None:
    proc = _deploy("install-agent", "--host", sshd_device.host, "--port", str(sshd_device.port),
                   "--identity", str(sshd_device.identity), "--known-hosts",
                   str(tmp_path / "kh"), "--public-key", str(deploy_keys.public), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("python3 -m venv /opt/edge-agent/venv", "pip install --upgrade edge-infer",
                   "/etc/systemd/system/edge-agent.service", "/etc/edge-agent/config.toml",
                   "/etc/edge-agent/trusted.pub", "credentials/mqtt-password",
                   "systemctl enable --now edge-agent"):
        assert needle in out, needle
    assert re.findall(r"step (\d+)/(\d+)", out)[-1][0] == re.findall(r"step (\d+)/(\d+)", out)[-1][1]
    assert "dry run" in out
    assert not (tmp_path / "kh").exists() or (tmp_path / "kh").read_text() == ""
    assert not Path("/etc/systemd/system/edge-agent.service").exists()
