"""Which inference results become ``evt/…`` messages: the runtime ``events`` policy."""

from __future__ import annotations

from typing import Any

from edge_agent.config import parse_event_policy
from edge_agent.tasks import Result


class EventPolicy:
    """every | change | interval:S — which results are published."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.mode, self.interval_s = parse_event_policy(spec)
        self._last_key: tuple[Any, ...] | None = None
        self._has_last = False
        self._last_t = float("-inf")

    def should_publish(self, result: Result, now: float) -> bool:
        if result.always or self.mode == "every":
            return True
        if self.mode == "change":
            if self._has_last and result.change_key == self._last_key:
                return False
            self._has_last, self._last_key = True, result.change_key
            return True
        if now - self._last_t >= self.interval_s:
            self._last_t = now
            return True
        return False
