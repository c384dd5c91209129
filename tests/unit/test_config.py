"""Configuration: strict TOML validation, env and CLI precedence, remote settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import (
    AgentConfig,
    default_state_dir,
    env_overrides,
    load_config,
    parse_event_policy,
    validate_settings,
)
from edge_agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_stdout_is_default_publisher(tmp_path: Path) -> None:
    cfg = load_config(None, {"state_dir": tmp_path}, environ={})
    assert cfg.device_id != "dev1"  # derived from the machine: tests/unit/test_device_id.py
    assert cfg.events.policy == "change"
    assert cfg.publisher_kind == "stdout"
    assert cfg.bundle_path == tmp_path / "models" / "current"


def test_full_file_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, """
device_id = "cam-7"
state_dir = "/var/lib/edge-agent"
max_frames = 10
[model]
bundle = "m.bundle"
threads = 2
delegate = "libedgetpu.so.1"
delegate_options = { device = "usb" }
[source]
uri = "rtsp://cam/stream"
fps = 5
[events]
policy = "interval:2.5"
score_threshold = 0.4
[health]
interval_s = 10
[mqtt]
broker = "mqtts://broker.example:8883"
ca_file = "/etc/ca.pem"
protocol = 3.1
keepalive = 20
will_delay = 5
[outbox]
max_bytes = 1048576
""".replace("protocol = 3.1", 'protocol = "3.1.1"'))
    cfg = load_config(path, environ={})
    assert cfg.device_id == "cam-7" and cfg.model.threads == 2
    assert cfg.model.delegate_options == {"device": "usb"}
    assert cfg.source.fps == 5 and cfg.events.policy == "interval:2.5"
    assert cfg.mqtt.protocol == "3.1.1" and cfg.publisher_kind == "mqtt"


def test_unknown_key_is_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nthreds = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "unknown setting 'model.threds'" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[model]\nthreads = 0\n", "model.threads"),
        ("[events]\npolicy = \"sometimes\"\n", "events.policy"),
        ("[mqtt]\nbroker = \"http://x\"\n", "mqtt.broker"),
        ("device_id = \"a/b\"\n", "device_id"),
        ("[mqtt]\ncert_file = \"c.pem\"\n", "mqtt"),
        ("[source]\nfps = -1\n", "source.fps"),
        ("[motion]\nthreshold = 0\n", "motion.threshold"),
        ("[motion]\nmin_area_ratio = 0\n", "motion.min_area_ratio"),
        ("[motion]\nhold_s = -1\n", "motion.hold_s"),
        ("[motion]\nmax_interval_s = 0\n", "motion.max_interval_s"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid '{where}'"):
        load_config(write(tmp_path, text), environ={})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"), environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id = \"file\"\n[model]\nthreads = 2\n[health]\ninterval_s = 7\n")
    env = {"EDGE_AGENT_DEVICE_ID": "env", "EDGE_AGENT_MODEL__THREADS": "3", "OTHER": "x"}
    cfg = load_config(path, {"device_id": "cli", "model": {"threads": None}}, environ=env)
    assert cfg.device_id == "cli"  # CLI beats env
    assert cfg.model.threads == 3  # env beats file; None on the CLI means "not given"
    assert cfg.health.interval_s == 7


def test_env_values_are_typed_and_unknown_env_keys_rejected() -> None:
    assert env_overrides({"EDGE_AGENT_SOURCE__FPS": "2.5", "EDGE_AGENT_MQTT__BROKER": "mqtt://h:1"}) == {
        "source": {"fps": 2.5}, "mqtt": {"broker": "mqtt://h:1"},
    }
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        load_config(None, environ={"EDGE_AGENT_BOGUS": "1"})


def test_password_file_resolves_in_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-pass").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = AgentConfig.model_validate({"mqtt": {"password_file": "mqtt-pass"}})
    assert cfg.mqtt.password_path() == tmp_path / "mqtt-pass"


def test_state_dir_defaults_to_state_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert AgentConfig().state_dir == tmp_path


def test_event_policy_parsing() -> None:
    assert parse_event_policy("every") == ("every", 0.0)
    assert parse_event_policy("interval:1.5") == ("interval", 1.5)
    for bad in ("interval:", "interval:0", "often", "interval:-1"):
        with pytest.raises(ValueError):
            parse_event_policy(bad)


def test_remote_settings_validation() -> None:
    s = validate_settings({"events": "every", "score_threshold": 0.3, "fps": 2, "health_interval_s": 5})
    assert s.events == "every" and s.fps == 2
    with pytest.raises(ConfigError, match="unknown setting 'model'"):
        validate_settings({"model": "x"})
    with pytest.raises(ConfigError, match="score_threshold"):
        validate_settings({"score_threshold": 2})
    with pytest.raises(ConfigError):
        validate_settings({"events": "sometimes"})


def test_state_dir_default_is_never_relative_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr("edge_agent.config.SERVICE_STATE_DIR", tmp_path / "no-service-store")
    monkeypatch.setattr("edge_agent.config.os.geteuid", lambda: 1000)  # an unprivileged developer
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert AgentConfig().state_dir == tmp_path / "xdg" / "edge-agent"
    assert load_config(None, {}, environ={}).state_dir == tmp_path / "xdg" / "edge-agent"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: relative values are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert AgentConfig().state_dir == tmp_path / "home" / ".local" / "state" / "edge-agent"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert AgentConfig().state_dir.is_absolute()
    several = {"STATE_DIRECTORY": "/var/lib/edge-agent:/var/lib/other"}
    assert default_state_dir(environ=several) == Path("/var/lib/edge-agent")
    assert default_state_dir(environ={"XDG_STATE_HOME": "/x"}) == Path("/x/edge-agent")


def test_state_dir_default_is_the_service_store_for_root_or_when_writable(tmp_path: Path) -> None:
    service, xdg = tmp_path / "var-lib-edge-agent", {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert default_state_dir(environ=xdg, service_dir=service, is_root=True) == service  # created on install
    assert default_state_dir(environ=xdg, service_dir=service, is_root=False) == tmp_path / "xdg" / "edge-agent"
    service.mkdir()
    assert default_state_dir(environ=xdg, service_dir=service, is_root=False) == service
    service.chmod(0o500)
    try:
        if not os.access(service, os.W_OK):  # root ignores permissions
            assert default_state_dir(environ=xdg, service_dir=service, is_root=False) == tmp_path / "xdg" / "edge-agent"
    finally:
        service.chmod(0o700)
    assert default_state_dir(environ={"STATE_DIRECTORY": "/s"}, service_dir=service, is_root=True) == Path("/s")


def test_model_store_commands_share_the_agent_default() -> None:
    from edge_agent.store import layout as store_layout

    assert store_layout.default_state_dir is default_state_dir  # install-model/models/rollback find `run`'s store


@pytest.mark.parametrize(("listen", "address"), [
    ("8080", ("127.0.0.1", 8080)), (" 0.0.0.0:9000 ", ("0.0.0.0", 9000)), ("[::1]:80", ("::1", 80)),
    ("cam.local:0", ("cam.local", 0)), (8080, ("127.0.0.1", 8080)),
])
def test_preview_listen_forms(listen: object, address: tuple[str, int]) -> None:
    assert load_config(cli={"preview": {"listen": listen}}, environ={}).preview.address == address


def test_preview_is_off_by_default_and_set_from_toml_or_env(tmp_path: Path) -> None:
    assert load_config(environ={}).preview.address is None
    config = tmp_path / "agent.toml"
    config.write_text("[preview]\nlisten = 8081\nmax_clients = 2\n")
    loaded = load_config(config, environ={})
    assert loaded.preview.address == ("127.0.0.1", 8081) and loaded.preview.max_clients == 2
    assert load_config(environ={"EDGE_AGENT_PREVIEW__LISTEN": "0.0.0.0:8082"}).preview.address == ("0.0.0.0", 8082)


@pytest.mark.parametrize("listen", ["x", "1:2:3", "70000", "host:", ":80", "a b:80", "[::1]"])
def test_bad_preview_listen_names_the_setting_and_the_forms(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid 'preview.listen': .* must be PORT or HOST:PORT"):
        load_config(cli={"preview": {"listen": listen}}, environ={})


def test_metrics_are_off_by_default_and_set_from_toml_env_or_command_line(tmp_path: Path) -> None:
    import argparse

    from edge_agent.cli.run import cli_settings, register

    assert load_config(environ={}).metrics.address is None
    config = tmp_path / "agent.toml"
    config.write_text("[metrics]\nlisten = 9100\n")
    assert load_config(config, environ={}).metrics.address == ("127.0.0.1", 9100)
    assert load_config(environ={"EDGE_AGENT_METRICS__LISTEN": "0.0.0.0:9101"}).metrics.address == ("0.0.0.0", 9101)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["run", "--metrics", "[::1]:9102"])
    assert load_config(config, cli_settings(args), environ={}).metrics.address == ("::1", 9102)
    with pytest.raises(ConfigError, match=r"invalid 'metrics.listen': .* must be PORT or HOST:PORT"):
        load_config(cli={"metrics": {"listen": "host:"}}, environ={})


def test_motion_gating_from_file_env_and_command_line(tmp_path: Path) -> None:
    from edge_agent.cli.run import cli_settings, register

    assert not load_config(None, environ={}).motion.enabled
    path = write(tmp_path, "[motion]\nthreshold = 40\nmin_area_ratio = 0.01\nhold_s = 1.5\nmax_interval_s = 60\n")
    cfg = load_config(path, environ={"EDGE_AGENT_MOTION__ENABLED": "true"})
    assert (cfg.motion.enabled, cfg.motion.threshold, cfg.motion.min_area_ratio) == (True, 40, 0.01)
    assert (cfg.motion.hold_s, cfg.motion.max_interval_s) == (1.5, 60.0)
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    on = cli_settings(parser.parse_args(["run", "--motion"]))
    off = cli_settings(parser.parse_args(["run"]))
    assert load_config(None, on, environ={}).motion.enabled
    assert not load_config(path, off, environ={}).motion.enabled  # not given: the file's (default) stays
