"""The pipeline: capture thread → bounded queue → inference thread → publisher.

Capture never waits for inference: on live sources (and files paced by
``fps``) a full queue drops its oldest item, counted in ``frames_dropped``.
File sources otherwise block the capture thread instead, so every frame is
inferred in order. With motion gating the capture thread skips frames of a still
scene before they are queued. Inference never waits for the network: publishers queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.agent.engine import ActiveModel, Engine
from edge_agent.agent.health import PipelineHealth
from edge_agent.agent.latest import LatestFrame
from edge_agent.agent.motion import MotionGate
from edge_agent.agent.settings import Settings
from edge_agent.agent.stats import PipelineStats
from edge_agent.errors import EdgeError
from edge_agent.messaging.publishers import Publisher
from edge_agent.sources import Item, Source
from edge_agent.sources.base import Frame

log = logging.getLogger(__name__)

_END = object()


class FrameQueue:
    """Bounded FIFO between capture and inference."""

    def __init__(self, size: int) -> None:
        self._items: deque[object] = deque()
        self._size = size
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put_drop_oldest(self, item: object) -> bool:
        """Add without waiting; returns True when an old item was dropped to make room."""
        with self._cond:
            dropped = len(self._items) >= self._size
            if dropped:
                self._items.popleft()
            self._items.append(item)
            self._cond.notify()
            return dropped

    def put_wait(self, item: object, stop: threading.Event) -> bool:
        """Add, waiting for room (file sources); False if ``stop`` was set first."""
        with self._cond:
            while len(self._items) >= self._size:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify()
            return True

    def put_end(self) -> None:
        """Mark the end of the stream (always fits: may exceed the bound by one)."""
        with self._cond:
            self._items.append(_END)
            self._cond.notify()

    def get(self, timeout: float) -> object | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
                if not self._items:
                    return None
            item = self._items.popleft()
            self._cond.notify()
            return item


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A file-source item already turned into a model input by the capture thread."""

    item: Item
    active: ActiveModel
    tensor: Any
    context: Any
    prepare_s: float


