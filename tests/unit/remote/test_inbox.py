"""The command inbox (edge_agent/remote/inbox.py): a full queue still answers with the command's id."""

from __future__ import annotations

import json
import time
from typing import Any

from edge_agent.messaging.link import InboundMessage
from edge_agent.remote.inbox import COMMAND_QUEUE_MAX, Inbox


class Outlet:
    def __init__(self) -> None:
        self.replies: list[tuple[str, dict[str, Any], str | None]] = []

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        pass

    def publish_reply(self, kind: str, payload: dict[str, Any], response_topic: str | None,
                      correlation_data: bytes | None) -> None:
        self.replies.append((kind, payload, response_topic))


def test_a_command_refused_as_busy_is_acked_with_its_id() -> None:
    outlet = Outlet()
    inbox = Inbox("dev1", outlet)  # not started: nothing takes commands off the queue
    topic = "edge/v1/dev1/cmd/ping"
    for _ in range(COMMAND_QUEUE_MAX):
        inbox.offer(InboundMessage(topic, b"{}", 1, False))
    now = time.time()
    inbox.offer(InboundMessage(topic, json.dumps({"id": "p65", "ts": now, "expires": now + 60}).encode(), 1, False))
    inbox.offer(InboundMessage(topic, b"not json", 1, False))
    assert [(kind, body["id"], body["status"], body["reason"]) for kind, body, _ in outlet.replies] == [
        ("ack", "p65", "rejected", "busy"), ("ack", None, "rejected", "busy")]
