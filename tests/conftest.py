"""Shared pytest configuration. Fixtures live in plugin modules, one per component."""

pytest_plugins = [
    "tests.fixtures_models",
    "tests.fixtures_mqtt",
    "tests.fixtures_ssh",
]
