"""The operator's view over MQTT: every message a device publishes, kept for the checks."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.messaging.link import MqttLink
from edge_agent.messaging.paho_client import InboundMessage
from edge_agent.messaging.settings import MqttSettings


@dataclass(frozen=True)
class Seen:
    topic: str
    body: dict[str, Any]
    retain: bool
    at: float  # host wall clock when received


class Watcher:
    """Subscribes to ``edge/v1/<device>/#`` and keeps every JSON message, thread-safe."""

    def __init__(self, broker_url: str, device_id: str) -> None:
        self.device_id = device_id
        self.messages: list[Seen] = []
        self._cond = threading.Condition()
        settings = MqttSettings.from_any(None, broker=broker_url, reconnect_max_s=1.0, keepalive=5)
        self.link = MqttLink(settings, f"device-check-{uuid.uuid4().hex[:8]}",
                             subscriptions=(f"edge/v1/{device_id}/#",))
        self.link.callbacks.on_message = self._on_message

    def _on_message(self, message: InboundMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(body, dict):
            with self._cond:
                self.messages.append(Seen(message.topic, body, bool(message.retain), time.time()))
                self._cond.notify_all()

    def start(self, timeout: float = 30) -> Watcher:
        self.link.start()
        if not self.link.wait_connected(timeout):
            raise RuntimeError("the watcher could not connect to the broker")
        return self

    def stop(self) -> None:
        self.link.stop()

    def on(self, suffix: str) -> list[Seen]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def results(self) -> list[Seen]:
        return [m for m in self.on("") if "/evt/" in m.topic]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """True once ``predicate()`` holds; False after ``timeout`` (a bound on a hang)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))
            return True
