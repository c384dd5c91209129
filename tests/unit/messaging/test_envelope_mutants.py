"""The envelope and its persisted sequence number (rules the mutation run found untested)."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest

from edge_agent.messaging import envelope
from edge_agent.messaging.envelope import EnvelopeFactory, SequenceCounter, read_boot_id
from edge_agent.util.fs import atomic_write as real_atomic_write
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
def test_damaged_sequence_file_is_set_aside_and_the_count_resumes_above_it(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged file says nothing about the old count: it is set aside (counted, one warning
    saying why) and the count resumes at the Unix time in milliseconds, above any count reached
    before, so no number repeats."""
    (tmp_path / "seq").write_bytes(content)
    caplog.set_level(logging.WARNING)
    before = set_aside_counts().get("seq", 0)
    floor = int(time.time() * 1000)
    counter = SequenceCounter(tmp_path)
    first = counter.next()
    assert floor <= first <= int(time.time() * 1000)
    assert (tmp_path / "seq").read_text() == str(first + 1000)
    [aside] = tmp_path.glob("seq.corrupt-*")
    assert aside.read_bytes() == content
    assert set_aside_counts()["seq"] == before + 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"damaged state file {tmp_path / 'seq'} (not a number) set aside as {aside.name}" in warning


def test_a_bound_of_zero_is_read_not_set_aside(tmp_path: Path) -> None:
    """0 is the smallest valid bound (a fresh image may ship it): the count starts there."""
    (tmp_path / "seq").write_text("0\n")
    before = set_aside_counts().get("seq", 0)
    counter = SequenceCounter(tmp_path)
    assert [counter.next() for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / "seq").read_text() == "1000"
    assert not list(tmp_path.glob("seq.corrupt-*"))
    assert set_aside_counts().get("seq", 0) == before


class FullDisk:
    """The atomic write of the seq file fails with ENOSPC while ``full`` (its temporary file finds
    no room, as on a full disk); ``attempts`` counts the atomic writes tried. Everything else,
    the in-place overwrite included, runs on the real file system."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        self.attempts = 0
        def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
            self.attempts += 1
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real_atomic_write(path, data, mode)

        monkeypatch.setattr(envelope, "atomic_write", atomic_write)


def test_a_healthy_start_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=envelope.__name__)
    counter = SequenceCounter(tmp_path)
    assert counter.next() == 0 and not counter.unpersisted
    assert [r.getMessage() for r in caplog.records] == []


def test_a_full_disk_writes_the_reservation_over_the_old_file_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=envelope.__name__)
    counter = SequenceCounter(tmp_path)
    seq_file = tmp_path / "seq"
    inode = seq_file.stat().st_ino
    FullDisk(monkeypatch)
    assert [counter.next() for _ in range(1001)] == list(range(1001))
    assert seq_file.read_bytes() == b"2000"  # the whole new bound, nothing of the old left
    assert seq_file.stat().st_ino == inode  # the same file, its block reused
    assert not counter.unpersisted
    assert [r.getMessage() for r in caplog.records] == []  # the count was persisted: nothing to say
    assert SequenceCounter(tmp_path).next() == 2000  # a restart resumes above every number given


def test_storage_that_keeps_failing_counts_in_memory_warns_once_and_retries_every_50_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk and no seq file to write over: the count goes on in memory, one warning says
    so, storage is tried again every 50 numbers (not at every message), and once it works the
    bound is persisted and the count resumes above it after a restart."""
    caplog.set_level(logging.INFO, logger=envelope.__name__)
    disk = FullDisk(monkeypatch)
    seq_file = tmp_path / "seq"
    counter = SequenceCounter(tmp_path)
    assert [counter.next() for _ in range(120)] == list(range(120))
    assert counter.unpersisted and not seq_file.exists()
    assert disk.attempts == 3  # at 0, 50 and 100
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (f"cannot persist the sequence number to {seq_file} (No space left on device): "
                       "counting on in memory")

    disk.full = False
    caplog.clear()
    assert [counter.next() for _ in range(29)] == list(range(120, 149))
    assert not seq_file.exists() and disk.attempts == 3  # the next try is at 150
    assert counter.next() == 149
    assert disk.attempts == 4 and seq_file.read_text() == "1150"
    assert not counter.unpersisted
    assert [r.getMessage() for r in caplog.records] == [f"sequence number persisted again to {seq_file}"]
    assert SequenceCounter(tmp_path).next() == 1150

