"""DuplicateGuard: when a second client with our id is recognised, and the backoff it asks for."""

from __future__ import annotations

import logging
import random

import pytest

from edge_agent.messaging.duplicate import CLEAR_FACTOR, SESSION_TAKEN_OVER, SHORT_SESSION_S, DuplicateGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(backoff: float = 30.0) -> tuple[DuplicateGuard, Clock]:
    clock = Clock()
    return DuplicateGuard("cam-7", backoff, clock=clock, rng=random.Random(1)), clock


def test_session_taken_over_is_certain_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    g, clock = guard()
    g.connected()
    clock.now += 3600
    with caplog.at_level(logging.ERROR):
        delay = g.disconnected(SESSION_TAKEN_OVER, by_us=False)
    assert delay is not None and 30.0 <= delay <= 60.0
    assert g.stats() == {"duplicate_device_id": True, "duplicate_device_id_count": 1,
                         "duplicate_device_id_how": "takeover"}
    assert "duplicate_device_id: another client connected as cam-7" in caplog.text


def test_one_short_session_is_not_enough_two_are_a_suspicion() -> None:
    g, clock = guard()
    g.connected()
    clock.now += SHORT_SESSION_S - 1
    assert g.disconnected(None, by_us=False) is None and not g.flagged
    g.connected()
    clock.now += 1
    delay = g.disconnected(None, by_us=False)
    assert delay is not None and g.flagged and g.how == "short_sessions"


def test_a_long_session_in_between_resets_the_suspicion() -> None:
    g, clock = guard()
    for lasted in (1.0, SHORT_SESSION_S + 1, 1.0):
        g.connected()
        clock.now += lasted
        assert g.disconnected(None, by_us=False) is None
    assert not g.flagged and g.count == 0


def test_our_own_disconnect_and_a_refused_connect_count_for_nothing() -> None:
    g, clock = guard()
    g.connected()
    clock.now += 1
    assert g.disconnected(SESSION_TAKEN_OVER, by_us=True) is None
    assert g.disconnected(SESSION_TAKEN_OVER, by_us=False) is None  # never connected since
    assert g.count == 0


def test_flagged_every_broker_drop_backs_off_until_a_long_connection_clears_it() -> None:
    g, clock = guard(backoff=10.0)
    g.foreign_birth("abc")
    assert g.flagged and g.how == "foreign_birth"
    g.connected()
    clock.now += 25.0  # the other agent's backoff: longer than a "short" session
    delay = g.disconnected(None, by_us=False)
    assert delay is not None and 10.0 <= delay <= 20.0 and g.count == 2
    g.connected()
    clock.now += CLEAR_FACTOR * 10.0
    g.still_connected()
    assert not g.flagged and g.count == 2  # the total stays
