"""Persisted remote overrides: a damaged file is set aside, one with refused values ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.agent.settings import Settings
from edge_agent.config import OVERRIDES_FILE, load_config
from edge_agent.util.statefiles import set_aside_counts


def _settings(tmp_path: Path) -> Settings:
    return Settings(load_config(None, {"state_dir": tmp_path}, environ={}))


def test_overrides_are_loaded(tmp_path: Path) -> None:
    (tmp_path / OVERRIDES_FILE).write_text(json.dumps({"version": 4, "settings": {"fps": 3.0}}))
    settings = _settings(tmp_path)
    settings.load(tmp_path)
    assert (settings.version, settings.fps) == (4, 3.0)


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"{", b"[1, 2]", b'{"version": "x", "settings": {}}',
                                     b'{"version": 1, "settings": [1]}', b"[" * 100_000])
def test_a_damaged_overrides_file_is_set_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / OVERRIDES_FILE).write_bytes(content)
    before = set_aside_counts().get(OVERRIDES_FILE, 0)
    settings = _settings(tmp_path)
    settings.load(tmp_path)
    assert (settings.version, settings.overrides) == (0, {})
    assert [p.read_bytes() for p in tmp_path.glob(f"{OVERRIDES_FILE}.corrupt-*")] == [content]
    assert set_aside_counts()[OVERRIDES_FILE] == before + 1


def test_settings_this_version_refuses_are_ignored_not_set_aside(tmp_path: Path) -> None:
    (tmp_path / OVERRIDES_FILE).write_text(json.dumps({"version": 2, "settings": {"fps": -1}}))
    settings = _settings(tmp_path)
    settings.load(tmp_path)
    assert settings.overrides == {} and (tmp_path / OVERRIDES_FILE).exists()
