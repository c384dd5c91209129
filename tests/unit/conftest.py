"""Fixtures shared by the unit tests of one module and its mutation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.model.bundle import write_bundle
from edge_agent.model.keys import generate_keypair
from tests.bundle_samples import MODEL_BYTES, sample_extra, sample_manifest


@pytest.fixture()
def bundle_path(tmp_path: Path) -> Path:
    path = tmp_path / "unit.bundle"
    write_bundle(path, sample_manifest(), MODEL_BYTES, sample_extra())
    return path


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(private, public)
    return private, public
