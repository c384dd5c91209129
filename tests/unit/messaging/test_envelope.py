"""The sequence counter on a full disk (tmpfs, root only): it never stops the count."""

from __future__ import annotations

from pathlib import Path

from edge_agent.messaging.envelope import SequenceCounter
from tests.fixtures_disk import fill


def test_a_full_disk_does_not_stop_the_count_and_the_reservation_is_written_in_place(small_disk: Path) -> None:
    counter = SequenceCounter(small_disk)
    assert counter.next() == 0
    fill(small_disk)
    # Block after block: the temporary file of an atomic write has no room, the old file's block does.
    assert [counter.next() for _ in range(2500)] == list(range(1, 2501))
    assert (small_disk / "seq").read_text() == "3000"
    assert not counter.unpersisted
    assert SequenceCounter(small_disk).next() == 3000  # a restart on the still full disk goes on above it


def test_a_full_disk_without_a_seq_file_counts_in_memory_and_persists_once_it_can(small_disk: Path) -> None:
    ballast = fill(small_disk)
    counter = SequenceCounter(small_disk)
    assert [counter.next() for _ in range(1200)] == list(range(1200))
    assert counter.unpersisted and not (small_disk / "seq").exists()
    ballast.unlink()
    assert [counter.next() for _ in range(50)] == list(range(1200, 1250))
    assert not counter.unpersisted
    assert int((small_disk / "seq").read_text()) > 1249
