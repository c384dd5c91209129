"""systemd notification protocol (sd_notify) and a progress-gated watchdog.

The protocol is one datagram per message on the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace), with
``KEY=value`` lines. Outside systemd the variable is unset and every call is a
cheap no-op, so the agent calls these unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; silently does nothing when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if not address:
            return
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # abstract namespace
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract; notifications disabled", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send raw ``KEY=value`` lines; False when disabled or the send failed."""
        if self._sock is None or self._address is None:
            return False
        try:
            with self._lock:
                self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (systemd's advice), or None when no watchdog.

    ``$WATCHDOG_PID``, when set, must be this process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000.0


class Watchdog:
    """Pings the systemd watchdog only while ``healthy()`` is true.

    ``healthy`` is asked once per tick; the agent passes a predicate such as
    "inference progressed since the last tick and the MQTT thread is alive", so
    a stalled pipeline stops the pings and systemd restarts the service.

    Args:
        notifier: where to send WATCHDOG=1.
        healthy: progress predicate, called from the watchdog thread.
        interval_s: seconds between ticks; default ``$WATCHDOG_USEC / 2``.
    """

    def __init__(
        self, notifier: Notifier, healthy: Callable[[], bool], interval_s: float | None = None
    ) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.missed = 0

    def start(self) -> bool:
        """Start the thread; False (and no thread) when there is no watchdog to feed."""
        if self.interval_s is None or not self._notifier.enabled:
            return False
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            try:
                ok = self._healthy()
            except Exception:  # a broken predicate must not kill the thread silently
                log.exception("watchdog predicate failed")
                ok = False
            if ok:
                self._notifier.watchdog()
                self.pings += 1
            else:
                self.missed += 1
                log.warning("no inference progress (or MQTT thread dead): not feeding the watchdog")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class ProgressGate:
    """Turns a monotonically growing counter into "progressed since last asked".

    Example: ``ProgressGate(lambda: stats.inferences, lambda: mqtt.thread_alive())``
    used as the Watchdog predicate.
    """

    def __init__(self, counter: Callable[[], int], *alive: Callable[[], bool]) -> None:
        self._counter = counter
        self._alive = alive
        self._last = -1

    def __call__(self) -> bool:
        value = self._counter()
        progressed = value != self._last
        self._last = value
        return progressed and all(check() for check in self._alive)
