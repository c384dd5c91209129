"""Shared pytest configuration. Fixtures live in plugin modules, one per component."""

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures_disk",
    "tests.fixtures_models",
    "tests.fixtures_mqtt",
    "tests.fixtures_ssh",
    "tests.markers",
]


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents started without --state-dir (and their child processes) never touch ~/.local/state."""
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    os.environ.pop("STATE_DIRECTORY", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
