"""Device ids: the rules every part shares and the default derived from the machine."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from edge_agent import device_id as ids
from edge_agent.config import load_config
from edge_agent.errors import ConfigError


@pytest.mark.parametrize("text", ["cam-1", "a", "Cam_1.lab", "9" * 64])
def test_valid_ids(text: str) -> None:
    assert ids.is_device_id(text)


@pytest.mark.parametrize("text", ["", "-cam", ".cam", "cam/1", "cam+", "cam#", "cam 1", "cam-1\n", "c" * 65, "café"])
def test_invalid_ids(text: str) -> None:
    assert not ids.is_device_id(text)


@pytest.mark.parametrize(("raw", "expected"), [
    ("Cam_Kitchen.LAN", "cam_kitchen.lan"),
    ("cam kitchen/2", "cam-kitchen-2"),
    ("--x--", "x"),
    ("::1", "1"),
    ("###", ""),
    ("a" * 80, "a" * 64),
])
def test_sanitize(raw: str, expected: str) -> None:
    assert ids.sanitize(raw) == expected


def test_sanitize_never_ends_with_a_separator_after_truncation() -> None:
    assert ids.sanitize("a" * 9 + "-b", max_length=10) == "a" * 9


def test_machine_id_read_from_the_first_valid_file(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.write_text("not-a-machine-id\n")
    good.write_text("0123456789abcdef0123456789abcdef\n")
    assert ids.machine_id([tmp_path / "missing", bad, good]) == "0123456789abcdef0123456789abcdef"
    assert ids.machine_id([bad]) == ""


@pytest.mark.parametrize(("host", "machine", "expected"), [
    ("raspberrypi", "3f2a9c1e" + "0" * 24, "raspberrypi-3f2a9c1e"),
    ("", "3f2a9c1e" + "0" * 24, "edge-3f2a9c1e"),
    ("###", "3f2a9c1e" + "0" * 24, "edge-3f2a9c1e"),
    ("Pi Lab", "", "pi-lab"),
    ("", "", ids.FALLBACK_ID),
    ("h" * 80, "3f2a9c1e" + "0" * 24, "h" * 55 + "-3f2a9c1e"),
])
def test_derive(host: str, machine: str, expected: str) -> None:
    device_id, source = ids.derive_device_id(host, machine)
    assert device_id == expected and ids.is_device_id(device_id) and source


def test_config_default_is_derived_from_this_machine_and_logged(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.device_id"):
        cfg = load_config(None, {"state_dir": tmp_path}, environ={})
    assert cfg.device_id == ids.derive_device_id(socket.gethostname(), ids.machine_id())[0]
    assert cfg.device_id != "dev1"
    assert f"device_id not configured: using {cfg.device_id!r}" in caplog.text


def test_configured_id_is_not_derived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.device_id"):
        cfg = load_config(None, {"state_dir": tmp_path, "device_id": "cam-7"}, environ={})
    assert cfg.device_id == "cam-7" and "not configured" not in caplog.text


def test_config_refuses_a_trailing_newline(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device_id"):
        load_config(None, {"state_dir": tmp_path, "device_id": "cam-7\n"}, environ={})
