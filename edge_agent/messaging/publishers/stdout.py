"""JSON lines on stdout: ``{"topic": "edge/v1/<dev>/<kind>", "payload": {…}}``.

The embedded default when no broker is configured. A writer thread does the
I/O so a slow consumer never stalls inference; when its queue is full the
message is dropped and counted.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
from typing import Any, TextIO

from edge_agent.control import AgentControl
from edge_agent.messaging.envelope import EnvelopeFactory, topic_root
from edge_agent.messaging.publishers import Publisher, register_publisher

QUEUE_SIZE = 10000
_STOP = object()


class StdoutPublisher(Publisher):
    """Writes one JSON object per line; ``status`` online at start, offline at stop."""

    def __init__(
        self, envelope: EnvelopeFactory, stream: TextIO | None = None, **_: Any
    ) -> None:
        self._envelope = envelope
        self._root = topic_root(envelope.device_id)
        self._stream = stream if stream is not None else sys.stdout
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._control: AgentControl | None = None
        self.published = 0
        self.dropped = 0  # queue full: the message was not queued (counted by kind below)
        self.dropped_health = 0
        self.write_errors = 0

    def start(self, control: AgentControl | None = None) -> None:
        self._control = control
        self._thread = threading.Thread(target=self._run, name="stdout-publisher", daemon=True)
        self._thread.start()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((kind, self._envelope.wrap(payload)))
        except queue.Full:
            self.dropped += 1
            if kind == "health":
                self.dropped_health += 1

    def _run(self) -> None:
        stream = self._stream
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, tuple)
            kind, payload = item
            line = json.dumps({"topic": f"{self._root}/{kind}", "payload": payload}, separators=(",", ":"))
            try:
                stream.write(line + "\n")
                if self._queue.empty():
                    stream.flush()
                self.published += 1
            except (OSError, ValueError):  # closed pipe: keep draining, count
                self.write_errors += 1

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self.publish("status", {"state": "offline"})
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def stats(self) -> dict[str, Any]:
        """The MQTT publisher's names for what this one has: its queue is the ``outbox``
        (``depth``; a message it had no room for is ``evicted``; ``delivered``: lines written)."""
        return {
            "publisher": "stdout",
            "connected": True,
            "reconnects": 0,
            "outbox": {
                "depth": self._queue.qsize(),
                "evicted": self.dropped,
                "evicted_health": self.dropped_health,
                "evicted_results": self.dropped - self.dropped_health,
                "write_errors": self.write_errors,
                "delivered": self.published,
            },
        }

    @property
    def connected(self) -> bool:
        return True


def _factory(envelope: EnvelopeFactory, **options: Any) -> Publisher:
    return StdoutPublisher(envelope, **options)


register_publisher("stdout", _factory)
