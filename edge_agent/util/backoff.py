"""Jittered exponential backoff between reconnect attempts: the broker link and the live sources.

Decorrelated jitter: each delay is uniform in ``[low, min(cap, 3 × previous)]``,
a float, so devices (or cameras) that lost their peer together do not retry in
the same instant, or the same whole second.
"""

from __future__ import annotations

import random


def jittered_delay(previous: float, low: float, cap: float, rng: random.Random | None = None) -> float:
    """Decorrelated jitter: uniform in [low, min(cap, 3 × previous)] (a float, not rounded).

    Starting from ``low``, the upper bound grows ×3 per failed attempt up to ``cap``;
    the draws are spread continuously, so devices that lost the broker together do
    not come back in the same instant (or the same whole second).
    """
    upper = min(cap, max(low, previous * 3))
    return (rng or random).uniform(low, upper)


class Backoff:
    """The delays of one retry loop: :meth:`next_delay` after each failure, :meth:`reset` on success."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        self._rng = rng
        self._previous = minimum

    def reset(self) -> None:
        self._previous = self.minimum

    def next_delay(self) -> float:
        self._previous = jittered_delay(self._previous, self.minimum, self.maximum, self._rng)
        return self._previous
