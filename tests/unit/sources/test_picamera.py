"""The Pi camera source where Picamera2 is not installed (as here): one clear line pointing to exec:."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from edge_agent.config import SourceSection
from edge_agent.errors import SourceError
from edge_agent.sources import create_source, detect_source_type
from edge_agent.sources.picamera import camera_number

pytestmark = pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed")


def test_without_picamera2_start_says_what_to_do() -> None:
    source = create_source(SourceSection(uri="picamera2:1"))
    with pytest.raises(SourceError) as info:
        source.start()
    message = str(info.value)
    assert "\n" not in message
    for hint in ("python3-picamera2", "--system-site-packages", '--source "exec:rpicam-vid -t 0 --codec mjpeg -o -"'):
        assert hint in message


def test_camera_numbers() -> None:
    assert [detect_source_type(u) for u in ("picamera2", "PiCamera2:1", "exec:ffmpeg -")] == [
        "picamera2", "picamera2", "exec"]
    assert (camera_number("picamera2"), camera_number("picamera2:1")) == (0, 1)
    with pytest.raises(SourceError, match="picamera2:INDEX"):
        camera_number("picamera2:front")


def test_picamera2_built_for_another_numpy_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's python3-picamera2 in a venv with numpy 2 fails in simplejpeg with a ValueError, not an ImportError."""
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text('raise ValueError("numpy.dtype size changed, may indicate binary '
                                         'incompatibility. Expected 96 from C header, got 88 from PyObject")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(SourceError) as info:
        create_source(SourceSection(uri="picamera2")).start()
    message = str(info.value)
    assert "binary incompatibility" in message and "pip install --force-reinstall simplejpeg" in message
    assert "exec:rpicam-vid" in message and "\n" not in message
