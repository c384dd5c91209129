"""The envelope and its persisted sequence number (rules the mutation run found untested)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.messaging.envelope import EnvelopeFactory, SequenceCounter, read_boot_id
from edge_agent.util.statefiles import set_aside_counts

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def test_wrap_adds_exactly_the_envelope_fields() -> None:
    factory = EnvelopeFactory("dev-7")
    before = int(time.time() * 1000)
    message = factory.wrap({"label": "cat", "replayed": "kept from the body"})
    after = int(time.time() * 1000)
    assert set(message) == {"schema", "device_id", "boot_id", "session", "seq", "ts_ms", "replayed", "label"}
    assert message["schema"] == "edge/v1"
    assert message["device_id"] == "dev-7"
    assert message["boot_id"] == factory.boot_id == read_boot_id()
    assert message["session"] == factory.session
    assert message["seq"] == 0
    assert before <= message["ts_ms"] <= after  # milliseconds of the Unix clock
    assert message["label"] == "cat"
    assert message["replayed"] == "kept from the body"  # the body wins over the defaults
    assert factory.wrap({})["replayed"] is False


def test_session_is_16_hex_digits_and_new_per_factory() -> None:
    first, second = EnvelopeFactory("d"), EnvelopeFactory("d")
    assert len(first.session) == 16 and int(first.session, 16) >= 0
    assert first.session != second.session


@pytest.mark.skipif(not BOOT_ID.is_file(), reason="needs Linux /proc")
def test_boot_id_is_the_kernels() -> None:
    assert read_boot_id() == BOOT_ID.read_text().strip()


def test_sequence_counts_from_zero_without_a_state_dir() -> None:
    counter = SequenceCounter(None)
    assert [counter.next() for _ in range(5)] == [0, 1, 2, 3, 4]


def test_sequence_reserves_blocks_on_disk_and_never_repeats_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"  # created, parents too
    counter = SequenceCounter(state)
    seq_file = state / "seq"
    assert seq_file.read_text() == "1000"  # the upper bound of the reserved block
    values = [counter.next() for _ in range(999)]
    assert values == list(range(999))
    assert seq_file.read_text() == "1000"
    assert counter.next() == 999  # the last number of the block: the next block is reserved
    assert seq_file.read_text() == "2000"
    assert counter.next() == 1000

    # A restart (or a crash) resumes above everything reserved: numbers skip, never repeat.
    again = SequenceCounter(state)
    assert again.next() == 2000
    assert seq_file.read_text() == "3000"


def test_factory_sequence_persists_in_its_state_dir(tmp_path: Path) -> None:
    assert EnvelopeFactory("d", tmp_path).wrap({})["seq"] == 0
    assert EnvelopeFactory("d", tmp_path).wrap({})["seq"] == 1000


@pytest.mark.parametrize("content", [b"", b"  \n", b"garbage", b"\xff\xfe12", b"-5"])
def test_damaged_sequence_file_is_set_aside_and_the_count_resumes_above_it(tmp_path: Path,
                                                                           content: bytes) -> None:
    """A damaged file says nothing about the old count: it is set aside (counted) and the count
    resumes at the Unix time in milliseconds, above any count reached before, so no number repeats."""
    (tmp_path / "seq").write_bytes(content)
    before = set_aside_counts().get("seq", 0)
    floor = int(time.time() * 1000)
    counter = SequenceCounter(tmp_path)
    first = counter.next()
    assert floor <= first <= int(time.time() * 1000)
    assert (tmp_path / "seq").read_text() == str(first + 1000)
    [aside] = tmp_path.glob("seq.corrupt-*")
    assert aside.read_bytes() == content
    assert set_aside_counts()["seq"] == before + 1
