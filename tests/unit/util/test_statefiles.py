"""Damaged state files are set aside under a timestamped name, with their companions, and counted."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.util.statefiles import set_aside, set_aside_counts


def test_set_aside_renames_with_a_utc_stamp_moves_companions_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "thing.db"
    path.write_bytes(b"garbage")
    (tmp_path / "thing.db-wal").write_bytes(b"log")
    before = set_aside_counts().get("thing.db", 0)
    moved = set_aside(path, "not a database", tmp_path / "thing.db-wal", tmp_path / "thing.db-shm")
    assert moved is not None and re.fullmatch(r"thing\.db\.corrupt-\d{8}T\d{6}Z", moved.name)
    assert moved.read_bytes() == b"garbage" and not path.exists()
    assert (tmp_path / f"{moved.name}-wal").read_bytes() == b"log" and not (tmp_path / "thing.db-wal").exists()
    assert set_aside_counts()["thing.db"] == before + 1


def test_a_second_set_aside_in_the_same_second_keeps_the_first(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    names = []
    for content in (b"one", b"two", b"three"):
        path.write_bytes(content)
        moved = set_aside(path, "test")
        assert moved is not None
        names.append(moved)
    assert sorted(p.read_bytes() for p in names) == [b"one", b"three", b"two"]


def test_a_file_that_cannot_be_moved_is_still_counted(tmp_path: Path) -> None:
    before = set_aside_counts().get("missing", 0)
    assert set_aside(tmp_path / "missing", "test") is None
    assert set_aside_counts()["missing"] == before + 1
