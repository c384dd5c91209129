"""The latest frame board between the inference thread and its readers."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.agent.latest import LatestFrame
from edge_agent.sources.base import Frame
from edge_agent.tasks.base import Result


def _frame(index: int) -> Frame:
    return Frame(index, 0.0, np.zeros((4, 4, 3), np.uint8), 0.0)


def test_post_numbers_observations_and_keeps_the_frame_by_reference() -> None:
    board = LatestFrame()
    assert board.latest is None and board.wait_newer(0, 0.01) is None
    frame = _frame(1)
    body = {"classes": [{"label": "a", "score": 1.0}]}
    board.post(frame, Result("classification", body))
    obs = board.latest
    assert obs is not None and obs.seq == 1 and obs.frame is frame and obs.event_type == "classification"
    body["ts_frame_ms"] = 5  # the pipeline extends the body when it publishes: the board kept its own
    assert obs.result == {"classes": [{"label": "a", "score": 1.0}]}
    board.post(_frame(2), None)
    newer = board.wait_newer(1, 0.01)
    assert newer is not None and newer.seq == 2 and newer.result is None and newer.event_type is None
    assert board.wait_newer(2, 0.01) is None


def test_a_waiting_reader_wakes_on_the_next_post() -> None:
    board = LatestFrame()
    got: list[int] = []
    ready = threading.Event()

    def reader() -> None:
        ready.set()
        obs = board.wait_newer(0, 30.0)
        got.append(obs.seq if obs else -1)

    thread = threading.Thread(target=reader)
    thread.start()
    ready.wait(10)
    board.post(_frame(1), None)
    thread.join(30)
    assert got == [1]
