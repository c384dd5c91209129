"""The interpreter import: a clear error where no interpreter package exists (32-bit ARM)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_agent.cli.main import main
from edge_agent.errors import RuntimeLoadError
from edge_agent.runtimes import litert


@pytest.fixture()
def no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Raspberry Pi OS 32-bit: none of the three interpreter packages can be imported."""
    for name in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.usefixtures("no_interpreter")
@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
def test_32_bit_arm_is_told_to_use_the_64_bit_os(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    monkeypatch.setattr(litert.platform, "machine", lambda: machine)
    with pytest.raises(RuntimeLoadError) as info:
        litert._import_interpreter()
    assert str(info.value) == (f"no TFLite interpreter found: ai-edge-litert has no wheels for 32-bit ARM "
                               f"({machine}); install the 64-bit Raspberry Pi OS (docs/raspberry-pi.md)")


@pytest.mark.usefixtures("no_interpreter")
def test_elsewhere_the_fix_is_to_install_ai_edge_litert(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litert.platform, "machine", lambda: "aarch64")
    with pytest.raises(RuntimeLoadError, match=r"^no TFLite interpreter found; install ai-edge-litert "):
        litert._import_interpreter()


@pytest.mark.usefixtures("no_interpreter")
def test_edge_agent_check_prints_one_line(monkeypatch: pytest.MonkeyPatch, bundle_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(litert.platform, "machine", lambda: "armv7l")
    assert main(["check", "--bundle", str(bundle_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "32-bit ARM (armv7l)" in err and err.startswith("edge-agent: error: ")
