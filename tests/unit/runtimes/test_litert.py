"""The interpreter import: a clear error where no interpreter package exists (32-bit ARM)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_agent.cli.main import main
from edge_agent.runtimes import litert


@pytest.fixture()
def no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Raspberry Pi OS 32-bit: none of the three interpreter packages can be imported."""
    for name in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(("machine", "pointer_bytes"), [("armv7l", 4), ("armv6l", 4), ("aarch64", 4)])
def test_32_bit_arm_is_told_to_use_the_64_bit_os(machine: str, pointer_bytes: int) -> None:
    # ("aarch64", 4): Raspberry Pi OS 32-bit on a Pi 4/5 runs a 64-bit kernel, so uname says aarch64
    assert litert._no_interpreter_message(machine, pointer_bytes) == (
        f"no TFLite interpreter found: ai-edge-litert has no wheels for 32-bit ARM ({machine}); "
        "install the 64-bit Raspberry Pi OS (docs/raspberry-pi.md)")


@pytest.mark.parametrize(("machine", "pointer_bytes"), [("aarch64", 8), ("x86_64", 8), ("i686", 4)])
def test_elsewhere_the_advice_is_pip_install(machine: str, pointer_bytes: int) -> None:
    assert litert._no_interpreter_message(machine, pointer_bytes) == (
        "no TFLite interpreter found; install ai-edge-litert (pip install ai-edge-litert)")


@pytest.mark.usefixtures("no_interpreter")
def test_edge_agent_check_prints_one_line(monkeypatch: pytest.MonkeyPatch, bundle_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(litert.platform, "machine", lambda: "armv7l")
    assert main(["check", "--bundle", str(bundle_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "32-bit ARM (armv7l)" in err and err.startswith("edge-agent: error: ")
