"""The replay cache's file (damaged lines, from a power cut, set the file aside; the good ids stay in force)
and the bounds on the numbers of a command."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edge_agent.remote.guards import MAX_COMMAND_BYTES, CommandBody, RejectError, ReplayCache, parse_command
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


def test_the_warning_counts_the_damaged_lines_and_only_well_formed_entries_are_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A line with a second space (the id would hold a space) and a line whose expiry is not finite are
    damaged; blank lines are not (mutants: rpartition, the isfinite check, the count, the reason)."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "command-ids"
    later = time.time() + 600
    path.write_text(f"good {later}\nbad id {later}\nx inf\ny nan\n\n   \n")
    cache = ReplayCache(path)
    assert cache.seen("good") and len(cache) == 1
    [aside] = tmp_path.glob("command-ids.corrupt-*")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"damaged state file {path} (3 damaged line(s)) set aside as {aside.name}" in warning


def _command(expires: str, cmd_id: str = "n1") -> str:
    return f'{{"id": "{cmd_id}", "expires": {expires}}}'


def _parsed(payload: str) -> CommandBody:
    return parse_command(payload.encode(), MAX_COMMAND_BYTES)


def _refused(payload: str) -> tuple[str, str | None]:
    with pytest.raises(RejectError) as info:
        parse_command(payload.encode(), MAX_COMMAND_BYTES)
    return info.value.reason, info.value.cmd_id


@pytest.mark.parametrize("digits", ["9" * 64, "-" + "9" * 64])
def test_an_integer_of_64_digits_and_a_sign_is_read(digits: str) -> None:
    assert _parsed(_command(digits)).expires == float(int(digits))


@pytest.mark.parametrize("digits", ["9" * 65, "-" + "9" * 65])
def test_an_integer_of_65_digits_is_refused_with_the_id(digits: str) -> None:
    assert _refused(_command(digits)) == ("bad_schema: a number has more than 64 digits", "n1")


def test_a_float_of_128_characters_is_read_and_one_of_129_refused_with_the_id() -> None:
    assert _parsed(_command("1." + "0" * 126)).expires == 1.0
    # a float's sign counts as one of its characters
    assert _refused(_command("-1." + "0" * 126)) == ("bad_schema: a number has more than 128 characters", "n1")


def test_the_id_of_a_refused_number_is_read_whatever_the_size_of_the_other_integers() -> None:
    # over 4300 digits int() raises: the id is read with the integers left as text
    payload = f'{{"args": {{"n": {"9" * 5000}, "f": {"1" * 200}.5}}, "id": "n2", "expires": {"9" * 65}}}'
    assert _refused(payload) == ("bad_schema: a number has more than 64 digits", "n2")