class Pipeline:
    """The capture and inference threads of one run, and what they observed.

    Args:
        engine: the running model (read once per item, so a swap lands between two inferences).
        settings: fps and event policy in force.
        stats: the counters and latencies the threads record.
    """

    def __init__(self, engine: Engine, settings: Settings, stats: PipelineStats) -> None:
        self._engine = engine
        self._settings = settings
        self.stats = stats
        self.stop_event = threading.Event()
        self.finished = threading.Event()  # the inference thread ended
        self.exit_reason = ""
        self.t_start = time.monotonic()
        self.first_result_s: float | None = None
        self.latest_frame: Frame | None = None
        self.board = LatestFrame()  # the latest frame with its result (preview, annotated snapshot)
        self.source: Source | None = None
        self.queue: FrameQueue | None = None
        self.threads: list[threading.Thread] = []
        self._publisher: Publisher | None = None
        self._max_frames: int | None = None
        self._motion: MotionGate | None = None

    @property
    def failed(self) -> bool:
        """The run ended because of an error (source failure or a crashed thread)."""
        return self.exit_reason.startswith("source error") or "crashed" in self.exit_reason

    def request_stop(self, reason: str) -> None:
        """Signal-safe: the first reason given is kept."""
        if not self.exit_reason:
            self.exit_reason = reason
        self.stop_event.set()

    def start(self, source: Source, publisher: Publisher, queue_size: int, max_frames: int | None,
              motion: MotionGate | None = None) -> None:
        """Start capture and inference on an opened source (frames of a still scene skipped by ``motion``)."""
        self.source, self._publisher, self._max_frames, self._motion = source, publisher, max_frames, motion
        self.queue = FrameQueue(queue_size)
        self.threads = [
            threading.Thread(target=self._capture_loop, name="capture", daemon=True),
            threading.Thread(target=self._inference_loop, name="inference", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def wait(self, duration_s: float | None, idle: Callable[[float], None]) -> None:
        """Block until the stream ends, ``duration_s`` after :attr:`t_start` or a stop request;
        between checks ``idle(timeout)`` may do other work for at most ``timeout`` seconds."""
        deadline = self.t_start + duration_s if duration_s else None
        while not self.stop_event.is_set() and not self.finished.is_set():
            timeout = 0.2
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.request_stop("duration reached")
                    break
                timeout = min(timeout, remaining)
            idle(timeout)
        if self.finished.is_set() and not self.exit_reason:
            self.exit_reason = "source ended"

    def alive(self) -> bool:
        """Both threads run (False before :meth:`start`)."""
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def stop(self, timeout: float) -> None:
        """Stop the source and wait up to ``timeout`` per thread (never for the calling thread)."""
        self.stop_event.set()
        if self.source is not None:
            self.source.stop()
        current = threading.current_thread()
        for thread in self.threads:
            if thread is not current:
                thread.join(timeout)

    def health(self) -> PipelineHealth:
        """The pipeline's part of the health message."""
        active = self._engine.current
        snap = self.stats.snapshot()
        snap["queue_depth"] = len(self.queue) if self.queue is not None else 0
        return PipelineHealth(
            **snap, source=self.source.state() if self.source is not None else None,
            model_sha256=active.model.sha256 if active else None,
            manifest_sha256=active.model.manifest_sha256 if active else None,
            config_version=self._settings.version,
            health_interval_s=self._settings.health_interval_s,
            model_fallback=self._engine.fallback,
        )

    def _capture_loop(self) -> None:
        source, queue, stats, stop, motion = self.source, self.queue, self.stats, self.stop_event, self._motion
        assert source is not None and queue is not None
        next_slot = 0.0
        perf = time.perf_counter
        try:
            while not stop.is_set():
                item = source.read()
                if item is None:
                    break
                now = time.monotonic()
                stats.record_in(now)
                stats.add("capture", item.capture_s)
                fps = self._settings.fps
                paced = False
                if fps:
                    period = 1.0 / fps
                    if source.live:
                        if now < next_slot:
                            stats.frames_skipped += 1
                            continue
                        next_slot = max(next_slot + period, now)
                    else:
                        if next_slot > now and stop.wait(next_slot - now):
                            break
                        next_slot = max(next_slot + period, time.monotonic())
                        paced = True
                if motion is not None and isinstance(item, Frame) and not motion.admit(item):
                    stats.frames_skipped_motion += 1
                    continue
                if source.live or paced:
                    # Live: never spend work on a frame that may be dropped; the
                    # inference thread prepares the freshest one.
                    if queue.put_drop_oldest(item):
                        stats.frames_dropped += 1
                    continue
                # Files at full speed: prepare here, overlapping the previous invoke.
                active = self._engine.current
                assert active is not None
                t0 = perf()
                try:
                    prepared: object = _Prepared(item, active, *active.task.prepare(item), perf() - t0)
                except (EdgeError, ValueError, TypeError):
                    prepared = item  # the inference thread reports the error
                if not queue.put_wait(prepared, stop):
                    break
        except EdgeError as exc:
            log.error("source failed: %s", exc)
            self.exit_reason = self.exit_reason or f"source error: {exc}"
        except Exception:
            log.exception("capture thread crashed")
            self.exit_reason = self.exit_reason or "capture thread crashed"
        finally:
            queue.put_end()
            try:
                source.close()
            except Exception:
                log.exception("closing the source failed")

    def _inference_loop(self) -> None:
        queue, stats, stop, publisher = self.queue, self.stats, self.stop_event, self._publisher
        assert queue is not None and publisher is not None
        perf = time.perf_counter
        add = stats.add
        max_frames = self._max_frames
        error_logged = 0.0
        try:
            while not stop.is_set():
                raw = queue.get(0.2)
                if raw is None:
                    continue
                if raw is _END:
                    break
                active = self._engine.current
                assert active is not None
                try:
                    if isinstance(raw, _Prepared) and raw.active is active:
                        item, tensor, context, prep_s = raw.item, raw.tensor, raw.context, raw.prepare_s
                        t1 = perf()
                    else:  # live source, or the model was swapped after preparation
                        item = raw.item if isinstance(raw, _Prepared) else raw  # type: ignore[assignment]
                        t0 = perf()
                        tensor, context = active.task.prepare(item)
                        t1 = perf()
                        prep_s = t1 - t0
                    outputs = active.model.runtime.infer(tensor)
                    t2 = perf()
                    result = active.task.decode(outputs, item, context)
                except (EdgeError, ValueError, TypeError, RuntimeError) as exc:
                    # RuntimeError: the interpreter failed to invoke (e.g. an op rejects this
                    # input). A per-frame error, counted (OTA probation watches the rate); it
                    # must not end the inference thread and with it the agent.
                    stats.errors += 1
                    if time.monotonic() - error_logged > 10.0:
                        error_logged = time.monotonic()
                        log.error("inference failed: %s", exc)
                    continue
                t3 = perf()
                add("preprocess", prep_s)
                add("invoke", t2 - t1)
                add("decode", t3 - t2)
                stats.record_inferred(time.monotonic())
                if isinstance(item, Frame):
                    self.latest_frame = item
                if self.first_result_s is None:
                    self.first_result_s = time.monotonic() - self.t_start
                if result is not None and self._settings.policy.should_publish(result, time.monotonic()):
                    body = result.body
                    body["ts_frame_ms"] = int(item.ts * 1000)
                    if isinstance(item, Frame):
                        body.update(item.origin())  # file name, or position in the video
                    body["latency_ms"] = round((t3 - t1 + prep_s + item.capture_s) * 1000.0, 3)
                    body["model_sha256"] = active.model.sha256
                    body["manifest_sha256"] = active.model.manifest_sha256  # the whole bundle
                    publisher.publish(f"evt/{result.event_type}", body)
                    stats.record_published(result.event_type, body)
                    add("publish", perf() - t3)
                if isinstance(item, Frame):
                    self.board.post(item, result)  # by reference, never waits for a reader
                if max_frames is not None and stats.frames_inferred >= max_frames:
                    self.request_stop("max frames reached")
                    break
        except Exception:
            log.exception("inference thread crashed")
            self.exit_reason = self.exit_reason or "inference thread crashed"
        finally:
            self.finished.set()
