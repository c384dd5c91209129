"""install-agent's per-host identity (deploy/provision.py): ids, configs, certificates."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from deploy import actions, cli
from deploy.pki import Pki
from deploy.provision import (
    HostSetup,
    device_certificate,
    device_id_for,
    host_config,
    plan_device_ids,
    set_toml_key,
)
from deploy.ssh import DeployError, Target


@pytest.mark.parametrize(("host", "template", "expected"), [
    ("pi@cam-kitchen", None, "cam-kitchen"),
    ("pi@Cam_Kitchen.LAN", None, "cam_kitchen.lan"),
    ("cam-01", None, "cam-01"),
    ("pi@10.0.0.5", None, "10.0.0.5"),
    ("pi@[fe80::1]", None, "fe80-1"),
    ("pi@kitchen.lan", "cam-{host}", "cam-kitchen.lan"),
    ("pi@kitchen.lan", "cam-{short}", "cam-kitchen"),
    ("pi@10.0.0.5", "cam-{short}", "cam-10.0.0.5"),
    ("pi@kitchen", "fixed-id", "fixed-id"),
])
def test_device_id_for(host: str, template: str | None, expected: str) -> None:
    assert device_id_for(Target(host), template) == expected


def test_instances_on_one_host_get_their_own_ids() -> None:
    assert device_id_for(Target("pi@gate"), None, "door") == "gate-door"
    assert device_id_for(Target("pi@gate.lan"), "{instance}.{short}", "yard") == "yard.gate"
    with pytest.raises(DeployError, match="needs --instance"):
        device_id_for(Target("pi@gate"), "{host}-{instance}")


@pytest.mark.parametrize(("template", "message"), [
    ("cam-{user}", "only {host}, {short} and {instance}"),
    ("cam-{host.__class__}", "only {host}, {short} and {instance}"),
    ("cam-{host!r}", "only {host}, {short} and {instance}"),
    ("cam-{host:>80}", "only {host}, {short} and {instance}"),
    ("cam-{", "--device-id-template"),
    ("cam/{host}", "not a device id"),
    ("{host}" * 20, "not a device id"),
    ("x" * 201, "longer than"),
])
def test_bad_templates_refused(template: str, message: str) -> None:
    with pytest.raises(DeployError) as info:
        device_id_for(Target("pi@kitchen"), template)
    assert message in str(info.value)


def test_a_host_name_with_nothing_usable_is_refused() -> None:
    with pytest.raises(DeployError, match="no usable device id"):
        device_id_for(Target("pi@###"))


def test_plan_refuses_shared_ids() -> None:
    targets = [Target("pi@a.x"), Target("pi@a.y", 2222)]
    assert plan_device_ids(targets, None) == {targets[0]: "a.x", targets[1]: "a.y"}
    with pytest.raises(DeployError, match=re.escape("pi@a.x and pi@a.y:2222 would both get device id 'cam-a'")):
        plan_device_ids(targets, "cam-{short}")


SHIPPED = actions.DEFAULT_CONFIG_FILE.read_text()


def test_host_config_from_the_shipped_config() -> None:
    text = host_config(SHIPPED, "cam-7", broker="mqtts://b.example:8883",
                       credentials="/run/credentials/edge-agent@front.service")
    data = tomllib.loads(text)
    assert data["device_id"] == "cam-7"
    assert data["mqtt"]["broker"] == "mqtts://b.example:8883"
    assert data["mqtt"]["cert_file"] == "/run/credentials/edge-agent@front.service/mqtt-client.crt"
    assert data["mqtt"]["key_file"] == "/run/credentials/edge-agent@front.service/mqtt-client.key"
    assert data["mqtt"]["ca_file"] == "/run/credentials/edge-agent@front.service/mqtt-ca.crt"
    base = tomllib.loads(SHIPPED)
    assert data["source"] == base["source"] and data["model"] == base["model"]  # the rest is kept
    assert SHIPPED.splitlines()[0] in text  # comments too


def test_set_toml_key_adds_missing_keys_and_sections() -> None:
    text = set_toml_key("# a comment\n[source]\nuri = 'x'\n", None, "device_id", "cam-1")
    text = set_toml_key(text, "mqtt", "broker", "mqtt://b")
    text = set_toml_key(text, "source", "type", "camera")
    data = tomllib.loads(text)
    assert data == {"device_id": "cam-1", "source": {"uri": "x", "type": "camera"}, "mqtt": {"broker": "mqtt://b"}}
    assert text.startswith("# a comment\n")
    assert tomllib.loads(set_toml_key("", None, "device_id", "a")) == {"device_id": "a"}
    # a commented-out key is left alone, the real one replaced
    text = set_toml_key('# device_id = "old"\ndevice_id = "old"\n', None, "device_id", "new")
    assert text == '# device_id = "old"\ndevice_id = "new"\n'


def test_set_toml_key_refuses_what_it_cannot_edit() -> None:
    with pytest.raises(DeployError, match="cannot set device_id in the config"):
        set_toml_key('device_id = """a\ndevice_id = 1\n"""\n', None, "device_id", "b")
    with pytest.raises(DeployError, match="cannot set broker"):
        set_toml_key('mqtt.broker = "a"\n', "mqtt", "broker", "b")  # dotted keys, no [mqtt] header
    with pytest.raises(DeployError, match="cannot set"):
        set_toml_key("[mqtt\n", None, "device_id", "b")


def test_device_certificate_reused_while_valid(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    pair = device_certificate(pki, "cam-1")
    first = pki.active("cam-1")
    assert first is not None and pair.cert.is_file()
    assert device_certificate(pki, "cam-1") == pair and pki.entries() == [first]
    pair.key.unlink()  # files lost: a new certificate, not a failure
    device_certificate(pki, "cam-1")
    second = pki.active("cam-1")
    assert second is not None and second.serial != first.serial and pair.key.is_file()
    pki.revoke("cam-1")
    device_certificate(pki, "cam-1")
    assert len(pki.entries()) == 3


def _install_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["install-agent", "--host", "pi@cam-1", *extra])


def test_steps_install_the_certificate_and_check_the_kept_config(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    config = tmp_path / "cam-1.toml"
    config.write_text(host_config(SHIPPED, "cam-1"))
    host = HostSetup("cam-1", config, pki.pair("cam-1"), pki.ca_cert)
    steps = actions.install_agent_steps(_install_args(tmp_path, "--pki", str(pki.directory)), host)
    uploads = {s.upload: s.destination for s in steps if s.upload}
    assert config in uploads and pki.pair("cam-1").key in uploads and pki.ca_cert in uploads
    commands = "\n".join(s.command for s in steps)
    pair = pki.pair("cam-1")
    for name, local in (("mqtt-ca.crt", pki.ca_cert), ("mqtt-client.crt", pair.cert), ("mqtt-client.key", pair.key)):
        assert f"install -m 0600 {uploads[local]} /etc/edge-agent/credentials/{name}" in commands, name
    check = next(i for i, step in enumerate(steps) if "grep -qxF" in step.command)
    assert "test ! -e /etc/edge-agent/config.toml || grep -qxF 'device_id = \"cam-1\"' /etc/edge-agent/config.toml" \
        in steps[check].command
    # before any credential or the config is replaced
    assert check < min(i for i, step in enumerate(steps) if step.upload in (pki.ca_cert, pair.cert, pair.key, config))
    forced = actions.install_agent_steps(_install_args(tmp_path, "--force-config"), host)
    assert "grep" not in "\n".join(s.command for s in forced)


@pytest.mark.parametrize(("argv", "message"), [
    (["--broker", "http://x"], "--broker must be an mqtt:// or mqtts:// URL"),
    (["--pki", "/nonexistent-pki"], "no fleet CA"),
    (["--device-id-template", "{nope}"], "only {host}, {short} and {instance}"),
])
def test_install_agent_operator_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["install-agent", "--host", "pi@cam-1", "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_pki_refused_with_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = Pki.init(tmp_path / "pki")
    code = cli.main(["install-agent", "--host", "pi@gate", "--dry-run", "--pki", str(pki.directory),
                     "--instance", "door"])
    assert code == 2 and "--pki cannot be used with --instance" in capsys.readouterr().err


def test_pki_and_client_credentials_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = Pki.init(tmp_path / "pki")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-client.key").write_text("x")
    code = cli.main(["install-agent", "--host", "pi@cam-1", "--dry-run", "--pki", str(pki.directory),
                     "--credentials-dir", str(creds)])
    assert code == 2 and "remove them from --credentials-dir" in capsys.readouterr().err
