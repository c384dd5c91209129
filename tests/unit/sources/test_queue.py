"""The capture → inference queue, the event policy and snapshot encoding."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.agent.events import EventPolicy
from edge_agent.agent.pipeline import _END, FrameQueue
from edge_agent.agent.snapshot import encode_jpeg
from edge_agent.tasks.base import Result


def test_queue_drops_oldest_when_full() -> None:
    q = FrameQueue(2)
    assert [q.put_drop_oldest(i) for i in range(4)] == [False, False, True, True]
    assert [q.get(0.01), q.get(0.01), q.get(0.01)] == [2, 3, None]


def test_queue_put_wait_blocks_until_room_or_stop() -> None:
    q = FrameQueue(1)
    stop = threading.Event()
    assert q.put_wait(1, stop)
    threading.Timer(0.1, lambda: q.get(0.0)).start()
    assert q.put_wait(2, stop)  # unblocked by the consumer
    stop.set()
    assert not q.put_wait(3, stop)
    q.put_end()
    assert q.get(0.01) == 2 and q.get(0.01) is _END


def result(key: str, always: bool = False) -> Result:
    return Result("classification", {}, (key,), always)


def test_policy_every_change_interval() -> None:
    every = EventPolicy("every")
    assert all(every.should_publish(result("a"), t) for t in range(3))
    change = EventPolicy("change")
    assert [change.should_publish(result(k), 0.0) for k in "aabba"] == [True, False, True, False, True]
    interval = EventPolicy("interval:1")
    assert [interval.should_publish(result("a"), t) for t in (0.0, 0.5, 1.0, 1.2, 2.1)] == [
        True, False, True, False, True]
    assert interval.should_publish(result("a", always=True), 2.2)


def test_encode_jpeg_respects_size_cap() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)  # noise compresses badly
    small = encode_jpeg(image, 20_000)
    assert small is not None and len(small) <= 20_000 and small[:2] == b"\xff\xd8"
    assert encode_jpeg(image, 50) is None
