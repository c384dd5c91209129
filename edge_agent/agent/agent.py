"""The agent pipeline: capture thread → bounded queue → inference thread → publisher.

Capture never waits for inference: on live sources (and files paced by
``fps``) a full queue drops its oldest item, counted in ``frames_dropped``.
File sources otherwise block the capture thread instead, so every frame is
inferred in order. Inference never waits for the network: publishers queue.

:class:`Agent` also implements :class:`edge_agent.messaging.publishers.AgentControl`
(status, remote config, reload, snapshot, health) for the MQTT command handler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.agent.health import HealthSampler
from edge_agent.agent.stats import PipelineStats
from edge_agent.config import (
    OVERRIDES_FILE,
    AgentConfig,
    RuntimeSettings,
    load_config,
    parse_event_policy,
    validate_settings,
)
from edge_agent.control import ProbeSample
from edge_agent.errors import BundleError, ConfigError, EdgeError
from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.publishers import Publisher, create_publisher
from edge_agent.model import compat
from edge_agent.model.loader import LoadedModel, ModelFile, open_model, verify_model
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.sources import Item, Source, create_source
from edge_agent.sources.base import Frame
from edge_agent.tasks import Result, Task, create_task
from edge_agent.util.fs import atomic_write

if TYPE_CHECKING:
    from edge_agent.remote.ota import OtaUpdater

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


class EventPolicy:
    """every | change | interval:S — which results are published."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.mode, self.interval_s = parse_event_policy(spec)
        self._last_key: tuple[Any, ...] | None = None
        self._has_last = False
        self._last_t = float("-inf")

    def should_publish(self, result: Result, now: float) -> bool:
        if result.always or self.mode == "every":
            return True
        if self.mode == "change":
            if self._has_last and result.change_key == self._last_key:
                return False
            self._has_last, self._last_key = True, result.change_key
            return True
        if now - self._last_t >= self.interval_s:
            self._last_t = now
            return True
        return False


