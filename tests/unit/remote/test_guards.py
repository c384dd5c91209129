"""The replay cache's file: damaged lines (a power cut) set the file aside, the good ids stay in force."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.remote.guards import ReplayCache
from edge_agent.util.statefiles import set_aside_counts


def test_a_replay_cache_file_with_damaged_lines_is_set_aside_and_its_good_ids_kept(tmp_path: Path) -> None:
    path = tmp_path / "command-ids"
    later = time.time() + 600
    content = f"good-1 {later}\n".encode() + b"\xff\xfe\x00garbage\n" + f"good-2 {later}\nno-expiry\n".encode()
    path.write_bytes(content)
    before = set_aside_counts().get("command-ids", 0)
    cache = ReplayCache(path)
    assert cache.seen("good-1") and cache.seen("good-2") and len(cache) == 2
    assert [p.read_bytes() for p in tmp_path.glob("command-ids.corrupt-*")] == [content]
    assert set_aside_counts()["command-ids"] == before + 1
    assert path.read_text() == f"good-1 {later}\ngood-2 {later}\n"  # rewritten with the good ids only
    cache.add("new", later)
    assert ReplayCache(path).seen("new")


def test_a_clean_replay_cache_file_is_not_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "command-ids"
    path.write_text(f"a {time.time() + 600}\nexpired {time.time() - 1}\n")
    assert ReplayCache(path).seen("a")
    assert list(tmp_path.glob("*.corrupt-*")) == []
