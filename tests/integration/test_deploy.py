"""edge-deploy against a real sshd standing in for a device (tests/fixtures_ssh.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import actions
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.util.fs import sha256_file
from tests.fixtures_ssh import BundleSet, DeployKeys, SshDevice

pytestmark = pytest.mark.integration


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, timeout=180, check=False)


def _push(device: SshDevice, state: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _deploy("push", str(bundle), *device.ssh_args(), "--state-dir", str(state), *extra)


def _active(state: Path) -> str | None:
    model = store_layout.active_model(state)
    return model.sha256 if model else None


def test_push_good_then_every_bad_bundle_refused(
    sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet
) -> None:
    proc = _push(sshd_device, device_state, test_bundles.good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    good = _active(device_state)
    assert good == sha256_file(test_bundles.good)
    short = store_layout.active_model(device_state).manifest.short_sha  # type: ignore[union-attr]
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
    active = store_layout.active_model(device_state)
    assert active is not None
    assert store_install.run_smoke_child(active.bundle_path)["passed"]
    assert not list((device_state / "tmp").iterdir())
    # without --skip-local-check a corrupt bundle never leaves the operator's machine
    proc = _push(sshd_device, device_state, test_bundles.tampered)
    assert proc.returncode == 2 and "altered or corrupt" in proc.stderr


def test_push_rollback_status(sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet) -> None:
    assert _push(sshd_device, device_state, test_bundles.good).returncode == 0
    proc = _push(sshd_device, device_state, test_bundles.good_v2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v2 = store_layout.active_model(device_state)
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
    for needle in ("python3 -m venv /opt/edge-agent/venv", "install --upgrade edge-infer",
                   "/etc/systemd/system/edge-agent.service", "/etc/edge-agent/config.toml",
                   "/etc/edge-agent/trusted.pub", "credentials/mqtt-password",
                   "systemctl enable --now edge-agent"):
        assert needle in out, needle
    assert re.findall(r"step (\d+)/(\d+)", out)[-1][0] == re.findall(r"step (\d+)/(\d+)", out)[-1][1]
    assert "dry run" in out
    assert not (tmp_path / "kh").exists() or (tmp_path / "kh").read_text() == ""
    assert not Path("/etc/systemd/system/edge-agent.service").exists()


# --------------------------------------------------------------------------- install-agent for real


def _probe_wheel(directory: Path) -> Path:
    """A tiny pure-Python wheel without dependencies, so pip installs it with no index."""
    name, version = "edge_deploy_probe", "1.0"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"INSTALLED_BY = 'edge-deploy install-agent'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: edge-deploy-probe\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}\n" for path, data in files.items()
    ) + f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in {**files, f"{info}/RECORD": record.encode()}.items():
            archive.writestr(path, data)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    wheel.write_bytes(buffer.getvalue())
    return wheel


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_agent_for_real_under_a_root(sshd_device: SshDevice, deploy_keys: DeployKeys,
                                             tmp_path: Path) -> None:
    """install-agent run for real over SSH, every device path below --root, and what it installed."""
    if shutil.which("python3") is None or shutil.which("systemctl") is None:
        pytest.skip("the device side needs python3 (with venv) and systemctl")
    root, uploads, creds = tmp_path / "device-root", tmp_path / "uploads", tmp_path / "creds"
    uploads.mkdir()
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    argv = ["install-agent", "--host", sshd_device.host, "--port", str(sshd_device.port),
            "--identity", str(sshd_device.identity), "--known-hosts", str(sshd_device.known_hosts),
            "--root", str(root), "--upload-dir", str(uploads), "--package", str(_probe_wheel(tmp_path)),
            "--public-key", str(deploy_keys.public), "--credentials-dir", str(creds)]
    proc = _deploy(*argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"agent installed under {root}" in proc.stdout

    python = root / "opt/edge-agent/venv/bin/python"
    probe = subprocess.run([str(python), "-c", "import edge_deploy_probe as p; print(p.INSTALLED_BY)"],
                           capture_output=True, text=True, check=False)
    assert probe.stdout.strip() == "edge-deploy install-agent", probe.stderr
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == actions.DEFAULT_UNIT_FILE.read_bytes() and _mode(unit) == 0o644
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert wants.is_symlink() and os.readlink(wants).endswith("/edge-agent.service")  # enabled
    etc = root / "etc/edge-agent"
    # the shipped config with this host's device id (its host name: tests/integration/test_deploy_provision.py)
    shipped = tomllib.loads(actions.DEFAULT_CONFIG_FILE.read_text())
    assert tomllib.loads((etc / "config.toml").read_text()) == {**shipped, "device_id": "127.0.0.1"}
    assert _mode(etc / "config.toml") == 0o644
    assert (etc / "trusted.pub").read_bytes() == deploy_keys.public.read_bytes()
    assert _mode(etc / "credentials") == 0o700
    assert (etc / "credentials/mqtt-password").read_text() == "s3cret\n"
    for name in actions.CREDENTIALS:
        assert _mode(etc / "credentials" / name) == 0o600, name
    assert (etc / "credentials/mqtt-client.key").read_bytes() == b""  # placeholder for LoadCredential=
    assert list(uploads.iterdir()) == []  # every uploaded file removed, the wheel too
    assert not Path("/etc/systemd/system/edge-agent.service").exists()

    # again: the device's own configuration is kept, and still nothing is left behind
    (etc / "config.toml").write_text('device_id = "set-on-the-device"\n')
    proc = _deploy(*argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (etc / "config.toml").read_text() == 'device_id = "set-on-the-device"\n'
    assert list(uploads.iterdir()) == []


# --------------------------------------------------------------------------- SSH failures
# Each: one line per host, a non-zero exit, and nothing half-done on the device.


def _rows(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    for row in rows:
        assert "\n" not in str(row["detail"]) and "\n" not in str(row["summary"]), row
    assert "Traceback" not in proc.stderr, proc.stderr
    return rows


def _store_tree(state: Path) -> dict[str, str]:
    return {str(p.relative_to(state)): os.readlink(p) if p.is_symlink() else ("dir" if p.is_dir() else
            sha256_file(p)) for p in sorted(state.rglob("*")) if p.name != store_layout.LOCK_FILE}


def test_login_refused_with_a_wrong_key(sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet,
                                        tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    device = SshDevice(sshd_device.host, sshd_device.port, wrong, sshd_device.known_hosts,
                       sshd_device.agent_path)
    before = _store_tree(device_state)
    for argv in (["push", str(test_bundles.good)], ["rollback"], ["status"]):
        proc = _deploy(*argv, *device.ssh_args(), "--state-dir", str(device_state), "--json")
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        [row] = _rows(proc)
        assert row["summary"] == "login refused", row
        user = sshd_device.host.partition("@")[0]
        assert row["detail"] == (f"127.0.0.1:{sshd_device.port} refused the login as {user} with the key "
                                 f"{wrong} (publickey); check --identity and the device's authorized_keys")
    assert _store_tree(device_state) == before


def test_changed_host_key_refused(sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet,
                                  tmp_path: Path) -> None:
    """A device answering with another host key than the pinned one: refused, exit 2, one line."""
    impostor = tmp_path / "impostor_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    known_hosts = tmp_path / "known_hosts"
    pattern = f"[127.0.0.1]:{sshd_device.port}"
    known_hosts.write_text(f"{pattern} {' '.join(Path(f'{impostor}.pub').read_text().split()[:2])}\n")
    pinned = known_hosts.read_text()
    device = SshDevice(sshd_device.host, sshd_device.port, sshd_device.identity, known_hosts,
                       sshd_device.agent_path)
    before = _store_tree(device_state)
    for argv in (["push", str(test_bundles.good)], ["rollback"], ["status"]):
        proc = _deploy(*argv, *device.ssh_args(), "--state-dir", str(device_state), "--json")
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        [row] = _rows(proc)
        assert row["summary"] == "host key mismatch", row
        assert str(row["detail"]).startswith(f"refused: the host key of 127.0.0.1:{sshd_device.port} is not "
                                             f"the one pinned in {known_hosts}"), row
        assert str(row["detail"]).endswith(f"ssh-keygen -f {known_hosts} -R '{pattern}'"), row
    # the table says the same in one row
    proc = _deploy("rollback", *device.ssh_args(), "--state-dir", str(device_state))
    assert proc.returncode == 2
    [_header, row_line] = proc.stdout.splitlines()
    assert "FAILED" in row_line and "host key mismatch" in row_line and "@@@" not in proc.stdout + proc.stderr
    assert known_hosts.read_text() == pinned  # never re-pinned behind the operator's back
    assert _store_tree(device_state) == before


@pytest.fixture(params=["missing", "read-only", "full"])
def bad_upload_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory on the device uploads cannot go to: absent, read-only, or too small."""
    kind: str = request.param
    path = tmp_path / "uploads"
    if kind == "missing":
        yield kind, path
        return
    path.mkdir()
    if os.geteuid() != 0:
        if kind == "full":
            pytest.skip("a full filesystem needs a small tmpfs mount (root)")
        path.chmod(0o555)
        yield kind, path
        path.chmod(0o755)
        return
    options = "ro,size=64k" if kind == "read-only" else "size=8k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield kind, path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_failed_upload_leaves_nothing_on_the_device(
    sshd_device: SshDevice, device_state: Path, test_bundles: BundleSet, bad_upload_dir: tuple[str, Path]
) -> None:
    kind, uploads = bad_upload_dir
    assert _push(sshd_device, device_state, test_bundles.good).returncode == 0
    before = _store_tree(device_state)
    proc = _push(sshd_device, device_state, test_bundles.good_v2, "--upload-dir", str(uploads), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [row] = _rows(proc)
    assert row["summary"] == "upload failed", row
    size_kib = -(-test_bundles.good_v2.stat().st_size // 1024)
    expected = {
        "missing": f"cannot upload to {uploads} on the device: no such directory (see --upload-dir)",
        "read-only": f"cannot upload to {uploads} on the device: not writable (a read-only filesystem "
                     "or no permission; see --upload-dir)",
        "full": f"cannot upload to {uploads} on the device: 8 KiB free, {size_kib} KiB needed (see --upload-dir)",
    }[kind]
    assert row["detail"] == expected, row
    if uploads.is_dir():
        # mutation guarded: without the clean-up a partial bundle stays on the full disk
        assert list(uploads.iterdir()) == []
    assert _store_tree(device_state) == before


def test_rollback_refused_by_the_device(sshd_device: SshDevice, device_state: Path,
                                        test_bundles: BundleSet, tmp_path: Path) -> None:
    assert _push(sshd_device, device_state, test_bundles.good).returncode == 0
    before = _store_tree(device_state)
    proc = _deploy("rollback", *sshd_device.ssh_args(), "--state-dir", str(device_state), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [row] = _rows(proc)
    short = store_layout.active_model(device_state).manifest.short_sha  # type: ignore[union-attr]
    assert str(row["summary"]).startswith("rollback refused; active") and short in str(row["summary"])
    assert row["detail"] == "there is no previous model to roll back to"
    # a device whose agent cannot run at all answers with its shell's error, still one line
    missing = tmp_path / "no-such-agent"
    proc = _deploy("rollback", *sshd_device.ssh_args(), "--agent-path", str(missing),
                   "--state-dir", str(device_state), "--json")
    assert proc.returncode == 1
    [row] = _rows(proc)
    assert row["summary"] == "rollback failed" and str(missing) in str(row["detail"]), row
    assert "not found" in str(row["detail"]) or "No such file" in str(row["detail"]), row
    assert _store_tree(device_state) == before
