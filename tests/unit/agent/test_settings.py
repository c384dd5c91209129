"""Persisted remote overrides: a damaged file is set aside, one with refused values ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.agent.settings import Settings
from edge_agent.config import OVERRIDES_FILE, load_config
from edge_agent.errors import ConfigError
from edge_agent.util.statefiles import set_aside_counts
from tests.fixtures_disk import fill


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


def test_settings_that_cannot_be_persisted_are_not_applied(small_disk: Path) -> None:
    """A full disk: the command is rejected and the running settings stay as they were, so the
    ack, the running agent and what a restart brings back agree."""
    settings = _settings(small_disk)
    settings.apply({"fps": 5.0}, lambda: small_disk)
    fill(small_disk)
    with pytest.raises(ConfigError) as info:
        settings.apply({"fps": 2.0, "health_interval_s": 7.0}, lambda: small_disk)
    assert str(info.value) == (f"cannot persist settings to {small_disk / OVERRIDES_FILE}: "
                               "No space left on device; nothing changed")
    assert (settings.version, settings.fps, settings.overrides) == (1, 5.0, {"fps": 5.0})
    reloaded = _settings(small_disk)
    reloaded.load(small_disk)
    assert (reloaded.version, reloaded.fps) == (1, 5.0)
