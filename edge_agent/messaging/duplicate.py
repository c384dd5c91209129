"""Two clients with one device id: detect it, say so loudly, and back off instead of thrashing.

A broker allows one connection per client id: when a second agent connects as ``cam-7``, the
broker drops the first (MQTT 5 reason code 0x8E "Session taken over", which Mosquitto 2.0 often
does not get onto the wire before closing the socket). The dropped agent reconnects and drops the
second, and so on. :class:`DuplicateGuard` recognises it three ways:

- ``takeover``: an MQTT 5 DISCONNECT with reason 0x8E (certain);
- ``foreign_birth``: the device's own retained ``…/status`` carries a birth (``online``) of another
  agent session, made after this one started (certain; needs read access to the device's own
  ``status``, which the shipped ACL grants);
- ``short_sessions``: :data:`SUSPECT_AFTER` connections in a row ended by the broker within
  :data:`SHORT_SESSION_S` of their CONNACK (a suspicion: MQTT 3.1.1 has no reason code).

Once flagged, every broker-side disconnect is followed by a reconnect delay drawn uniformly from
``[backoff_s, 2 × backoff_s]`` instead of the normal backoff, so two agents with one id swap at
most once per ``backoff_s`` rather than several times a second. The flag clears once a
connection has stayed up :data:`CLEAR_FACTOR` × ``backoff_s`` (the other agent is gone).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 0x8E
SHORT_SESSION_S = 10.0
SUSPECT_AFTER = 2
CLEAR_FACTOR = 4.0


class DuplicateGuard:
    """Duplicate-client-id bookkeeping of one broker link (thread-safe; clock injectable)."""

    def __init__(self, client_id: str, backoff_s: float, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.client_id = client_id
        self.backoff_s = backoff_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.flagged = False
        self.count = 0
        self.how: str | None = None
        self._connected_at: float | None = None
        self._short_in_a_row = 0

    def connected(self) -> None:
        with self._lock:
            self._connected_at = self._clock()

    def _flag(self, how: str, detail: str) -> None:
        """Caller holds the lock."""
        self.count += 1
        first = not self.flagged
        self.flagged = True
        self.how = how
        log.error("duplicate_device_id: another client connected as %s (%s); two agents share this device id, "
                  "give each device its own id (reconnects now wait %g-%g s)%s", self.client_id, detail,
                  self.backoff_s, 2 * self.backoff_s, "" if first else f" [{self.count} times so far]")

    def disconnected(self, reason_code: int | None, by_us: bool) -> float | None:
        """A lost connection; returns the reconnect delay to use (None: the normal backoff)."""
        with self._lock:
            now = self._clock()
            lasted = None if self._connected_at is None else now - self._connected_at
            self._connected_at = None
            if by_us or lasted is None:
                return None
            if reason_code == SESSION_TAKEN_OVER:
                self._short_in_a_row = 0
                self._flag("takeover", "the broker said: session taken over")
            elif self.flagged:
                if lasted >= CLEAR_FACTOR * self.backoff_s:
                    self._clear(lasted)
                    return None
                self.count += 1
                log.error("duplicate_device_id: disconnected again after %.1f s, most likely by the other client "
                          "connected as %s [%d times so far]", lasted, self.client_id, self.count)
            elif lasted < SHORT_SESSION_S:
                self._short_in_a_row += 1
                if self._short_in_a_row < SUSPECT_AFTER:
                    return None
                self._short_in_a_row = 0
                self._flag("short_sessions", f"suspected: the broker ended {SUSPECT_AFTER} connections in a row "
                                             f"within {SHORT_SESSION_S:g} s of connecting")
            else:
                self._short_in_a_row = 0
                return None
            return self._rng.uniform(self.backoff_s, 2 * self.backoff_s)

    def still_connected(self) -> None:
        """Called now and then while connected: clears the flag after a long enough connection."""
        with self._lock:
            if self.flagged and self._connected_at is not None:
                lasted = self._clock() - self._connected_at
                if lasted >= CLEAR_FACTOR * self.backoff_s:
                    self._clear(lasted)

    def _clear(self, lasted: float) -> None:
        self.flagged = False
        self.how = None
        log.warning("duplicate_device_id: connected as %s for %.0f s without interruption; "
                    "no other client with this id any more", self.client_id, lasted)

    def foreign_birth(self, session: str) -> None:
        """Our own retained status names another live agent session: certain duplicate."""
        with self._lock:
            self._short_in_a_row = 0
            self._flag("foreign_birth", f"its birth message on our status topic comes from agent session {session}")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"duplicate_device_id": self.flagged, "duplicate_device_id_count": self.count,
                    "duplicate_device_id_how": self.how}
