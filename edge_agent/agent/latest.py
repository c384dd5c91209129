"""The latest frame and its result, handed from the inference thread to readers (the live
preview, the annotated ``snapshot``) by reference: posting never waits for a reader."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.sources.base import Frame
from edge_agent.tasks.base import Result


@dataclass(frozen=True, slots=True)
class Observation:
    """One inferred frame and what the task made of it (``result`` is None: nothing to report)."""

    seq: int  # 1, 2, ... in the order posted
    frame: Frame
    event_type: str | None
    result: Mapping[str, Any] | None
    ts: float  # wall-clock time of the inference


class LatestFrame:
    """The most recent :class:`Observation`; readers wait for a newer one, never the poster."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: Observation | None = None

    @property
    def latest(self) -> Observation | None:
        return self._latest

    def post(self, frame: Frame, result: Result | None) -> None:
        """Replace the latest observation (the frame by reference; a shallow copy of the body,
        which the pipeline extends when it publishes) and wake the readers."""
        body = dict(result.body) if result is not None else None
        with self._cond:
            seq = self._latest.seq + 1 if self._latest is not None else 1
            self._latest = Observation(seq, frame, result.event_type if result else None, body, time.time())
            self._cond.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> Observation | None:
        """The latest observation if it is newer than ``seq``, waiting up to ``timeout`` for one."""
        with self._cond:
            if self._latest is None or self._latest.seq <= seq:
                self._cond.wait(timeout)
            latest = self._latest
        return latest if latest is not None and latest.seq > seq else None
