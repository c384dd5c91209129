"""The shipped unit file passes systemd-analyze verify (silently) and security --threshold=4."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.service"
ANALYZE = shutil.which("systemd-analyze")
EXEC = "/opt/edge-agent/venv/bin/edge-agent"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    if ANALYZE is None:
        pytest.skip("systemd-analyze not installed")
    text = UNIT.read_text()
    assert EXEC in text
    # verify checks that ExecStart exists: point the copy at a real binary
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(EXEC, shutil.which("true") or "/bin/true"))
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False,
                          cwd="/")


def test_verify_prints_nothing(unit_copy: Path) -> None:
    proc = _analyze("verify", str(unit_copy))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_verify_would_complain(tmp_path: Path, unit_copy: Path) -> None:
    broken = tmp_path / "broken.service"
    broken.write_text(unit_copy.read_text().replace("Type=notify", "Type=notifyy"))
    proc = _analyze("verify", str(broken))
    assert proc.stdout + proc.stderr != ""


def _exposure(text: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", text)
    assert match, text
    return float(match.group(1))


def test_security_below_threshold(unit_copy: Path, tmp_path: Path) -> None:
    """Exposure at most 4.0 as systemd prints it.

    systemd 252 compares --threshold with the exposure on its internal 0-100
    scale (the printed 0.0-10.0 value times ten), so "4" on the printed scale
    is --threshold=40 there; a unit that may open Internet sockets cannot get
    below 0.7 printed, so a literal --threshold=4 only passes on versions that
    use the printed scale. We check both the exit status and the printed value.
    """
    proc = _analyze("security", "--offline=true", "--threshold=40", str(unit_copy))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _exposure(proc.stdout) <= 2.0  # keep today's margin (1.5 with systemd 252)
    # and the check is real: a bare unit fails the same threshold
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    proc = _analyze("security", "--offline=true", "--threshold=40", str(bare))
    assert proc.returncode != 0 and _exposure(proc.stdout) > 4.0


def test_unit_contract() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "DynamicUser": "yes",
        "StateDirectory": "edge-agent", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "DevicePolicy": "closed", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "WatchdogSec" in settings
    assert {"char-video4linux rw", "char-alsa rw"} <= set(settings["DeviceAllow"])
    assert any(v.startswith("mqtt-password:") for v in settings["LoadCredential"])
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


TEMPLATE = UNIT.with_name("edge-agent@.service")
# The only lines in which edge-agent@.service may differ from edge-agent.service: what makes an
# instance (its config, state directory and name). Every hardening line is shared.
INSTANCE_LINES = ("Description=", "ConditionPathExists=", "ExecStart=", "StateDirectory=")


def _settings_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_template_is_the_unit_with_an_instance() -> None:
    """edge-agent@.service runs with the same sandbox as edge-agent.service; only the instance lines differ."""
    unit, template = _settings_lines(UNIT), _settings_lines(TEMPLATE)
    assert [line for line in unit if not line.startswith(INSTANCE_LINES)] == \
        [line for line in template if not line.startswith(INSTANCE_LINES)]
    instance = {line.partition("=")[0]: line.partition("=")[2] for line in template if line.startswith(INSTANCE_LINES)}
    assert instance["ExecStart"].endswith("--config /etc/edge-agent/%i.toml")
    assert instance["StateDirectory"] == "edge-agent-%i"
    assert instance["ConditionPathExists"] == "/var/lib/edge-agent-%i/models/current"
    assert "%i" in instance["Description"]


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_start_waits_for_the_first_model(unit: Path) -> None:
    """Installed before any model, a start is skipped by a condition on the store, not failed (and retried)."""
    text = unit.read_text()
    state = "edge-agent-%i" if "@" in unit.name else "edge-agent"
    assert f"ConditionPathExists=/var/lib/{state}/models/current" in text
    assert f"StateDirectory={state}\n" in text