@dataclass(frozen=True)
class Engine:
    """What the inference thread swaps atomically on a model reload."""

    model: LoadedModel
    task: Task


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A file-source item already turned into a model input by the capture thread."""

    item: Item
    engine: Engine
    tensor: Any
    context: Any
    prepare_s: float


class Agent:
    """One running pipeline. Create, then :meth:`run` (blocking) or :meth:`start`/:meth:`stop`.

    Args:
        config: validated configuration.
        config_path: the TOML file, re-read by :meth:`reload`.
        cli: command-line settings layered over the file on reload.
        publisher_factory: builds the publisher (default: by ``config.publisher_kind``).
    """

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None = None,
        cli: dict[str, Any] | None = None,
        publisher_factory: Callable[[Agent], Publisher] | None = None,
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._cli = cli or {}
        self._publisher_factory = publisher_factory
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._reload_requested = threading.Event()
        self._settings_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # SIGHUP (main thread) vs OTA worker / MQTT commands
        self._engine: Engine | None = None
        self.source: Source | None = None
        self.publisher: Publisher | None = None
        self.envelope: EnvelopeFactory | None = None
        self._queue: FrameQueue | None = None
        self._threads: list[threading.Thread] = []
        self._latest_frame: Frame | None = None
        self._config_version = 0
        self._overrides: dict[str, Any] = {}
        self._policy = EventPolicy(config.events.policy)
        self._fps = config.source.fps
        self._health_interval = config.health.interval_s
        self._sampler: HealthSampler | None = None
        self._notifier: Any = None
        self._watchdog: Any = None
        self._first_result_s: float | None = None
        self._t_start = time.monotonic()
        self.exit_reason = ""

    # ------------------------------------------------------------------ state

    @property
    def progress_counter(self) -> int:
        """Frames inferred so far (the watchdog checks that it grows)."""
        return self.stats.frames_inferred

    @property
    def model(self) -> LoadedModel:
        if self._engine is None:
            raise EdgeError("no model loaded")
        return self._engine.model

    def is_healthy(self) -> bool:
        """Inference and capture threads alive (or finished normally) and publisher running."""
        if self._engine is None or not self._threads:
            return False
        alive = all(t.is_alive() for t in self._threads) or self._finished.is_set()
        check = getattr(self.publisher, "thread_alive", None)
        publisher_ok = bool(check()) if callable(check) else True
        return alive and publisher_ok

    # ------------------------------------------------------------------ loading

    def _state_dir(self) -> Path:
        state = self.config.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create state directory {state}: {exc.strerror or exc}") from exc
        return state

    def _verify_model(self) -> ModelFile:
        cfg = self.config.model
        try:
            return verify_model(self.config.bundle_path, sidecar=cfg.sidecar, public_key=cfg.public_key)
        except BundleError:
            if cfg.bundle is not None:
                raise
            # The installed `current` is damaged: the model store falls back to `previous`.
            store = _modelstore()
            fallback = store.active_model(self.config.state_dir) if store is not None else None
            if fallback is None or Path(fallback.directory) == self.config.bundle_path:
                raise
            log.warning("models/current cannot be used; running %s instead", fallback.directory)
            return verify_model(Path(fallback.directory), public_key=cfg.public_key)

    def _load_engine(self, verified: ModelFile | None = None) -> Engine:
        cfg = self.config.model
        model = open_model(
            verified or self._verify_model(),
            threads=cfg.threads,
            delegate=cfg.delegate,
            delegate_options=cfg.delegate_options or None,
            runtime_kind=cfg.runtime,
        )
        try:
            task = create_task(model.manifest, model.labels, model.runtime.inputs, model.runtime.outputs)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{model.path}: {exc}") from exc
        self._configure_task(task)
        log.info(
            "model %s %s (%s, sha256 %s, manifest %s) on %s, %d thread(s)",
            model.manifest.name, model.manifest.version, model.manifest.task, model.sha256[:12],
            model.manifest_sha256[:12], model.runtime.backend, cfg.threads,
        )
        return Engine(model, task)

    def _configure_task(self, task: Task) -> None:
        events = self.config.events
        task.configure(
            self._overrides.get("score_threshold", events.score_threshold),
            self._overrides.get("top_k", events.top_k),
        )

    def _load_overrides(self) -> None:
        path = self.config.state_dir / OVERRIDES_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        try:
            settings = validate_settings(data.get("settings", {}))
        except (ConfigError, AttributeError) as exc:
            log.warning("ignoring invalid %s: %s", path, exc)
            return
        self._config_version = int(data.get("version", 0))
        self._apply_settings(settings)

    def _apply_settings(self, settings: RuntimeSettings) -> None:
        values = settings.model_dump(exclude_none=True, exclude={"version"})
        with self._settings_lock:
            self._overrides.update(values)
            if "events" in values:
                self._policy = EventPolicy(values["events"])
            if "fps" in values:
                self._fps = values["fps"]
            if "health_interval_s" in values:
                self._health_interval = values["health_interval_s"]
            if self._engine is not None:
                self._configure_task(self._engine.task)

    # ------------------------------------------------------------------ AgentControl

    def status_info(self) -> dict[str, Any]:
        model = self._engine.model if self._engine else None
        return {
            "agent_version": __version__,
            "model": model.info() if model else None,
            "task": model.manifest.task if model else None,
            "config_version": self._config_version,
        }

    def reported_config(self) -> dict[str, Any]:
        task = self._engine.task if self._engine else None
        return {
            "version": self._config_version,
            "events": self._policy.spec,
            "score_threshold": task.threshold if task else self.config.events.score_threshold,
            "top_k": task.top_k if task else self.config.events.top_k,
            "fps": self._fps,
            "health_interval_s": self._health_interval,
        }

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate, apply and persist runtime settings; returns the reported config."""
        settings = validate_settings(changes)
        self._apply_settings(settings)
        self._config_version = settings.version if settings.version is not None else self._config_version + 1
        path = self._state_dir() / OVERRIDES_FILE
        data = {"version": self._config_version, "settings": self._overrides}
        try:
            atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise ConfigError(f"cannot persist settings to {path}: {exc.strerror or exc}") from exc
        log.info("config version %d applied: %s", self._config_version, settings.model_dump(exclude_none=True))
        return self.reported_config()

    def reload(self) -> None:
        """Re-read the configuration file (runtime settings) and the active model."""
        if self._config_path is not None:
            new = load_config(self._config_path, self._cli)
            self.config = new
            self._policy = EventPolicy(new.events.policy)
            self._fps = new.source.fps
            self._health_interval = new.health.interval_s
            self._load_overrides()
        self.reload_model()

    def reload_model(self) -> dict[str, str]:
        """Load the configured model again (e.g. a new ``current``) and swap it in
        between two inferences. The old model keeps running if the new one fails.

        Returns:
            :meth:`LoadedModel.info` of the model now running (OTA checks its ``manifest_sha256``).

        Raises:
            EdgeError: the new model cannot be loaded or needs a different source.
        """
        with self._reload_lock:
            old = self._engine
            new = self._load_engine()
            if old is not None:
                _check_compatible(old.model, new.model)
            self._engine = new  # one reference assignment: the inference thread picks it up
            self._policy = EventPolicy(self._policy.spec)
            # Probation judges the new model's latency: old timings must not linger in p95.
            self.stats.forget_model_latency()
            if self.publisher is not None:
                self.publisher.publish("status", {"state": "online", **self.status_info()})
        log.info("model swapped to %s %s", new.model.manifest.name, new.model.manifest.version)
        return new.model.info()

    def snapshot_jpeg(self, max_bytes: int) -> bytes | None:
        frame = self._latest_frame
        if frame is None:
            return None
        return encode_jpeg(frame.image, max_bytes)

    def health_extra(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["queue_depth"] = len(self._queue) if self._queue is not None else 0
        snap["source"] = self.source.state() if self.source is not None else None
        model = self._engine.model if self._engine is not None else None
        snap["model_sha256"] = model.sha256 if model else None
        snap["manifest_sha256"] = model.manifest_sha256 if model else None
        snap["config_version"] = self._config_version
        return snap

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    @property
    def bundle_key(self) -> Path | None:
        key = self.config.model.public_key
        return Path(key) if key else None

    @property
    def fixed_model(self) -> Path | None:
        bundle = self.config.model.bundle
        return Path(bundle) if bundle else None

    def probe(self) -> ProbeSample:
        snap = self.stats.snapshot()
        invoke = snap.get("latency_ms", {}).get("invoke", {}) or {}
        p95 = invoke.get("p95")
        return ProbeSample(int(snap.get("frames_inferred", 0)), int(snap.get("errors", 0)),
                           float(p95) if isinstance(p95, int | float) else None)

    @property
    def updater(self) -> OtaUpdater:
        from edge_agent.remote import ota

        return ota.updater_for(self)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, reason: str = "stopped") -> None:
        """Signal-safe: ask the pipeline to stop."""
        if not self.exit_reason:
            self.exit_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        """Signal-safe: reload config and model from the main thread soon."""
        self._reload_requested.set()

    def start(self) -> None:
        """Load the model, open the source, start the publisher and the threads."""
        self._t_start = time.monotonic()
        state_dir = self._state_dir()
        store = _modelstore()
        if store is not None:
            rolled_back = store.note_agent_start(state_dir)  # probation crash counter
            if rolled_back is not None:
                log.warning("model store rolled back after repeated crashes: %s", rolled_back)
        self._load_overrides()
        # Verify the model and open the source before the interpreter exists, so a
        # bad model or source is reported before any native library writes to stderr.
        verified = self._verify_model()
        preprocess = verified.preprocess
        audio = preprocess if isinstance(preprocess, AudioPreprocess) else None
        self.source = create_source(self.config.source, audio)
        self.source.start()
        try:
            self._engine = self._load_engine(verified)
        except BaseException:
            self.source.close()
            raise
        if store is not None:
            store.write_pid_file(state_dir)  # lets `edge-agent install-model` SIGHUP us
        self.envelope = EnvelopeFactory(self.config.device_id, state_dir)
        self.publisher = self._make_publisher()
        self.publisher.start(self)
        self.publisher.publish("status", {"state": "online", **self.status_info()})
        self._sampler = HealthSampler(state_dir)
        self._queue = FrameQueue(self.config.source.queue_size)
        self._threads = [
            threading.Thread(target=self._capture_loop, name="capture", daemon=True),
            threading.Thread(target=self._inference_loop, name="inference", daemon=True),
            threading.Thread(target=self._health_loop, name="health", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._start_systemd()

    def _make_publisher(self) -> Publisher:
        if self._publisher_factory is not None:
            return self._publisher_factory(self)
        kind = self.config.publisher_kind
        options: dict[str, Any] = {"envelope": self.envelope, "control": self}
        if kind == "mqtt":
            cfg = self.config
            options.update(
                config=cfg.mqtt, outbox=cfg.outbox, state_dir=cfg.state_dir,
                command_public_key=cfg.mqtt.command_public_key or cfg.model.public_key,
                command_rate=cfg.mqtt.command_rate, command_burst=cfg.mqtt.command_burst,
            )
        try:
            return create_publisher(kind, **options)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the {kind!r} publisher is not available in this installation ({exc.name} missing)"
            ) from exc
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _start_systemd(self) -> None:
        try:
            from edge_agent.agent import sdnotify
        except ImportError:
            return
        self._notifier = sdnotify.Notifier()
        gate = sdnotify.ProgressGate(lambda: self.progress_counter, self.is_healthy)
        self._watchdog = sdnotify.Watchdog(self._notifier, gate)
        self._watchdog.start()
        model = self.model.manifest
        self._notifier.ready(f"model {model.name} {model.version}; starting")

    def wait(self) -> None:
        """Block until the source ends, a limit is reached or a stop is requested."""
        deadline = self._t_start + self.config.duration_s if self.config.duration_s else None
        while not self._stop.is_set() and not self._finished.is_set():
            timeout = 0.2
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.request_stop("duration reached")
                    break
                timeout = min(timeout, remaining)
            if self._reload_requested.wait(timeout):
                self._reload_requested.clear()
                if self._notifier is not None:
                    self._notifier.reloading()
                try:
                    self.reload()
                except EdgeError as exc:
                    log.error("reload failed, keeping the running model: %s", exc)
                if self._notifier is not None:
                    self._notifier.ready("reloaded")
        if self._finished.is_set() and not self.exit_reason:
            self.exit_reason = "source ended"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop threads, publish a final health message, stop the publisher."""
        if self._notifier is not None:
            self._notifier.stopping(f"stopping: {self.exit_reason}")
        self._stop.set()
        if self.source is not None:
            self.source.stop()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.publisher is not None:
            self._publish_health()
            self.publisher.stop(timeout)
        store = _modelstore()
        if store is not None and self._engine is not None:
            store.remove_pid_file(self.config.state_dir)
            store.note_agent_stop(self.config.state_dir)

    def run(self) -> None:
        """start → wait → stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()

    @property
    def failed(self) -> bool:
        """The run ended because of an error (source failure or a crashed thread)."""
        return self.exit_reason.startswith("source error") or "crashed" in self.exit_reason

    @property
    def first_result_s(self) -> float | None:
        """Seconds from start() to the first inference result."""
        return self._first_result_s

    # ------------------------------------------------------------------ threads

    def _capture_loop(self) -> None:
        source, queue, stats, stop = self.source, self._queue, self.stats, self._stop
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
                fps = self._fps
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
                if source.live or paced:
                    # Live: never spend work on a frame that may be dropped; the
                    # inference thread prepares the freshest one.
                    if queue.put_drop_oldest(item):
                        stats.frames_dropped += 1
                    continue
                # Files at full speed: prepare here, overlapping the previous invoke.
                engine = self._engine
                assert engine is not None
                t0 = perf()
                try:
                    prepared: object = _Prepared(item, engine, *engine.task.prepare(item), perf() - t0)
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
        queue, stats, stop = self._queue, self.stats, self._stop
        assert queue is not None and self.publisher is not None
        publisher = self.publisher
        perf = time.perf_counter
        add = stats.add
        max_frames = self.config.max_frames
        error_logged = 0.0
        try:
            while not stop.is_set():
                raw = queue.get(0.2)
                if raw is None:
                    continue
                if raw is _END:
                    break
                engine = self._engine
                assert engine is not None
                try:
                    if isinstance(raw, _Prepared) and raw.engine is engine:
                        item, tensor, context, prep_s = raw.item, raw.tensor, raw.context, raw.prepare_s
                        t1 = perf()
                    else:  # live source, or the model was swapped after preparation
                        item = raw.item if isinstance(raw, _Prepared) else raw  # type: ignore[assignment]
                        t0 = perf()
                        tensor, context = engine.task.prepare(item)
                        t1 = perf()
                        prep_s = t1 - t0
                    outputs = engine.model.runtime.infer(tensor)
                    t2 = perf()
                    result = engine.task.decode(outputs, item, context)
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
                    self._latest_frame = item
                if self._first_result_s is None:
                    self._first_result_s = time.monotonic() - self._t_start
                if result is not None and self._policy.should_publish(result, time.monotonic()):
                    body = result.body
                    body["ts_frame_ms"] = int(item.ts * 1000)
                    body["latency_ms"] = round((t3 - t1 + prep_s + item.capture_s) * 1000.0, 3)
                    body["model_sha256"] = engine.model.sha256
                    body["manifest_sha256"] = engine.model.manifest_sha256  # the whole bundle
                    publisher.publish(f"evt/{result.event_type}", body)
                    stats.results_published += 1
                    add("publish", perf() - t3)
                if max_frames is not None and stats.frames_inferred >= max_frames:
                    self.request_stop("max frames reached")
                    break
        except Exception:
            log.exception("inference thread crashed")
            self.exit_reason = self.exit_reason or "inference thread crashed"
        finally:
            self._finished.set()

    def _publish_health(self) -> None:
        assert self.publisher is not None
        body: dict[str, Any] = self._sampler.sample() if self._sampler is not None else {}
        body.update(self.health_extra())
        body.update(self.publisher.stats())
        self.publisher.publish("health", body)
        if self._notifier is not None:
            broker = "connected" if self.publisher.connected else "disconnected"
            self._notifier.status(
                f"{body.get('fps_inferred', 0)} fps inferred, {body.get('frames_dropped', 0)} dropped, "
                f"publisher {broker}"
            )

    def _health_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            if time.monotonic() - last < self._health_interval:
                continue
            last = time.monotonic()
            try:
                self._publish_health()
            except Exception:
                log.exception("health sampling failed")


def _modelstore() -> Any:
    """The model store's hooks the agent calls (active model, probation, pid file)."""
    from types import SimpleNamespace

    from edge_agent.store import layout, pidfile, probation

    return SimpleNamespace(
        active_model=layout.active_model, note_agent_start=probation.note_agent_start,
        note_agent_stop=probation.note_agent_stop, write_pid_file=pidfile.write_pid_file,
        remove_pid_file=pidfile.remove_pid_file,
    )


def _check_compatible(old: LoadedModel, new: LoadedModel) -> None:
    """A hot swap keeps the source: the new model must take the same kind of input."""
    problems = compat.source_differences(old.manifest, new.manifest)
    if problems:
        raise BundleError(f"the new model does not fit the running source ({'; '.join(problems)}); restart the agent")


def encode_jpeg(image: Any, max_bytes: int) -> bytes | None:
    """JPEG of ``image`` no larger than ``max_bytes`` (lower quality, then smaller size)."""
    import cv2

    current = image
    for _ in range(8):
        for quality in (85, 70, 50, 35):
            ok, data = cv2.imencode(".jpg", current, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(data) <= max_bytes:
                return bytes(data.tobytes())
        h, w = current.shape[:2]
        if h < 16 or w < 16:
            return None
        current = cv2.resize(current, (max(1, int(w * 0.7)), max(1, int(h * 0.7))), interpolation=cv2.INTER_AREA)
    return None
