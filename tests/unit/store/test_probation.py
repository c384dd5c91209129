"""The probation record: a damaged one is set aside (no crash count to trust), never fatal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edge_agent.store.probation import PROBATION_FILE, Probation, read_probation, write_probation
from edge_agent.util.statefiles import set_aside_counts

GOOD = {"sha256": "a" * 64, "started": 1.0, "until": 2.5, "max_crashes": 2, "crashes": 0, "running": True,
        "command_id": "c1"}


def test_a_record_is_read_back(tmp_path: Path) -> None:
    write_probation(tmp_path, Probation(**GOOD))  # type: ignore[arg-type]
    assert read_probation(tmp_path) == Probation(**GOOD)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [
    b"\xff\xfe{", b"{", b"[]", json.dumps({**GOOD, "extra": 1}).encode(), json.dumps({**GOOD, "crashes": "1"}).encode(),
    json.dumps({**GOOD, "running": 1}).encode(), json.dumps({**GOOD, "until": True}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "sha256"}).encode(),
])
def test_a_damaged_record_is_set_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PROBATION_FILE).write_bytes(content)
    before = set_aside_counts().get(PROBATION_FILE, 0)
    assert read_probation(tmp_path) is None
    assert [p.read_bytes() for p in tmp_path.glob(f"{PROBATION_FILE}.corrupt-*")] == [content]
    assert set_aside_counts()[PROBATION_FILE] == before + 1


def test_no_record_is_none_and_nothing_is_set_aside(tmp_path: Path) -> None:
    assert read_probation(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_whole_seconds_are_read_as_times(tmp_path: Path) -> None:
    """JSON writes 2.0 as 2 when another tool wrote the record: an int is a valid time."""
    (tmp_path / PROBATION_FILE).write_text(json.dumps({**GOOD, "started": 1, "until": 3}))
    probation = read_probation(tmp_path)
    assert probation is not None and (probation.started, probation.until) == (1, 3)
    assert not list(tmp_path.glob(f"{PROBATION_FILE}.corrupt-*"))


@pytest.mark.parametrize(("content", "why"), [
    (b"[]", "not an object"),
    (json.dumps({**GOOD, "crashes": "1"}).encode(), "crashes is not a int"),
    (json.dumps({**GOOD, "until": "soon"}).encode(), "until is not a float"),
])
def test_the_set_aside_warning_says_what_is_wrong(tmp_path: Path, content: bytes, why: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / PROBATION_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    assert read_probation(tmp_path) is None
    [aside] = tmp_path.glob(f"{PROBATION_FILE}.corrupt-*")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"damaged state file {tmp_path / PROBATION_FILE} (not a probation record: {why}) "
                              f"set aside as {aside.name}")
