"""The stdout publisher's counters, under the MQTT publisher's names: its queue is the outbox."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.publishers import stdout


def test_a_full_queue_evicts_the_new_message_and_counts_it_by_kind(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdout, "QUEUE_SIZE", 2)
    stream = io.StringIO()
    pub = stdout.StdoutPublisher(EnvelopeFactory("dev1", tmp_path), stream=stream)
    for i in range(2):
        pub.publish("evt/classification", {"n": i})
    pub.publish("health", {})
    pub.publish("evt/classification", {"n": 2})
    stats = pub.stats()
    assert (stats["publisher"], stats["connected"], stats["reconnects"]) == ("stdout", True, 0)
    assert stats["outbox"] == {"depth": 2, "evicted": 2, "evicted_health": 1, "evicted_results": 1,
                               "write_errors": 0, "delivered": 0}
    pub.start()
    pub.stop(timeout=60.0)  # only bounds a hang
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [m["payload"].get("n") for m in lines[:2]] == [0, 1]
    assert pub.stats()["outbox"]["delivered"] == len(lines) >= 2 and pub.stats()["outbox"]["depth"] == 0
