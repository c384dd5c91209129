"""edge-deploy pieces that need no device: keys, signing, targets, install steps, table."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import actions, cli
from deploy.ssh import DeployError, HostResult, Ssh, Target, collect_targets, parse_target
from edge_agent.errors import SignatureError
from edge_agent.model.bundle import read_bundle
from tests import deploy_helpers
from tests.fixtures_ssh import BundleSet


def test_keygen_sign_and_verify(tmp_path: Path, test_bundles: BundleSet,
                                capsys: pytest.CaptureFixture[str]) -> None:
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    assert cli.main(["keygen", "--private", str(priv), "--public", str(pub)]) == 0
    assert priv.stat().st_mode & 0o777 == 0o600
    assert cli.main(["keygen", "--private", str(priv), "--public", str(pub)]) == 2
    assert "exists" in capsys.readouterr().err
    unsigned = deploy_helpers.unsigned(test_bundles.good, tmp_path / "u.bundle")
    with pytest.raises(SignatureError):
        read_bundle(unsigned, pub)
    assert cli.main(["sign", str(unsigned), "--key", str(priv)]) == 0
    assert "signed" in capsys.readouterr().out
    assert read_bundle(unsigned, pub).signature_verified
    assert cli.main(["sign", str(tmp_path / "missing.bundle"), "--key", str(priv)]) == 2


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("pi@10.0.0.5", "pi@10.0.0.5", 22), ("pi@cam-1:2222", "pi@cam-1", 2222), ("cam", "cam", 22)],
)
def test_parse_target(text: str, host: str, port: int) -> None:
    assert parse_target(text, 22) == Target(host, port)


@pytest.mark.parametrize("text", ["", "-oProxyCommand=x", "a b"])
def test_parse_target_refuses(text: str) -> None:
    with pytest.raises(DeployError):
        parse_target(text, 22)


def test_keygen_needs_explicit_paths_and_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["keygen"], ["keygen", "--private", "a.key"], ["keygen", "--public", "a.pub"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-deploy: error: keygen needs") and err.count("\n") == 1, err
        assert "--public" in err if "--public" not in argv else "--private" in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    pub.write_text("someone else's key\n")
    assert cli.main(["keygen", "--private", str(priv), "--public", str(pub)]) == 2
    assert f"{pub} exists; use --force" in capsys.readouterr().err
    assert not priv.exists() and pub.read_text() == "someone else's key\n"
    assert cli.main(["keygen", "--private", str(priv), "--public", str(pub), "--force"]) == 0
    assert "BEGIN PUBLIC KEY" in pub.read_text() and priv.stat().st_mode & 0o777 == 0o600
    old_private = priv.read_bytes()
    assert cli.main(["keygen", "--private", str(priv), "--public", str(tmp_path / "new.pub")]) == 2
    assert priv.read_bytes() == old_private and not (tmp_path / "new.pub").exists()
    assert cli.main(["keygen", "--private", str(priv), "--public", str(tmp_path / "no" / "k.pub"), "--force"]) == 2
    assert "does not exist" in capsys.readouterr().err and priv.read_bytes() == old_private


def test_hosts_file_and_dedup(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# fleet\npi@a\n\npi@b:2200  # lab\npi@a\n")
    targets = collect_targets(["pi@c"], hosts, 22)
    assert [str(t) for t in targets] == ["pi@c", "pi@a", "pi@b:2200"]
    with pytest.raises(DeployError, match="no hosts"):
        collect_targets([], None, 22)


def test_ssh_options_are_safe() -> None:
    ssh = Ssh(Target("pi@a", 2200), Path("/k"), Path("/kh"))
    argv = ssh.ssh_argv("true")
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=accept-new" in argv
    assert "UserKnownHostsFile=/kh" in argv and argv[-2:] == ["pi@a", "true"]
    assert ssh.scp_argv(Path("/x"), "/tmp/y")[-1] == "pi@a:/tmp/y"


def test_install_agent_steps(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("secret")
    parser = cli.build_parser()
    args = parser.parse_args(["install-agent", "--host", "pi@a", "--sudo", "--credentials-dir",
                              str(tmp_path)])
    steps = actions.install_agent_steps(args)
    commands = [s.command for s in steps if s.command]
    assert all(c.startswith("sudo -n ") for c in commands)
    uploads = [s.upload for s in steps if s.upload]
    assert actions.DEFAULT_UNIT_FILE in uploads and actions.DEFAULT_CONFIG_FILE in uploads
    assert steps[-1].description == "enable and start edge-agent"
    assert any("credentials/mqtt-password (mode 0600)" in s.description for s in steps)
    assert not any("mqtt-client.key (mode" in s.description for s in steps)
    assert isinstance(args, argparse.Namespace)


def test_table() -> None:
    out = io.StringIO()
    cli.print_table([HostResult(Target("pi@a"), True, "installed; active x 1 (abc)", "prev"),
                     HostResult(Target("pi@bb", 2222), False, "upload failed", "refused")], out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("HOST") and "FAILED" in lines[2] and lines[2].startswith("pi@bb:2222")


def test_ota_commands_registered_with_the_mqtt_publisher() -> None:
    # In a fresh interpreter: registration must not depend on what other tests imported.
    code = (
        "import tempfile\n"
        "from edge_agent.messaging.envelope import EnvelopeFactory\n"
        "from edge_agent.messaging.publishers import create_publisher\n"
        "state = tempfile.mkdtemp()\n"
        "pub = create_publisher('mqtt', config={'broker': 'mqtt://127.0.0.1:1'},\n"
        "                       envelope=EnvelopeFactory('dev1', None), state_dir=state)\n"
        "from edge_agent.remote.inbox import attach_inbox\n"
        "COMMANDS = attach_inbox(pub).commands.registry\n"
        "assert COMMANDS['update_model'].privileged and COMMANDS['rollback'].privileged\n"
        "assert not COMMANDS['ping'].privileged\n"
        "pub.outbox.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_device_commands_name_the_service_store_unless_told_otherwise() -> None:
    args = cli.build_parser().parse_args(["status", "--host", "pi@dev1"])
    assert actions._agent_command(args, "models", "--json").endswith("models --json --state-dir /var/lib/edge-agent")
    args = cli.build_parser().parse_args(["status", "--host", "pi@dev1", "--state-dir", "/srv/edge store"])
    assert actions._agent_command(args, "models").endswith("models --state-dir '/srv/edge store'")


def test_install_agent_steps_under_a_root_remove_every_upload(tmp_path: Path) -> None:
    wheel = tmp_path / "edge_infer-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    (tmp_path / "mqtt-password").write_text("secret")
    key = tmp_path / "signing.pub"
    key.write_text("key")
    args = cli.build_parser().parse_args([
        "install-agent", "--host", "pi@a", "--root", "/srv/image", "--upload-dir", "/var/tmp/up",
        "--package", str(wheel), "--credentials-dir", str(tmp_path), "--public-key", str(key)])
    steps = actions.install_agent_steps(args)
    for number, step in enumerate(steps):
        if step.upload is not None:
            # the step after an upload installs the file and removes it, whether it worked or not
            assert step.destination.startswith("/var/tmp/up/")
            assert steps[number + 1].command.endswith(f"; rc=$?; rm -f {step.destination}; exit $rc")
    assert sum(s.upload is not None for s in steps) == 5  # wheel, unit, credential, config, key
    commands = "\n".join(s.command for s in steps if s.command)
    for path in ("/srv/image/opt/edge-agent/venv/bin/pip", "/srv/image/etc/systemd/system/edge-agent.service",
                 "/srv/image/etc/edge-agent/config.toml", "/srv/image/etc/edge-agent/credentials/mqtt-password",
                 "/srv/image/etc/edge-agent/trusted.pub"):
        assert path in commands, path
    assert " /etc/" not in commands and " /opt/" not in commands
    # enabled inside the root, never started on the machine it runs on
    assert steps[-1].command == "systemctl --root=/srv/image enable edge-agent"
    assert "--now" not in commands and "daemon-reload" not in commands


def test_install_agent_default_paths_unchanged() -> None:
    args = cli.build_parser().parse_args(["install-agent", "--host", "pi@a"])
    commands = "\n".join(s.command for s in actions.install_agent_steps(args) if s.command)
    assert f" {actions.UNIT_PATH};" in commands and f"{actions.CONFIG_DIR}/config.toml" in commands
    assert "python3 -m venv /opt/edge-agent/venv" in commands
    assert all(s.destination.startswith("/tmp/") for s in actions.install_agent_steps(args) if s.upload)
    assert "systemctl daemon-reload && systemctl enable --now edge-agent || exit 1; " \
        "systemctl is-active --quiet edge-agent && exit 0; " in actions.install_agent_steps(args)[-1].command


@pytest.mark.parametrize("flag", ["--root", "--upload-dir", "--venv"])
def test_device_paths_must_be_absolute(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["install-agent", "--host", "pi@a", "--dry-run", flag, "relative/dir"]) == 2
    err = capsys.readouterr().err
    assert err == (f"edge-deploy: error: {flag} must be an absolute path on the device without spaces, "
                   "not 'relative/dir'\n")
