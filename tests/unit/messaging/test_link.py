"""The integration tests' outbox reader must fail loudly, not read a missing database as empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.messaging.outbox import Outbox
from tests.integration.mqtt_helpers import outbox_rows, wait_until


def test_outbox_rows_reads_the_queue_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    for n in range(3):
        box.put("edge/v1/d/evt/x", json.dumps({"seq": n, "k": "v"}).encode(), "result")
    box.ack([box.take(1)[0].id])
    rows = outbox_rows(tmp_path)
    assert [(r["topic"], r["seq"], r["payload"]["k"]) for r in rows] == [("edge/v1/d/evt/x", n, "v") for n in (1, 2)]
    box.close()
    assert [r["seq"] for r in outbox_rows(tmp_path)] == [1, 2]


def test_outbox_rows_fails_when_the_database_is_missing(tmp_path: Path) -> None:
    """An empty answer here made "the outbox was flushed" pass for an outbox that had moved."""
    with pytest.raises(FileNotFoundError, match="no outbox database"):
        outbox_rows(tmp_path)
    assert not (tmp_path / "outbox.db").exists(), "looking must not create a database"


def test_wait_until_treats_a_missing_database_as_not_yet(tmp_path: Path) -> None:
    assert not wait_until(lambda: outbox_rows(tmp_path) == [], 0.3, step=0.05)
    Outbox(tmp_path / "outbox.db").close()
    assert wait_until(lambda: outbox_rows(tmp_path) == [], 5, step=0.05)
