"""Named, timed steps: every line says which step ran, how long it took, and what failed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


class StepError(Exception):
    """A step could not do its job; the message is the one line a user reads."""


@dataclass
class StepReport:
    """What happened to each step, in order, with its wall-clock time."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    prefix: str = "pi-check"
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.out, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[str], None]]:
        """Time a step; StepError inside it is recorded and re-raised. Yields a note setter."""
        notes: list[str] = []
        self.say(f"{name} ...")
        start = time.perf_counter()
        try:
            yield notes.append
        except StepError as exc:
            seconds = time.perf_counter() - start
            self.timings.append((name, seconds, "FAILED"))
            self.failures.append(f"{name}: {exc}")
            self.say(f"FAILED {name} ({seconds:.1f} s): {exc}")
            raise
        seconds = time.perf_counter() - start
        note = "; ".join(notes)
        self.timings.append((name, seconds, note or "ok"))
        self.say(f"ok {name} ({seconds:.1f} s){': ' + note if note else ''}")

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(f"{name}: {reason}")
        self.say(f"SKIPPED {name}: {reason}")

    def summary(self, total: float) -> str:
        lines = [f"{seconds:7.1f} s  {name}" + ("  FAILED" if status == "FAILED" else "")
                 for name, seconds, status in self.timings]
        lines.append(f"{total:7.1f} s  total")
        lines += [f"SKIPPED {text}" for text in self.skipped]
        lines += [f"FAILED  {text}" for text in self.failures]
        return "\n".join(lines)
