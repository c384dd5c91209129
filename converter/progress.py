"""Step progress on stderr: which step runs and for how long.

On a terminal a spinner line with the elapsed time is rewritten in place and ends as
``✓ STEP  12.3 s``; anywhere else (CI, log files) each step gives two plain lines,
``edge-convert: STEP ...`` when it starts and ``edge-convert: STEP: done in 12.3 s``
when it ends, so logs show where the time went. Steps that print their own counters
(preprocessing, validation) run without the spinner, so the two never share a line.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import IO

PREFIX = "edge-convert"
FRAMES = "|/-\\"
TICK_S = 0.1


class Steps:
    """The current step of a conversion; starting one ends the previous one."""

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.name: str | None = None
        self.started = 0.0
        self.durations: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str, spin: bool = True) -> None:
        """End the running step (if any) and start ``name``."""
        self.finish()
        with self._lock:
            self.name, self.started = name, time.perf_counter()
            if not self.tty or not spin:
                self._write(f"{PREFIX}: {name} ...\n")
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._spin, name="edge-convert-progress", daemon=True)
            self._thread.start()

    def finish(self, failed: bool = False) -> None:
        """End the running step with its elapsed time."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        with self._lock:
            if self.name is None:
                return
            elapsed = time.perf_counter() - self.started
            self.durations[self.name] = self.durations.get(self.name, 0.0) + elapsed
            if self.tty and thread is not None:
                mark = "x" if failed else "\u2713"
                self._write(f"\r\033[K{mark} {self.name}  {elapsed:.1f} s\n")
            else:
                outcome = "failed after" if failed else "done in"
                self._write(f"{PREFIX}: {self.name}: {outcome} {elapsed:.1f} s\n")
            self.name = None

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(TICK_S if frame else 0.0):
            with self._lock:
                if self.name is None:
                    return
                elapsed = time.perf_counter() - self.started
                self._write(f"\r\033[K{FRAMES[frame % len(FRAMES)]} {self.name}  {elapsed:.1f} s")
            frame += 1

    def _write(self, text: str) -> None:
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:  # an ASCII-only terminal: no tick mark
                self.stream.write(text.replace("\u2713", "ok"))
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish(failed=exc_type is not None)
