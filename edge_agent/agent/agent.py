"""The running agent: starts and stops the pipeline, its publisher, health reports and the
systemd watchdog, and is the :class:`edge_agent.control.AgentControl` that commands, remote
configuration and over-the-air updates act on. The work itself lives in
:mod:`.engine` (the model), :mod:`.pipeline` (the threads), :mod:`.settings` and :mod:`.health`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.agent.engine import ActiveModel, Engine
from edge_agent.agent.health import HealthRecord, HealthReporter, HealthSampler
from edge_agent.agent.motion import MotionGate
from edge_agent.agent.pipeline import Pipeline
from edge_agent.agent.settings import Settings
from edge_agent.agent.snapshot import encode_jpeg
from edge_agent.agent.stats import PipelineStats
from edge_agent.config import AgentConfig, load_config
from edge_agent.control import ProbeSample
from edge_agent.errors import ConfigError, EdgeError
from edge_agent.messaging.envelope import EnvelopeFactory
from edge_agent.messaging.publishers import Publisher, create_publisher
from edge_agent.model.bundle import BundleLimits
from edge_agent.model.loader import LoadedModel, ModelFile
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.sources import Source, create_source
from edge_agent.store.agent_lock import StateDirLock, claim_state_dir

if TYPE_CHECKING:
    from edge_agent.agent.metrics import MetricsServer
    from edge_agent.agent.preview import PreviewServer
    from edge_agent.agent.sdnotify import Notifier, Watchdog
    from edge_agent.remote.ota import OtaUpdater

log = logging.getLogger(__name__)


class Agent:
    """One running pipeline. Create, then :meth:`run` (blocking) or :meth:`start`/:meth:`stop`.

    Args:
        config: validated configuration.
        config_path: the TOML file, re-read by :meth:`reload`.
        cli: command-line settings layered over the file on reload.
        publisher_factory: builds the publisher (default: by ``config.publisher_kind``).
    """

    def __init__(self, config: AgentConfig, config_path: Path | None = None, cli: dict[str, Any] | None = None,
                 publisher_factory: Callable[[Agent], Publisher] | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._cli = cli or {}
        self._publisher_factory = publisher_factory
        self.stats = PipelineStats()
        self.settings = Settings(config)
        self.engine = Engine(lambda: self.config, self.settings)
        self.settings.on_change = self.engine.configure_current
        self.pipeline = Pipeline(self.engine, self.settings, self.stats)
        self.publisher: Publisher | None = None
        self.envelope: EnvelopeFactory | None = None
        self._reload_requested = threading.Event()
        self._reporter: HealthReporter | None = None
        self._notifier: Notifier | None = None
        self._watchdog: Watchdog | None = None
        self._updater: OtaUpdater | None = None
        self._updater_lock = threading.Lock()
        self._state_lock: StateDirLock | None = None
        self._preview: PreviewServer | None = None
        self._metrics: MetricsServer | None = None

    # ------------------------------------------------------------------ state

    @property
    def progress_counter(self) -> int:
        """Frames inferred so far (the watchdog checks that it grows)."""
        return self.stats.frames_inferred

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the Prometheus endpoint while it serves, else None."""
        return self._metrics.address if self._metrics is not None else None

    @property
    def model(self) -> LoadedModel:
        return self.engine.model

    @property
    def source(self) -> Source | None:
        return self.pipeline.source

    @property
    def exit_reason(self) -> str:
        return self.pipeline.exit_reason

    @property
    def failed(self) -> bool:
        """The run ended because of an error (source failure or a crashed thread)."""
        return self.pipeline.failed

    @property
    def first_result_s(self) -> float | None:
        """Seconds from start() to the first inference result."""
        return self.pipeline.first_result_s

    def is_healthy(self) -> bool:
        """Inference, capture and health threads alive (or finished normally) and publisher running."""
        if self.engine.current is None or not self.pipeline.threads:
            return False
        reporting = self._reporter is not None and self._reporter.alive
        alive = (self.pipeline.alive() and reporting) or self.pipeline.finished.is_set()
        return alive and (self.publisher is None or self.publisher.thread_alive())

    # ------------------------------------------------------------------ AgentControl

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

    def status_info(self) -> dict[str, Any]:
        active = self.engine.current
        return {
            "agent_version": __version__,
            "model": active.model.info() if active else None,
            "task": active.model.manifest.task if active else None,
            "config_version": self.settings.version,
            "health_interval_s": self.settings.health_interval_s,
            "model_fallback": self.engine.fallback,
        }

    def model_labels(self) -> list[str]:
        active = self.engine.current
        return list(active.task.labels) if active else []

    def reported_config(self) -> dict[str, Any]:
        active = self.engine.current
        return self.settings.reported(active.task if active else None)

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate, apply and persist runtime settings; returns the reported config. The retained
        ``status`` is published again: it carries the config version and the health interval."""
        self.settings.apply(changes, lambda: ensure_state_dir(self.config))
        if self.publisher is not None:
            self.publisher.publish("status", {"state": "online", **self.status_info()})
        return self.reported_config()

    def reload(self) -> None:
        """Re-read the configuration file (runtime settings) and the active model."""
        if self._config_path is not None:
            new = load_config(self._config_path, self._cli)
            self.config = new
            self.settings.reset(new)
            self.settings.load(new.state_dir)
            with self._updater_lock:
                if self._updater is not None:
                    self._updater.settings = new.ota  # the next update uses the new [ota] limits
                    self._updater.limits = BundleLimits.with_model_mb(new.model.max_model_mb)
                    self._updater.latency_budget_ms = new.model.latency_budget_ms
        self.reload_model()

    def reload_model(self) -> dict[str, str]:
        """Load the configured model again (e.g. a new ``current``) and swap it in
        between two inferences. The old model keeps running if the new one fails.

        Returns:
            :meth:`LoadedModel.info` of the model now running (OTA checks its ``manifest_sha256``).

        Raises:
            EdgeError: the new model cannot be loaded or needs a different source.
        """
        new = self.engine.swap(self._swapped)
        log.info("model swapped to %s %s", new.model.manifest.name, new.model.manifest.version)
        return new.model.info()

    def _swapped(self, new: ActiveModel) -> None:
        self.settings.restart_policy()
        # Probation judges the new model's latency: old timings must not linger in p95.
        self.stats.forget_model_latency()
        if self.publisher is not None:
            self.publisher.publish("status", {"state": "online", **self.status_info()})

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> bytes | None:
        if annotated:
            from edge_agent.agent.annotate import annotate

            obs = self.pipeline.board.latest
            return encode_jpeg(annotate(obs.frame.image, obs.result), max_bytes) if obs is not None else None
        frame = self.pipeline.latest_frame
        return encode_jpeg(frame.image, max_bytes) if frame is not None else None

    def health_extra(self) -> dict[str, Any]:
        return HealthRecord(pipeline=self.pipeline.health()).to_json()

    def probe(self) -> ProbeSample:
        return HealthRecord(pipeline=self.stats.snapshot()).probe_sample()

    @property
    def updater(self) -> OtaUpdater:
        """This agent's over-the-air updater, created on first use."""
        with self._updater_lock:
            if self._updater is None:
                from edge_agent.remote.ota import OtaUpdater

                self._updater = OtaUpdater(self, settings=self.config.ota,
                                           limits=BundleLimits.with_model_mb(self.config.model.max_model_mb))
                self._updater.latency_budget_ms = self.config.model.latency_budget_ms
            return self._updater

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, reason: str = "stopped") -> None:
        """Signal-safe: ask the pipeline to stop."""
        self.pipeline.request_stop(reason)

    def request_reload(self) -> None:
        """Signal-safe: reload config and model from the main thread soon."""
        self._reload_requested.set()

    def start(self) -> None:
        """Load the model, open the source, start the publisher and the threads."""
        self.pipeline.t_start = time.monotonic()
        state_dir = ensure_state_dir(self.config)
        self._state_lock = claim_state_dir(state_dir)  # before anything else there; writes agent.pid
        try:
            self._start(state_dir)
        except BaseException:
            self._stop_servers()  # a later start step failed: free the ports too
            self._release_state_dir()
            raise

    def _start(self, state_dir: Path) -> None:
        self._preview = start_preview(self)  # a port in use fails before anything else started
        self._metrics = start_metrics(self)
        note_start(state_dir)
        self.settings.load(state_dir)
        source = open_source_and_model(self.engine, self.config)
        self.envelope = EnvelopeFactory(self.config.device_id, state_dir)
        self.publisher = self._make_publisher()
        self.publisher.start(self)
        self.publisher.publish("status", {"state": "online", **self.status_info()})
        self._reporter = HealthReporter(HealthSampler(state_dir), self.pipeline.health, self.publisher,
                                        lambda: self.settings.health_interval_s)
        motion = MotionGate.from_config(self.config.motion) if self.config.motion.enabled else None
        self.pipeline.start(source, self.publisher, self.config.source.queue_size, self.config.max_frames, motion)
        self._reporter.start(self.pipeline.stop_event)
        self._notifier, self._watchdog = start_systemd(self)
        self._reporter.notifier = self._notifier

    def _make_publisher(self) -> Publisher:
        if self._publisher_factory is not None:
            return self._publisher_factory(self)
        return make_publisher(self.config, self.envelope, self)

    def wait(self) -> None:
        """Block until the source ends, a limit is reached or a stop is requested."""
        self.pipeline.wait(self.config.duration_s, self._reload_if_requested)

    def _reload_if_requested(self, timeout: float) -> None:
        if not self._reload_requested.wait(timeout):
            return
        self._reload_requested.clear()
        if self._notifier is not None:
            self._notifier.reloading()
        try:
            self.reload()
        except EdgeError as exc:
            log.error("reload failed, keeping the running model: %s", exc)
        if self._notifier is not None:
            self._notifier.ready("reloaded")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop threads, publish a final health message, stop the publisher."""
        if self._notifier is not None:
            self._notifier.stopping(f"stopping: {self.exit_reason}")
        self.pipeline.stop(timeout)
        if self._reporter is not None:
            self._reporter.join(timeout)
        if self._watchdog is not None:
            self._watchdog.stop()
        self._stop_servers()
        if self.publisher is not None:
            if self._reporter is not None:
                self._reporter.publish()
            self.publisher.stop(timeout)
        if self.engine.current is not None:
            note_stop(self.config.state_dir)
        self._release_state_dir()

    def _stop_servers(self) -> None:
        """Stop the preview and the metrics endpoint (their ports are free again)."""
        for server in (self._preview, self._metrics):
            if server is not None:
                server.stop()
        self._preview = self._metrics = None

    def _release_state_dir(self) -> None:
        """Remove the pid file (if still ours) and drop the state directory lock."""
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    def run(self) -> None:
        """start → wait → stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()


def ensure_state_dir(config: AgentConfig) -> Path:
    """The state directory, created when missing.

    Raises:
        ConfigError: it cannot be created.
    """
    state = config.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state}: {exc.strerror or exc}") from exc
    return state


def open_source_and_model(engine: Engine, config: AgentConfig) -> Source:
    """Verify the model, open the source, then load the model into ``engine`` (the source is
    closed again when that fails; an installed model falls back to ``previous``, see
    :meth:`Engine.start`). The interpreter comes last, so a bad model or source is reported
    before any native library writes to stderr."""

    def open_source(verified: ModelFile) -> Source:
        preprocess = verified.preprocess
        source = create_source(config.source, preprocess if isinstance(preprocess, AudioPreprocess) else None)
        if config.motion.enabled and source.kind != "video":
            raise ConfigError(f"motion gating needs pictures, but the {source.type_name} source gives audio; "
                              "drop --motion (motion.enabled)")
        source.start()
        return source

    return engine.start(open_source)


def note_start(state_dir: Path) -> None:
    """Count the start for the model store's probation crash counter (it may roll back).
    Storage never stops the agent: when the count cannot be written (a full disk) it says so."""
    from edge_agent.store.probation import note_agent_start

    try:
        rolled_back = note_agent_start(state_dir)
    except OSError as exc:
        log.warning("cannot record this start for the model's probation: %s", exc.strerror or exc)
        return
    if rolled_back is not None:
        log.warning("model store rolled back after repeated crashes: %s", rolled_back)


def note_stop(state_dir: Path) -> None:
    """Tell the model store the agent stopped cleanly (probation crash count kept)."""
    from edge_agent.store import probation

    try:
        probation.note_agent_stop(state_dir)
    except OSError as exc:
        log.warning("cannot record the clean stop for the model's probation: %s", exc.strerror or exc)


def make_publisher(config: AgentConfig, envelope: EnvelopeFactory | None, control: Agent) -> Publisher:
    """The publisher ``config.publisher_kind`` names, wired to the agent.

    Raises:
        ConfigError: the kind is unknown or not installed.
    """
    kind = config.publisher_kind
    options: dict[str, Any] = {"envelope": envelope, "control": control}
    if kind == "mqtt":
        options.update(config=config.mqtt, outbox=config.outbox, state_dir=config.state_dir)
    try:
        publisher = create_publisher(kind, **options)
        if kind == "mqtt":
            from edge_agent.messaging.publishers.mqtt import MqttPublisher
            from edge_agent.remote.inbox import attach_inbox

            assert isinstance(publisher, MqttPublisher)
            key = config.mqtt.command_public_key or config.model.public_key
            attach_inbox(publisher, control=control, command_public_key=Path(key) if key else None,
                         command_rate=config.mqtt.command_rate, command_burst=config.mqtt.command_burst)
        return publisher
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the {kind!r} publisher is not available in this installation ({exc.name} missing)"
        ) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def start_preview(agent: Agent) -> PreviewServer | None:
    """The live preview when ``[preview] listen`` is set (serving the pipeline's latest frame).

    Raises:
        ConfigError: the address cannot be listened on.
    """
    settings = agent.config.preview
    if settings.address is None:
        return None
    from edge_agent.agent.preview import PreviewServer

    def status() -> dict[str, Any]:
        active = agent.engine.current
        return {"model": active.model.info() if active else None, "health": agent.health_extra()}

    host, port = settings.address
    server = PreviewServer(agent.pipeline.board, host, port, status, title=agent.config.device_id,
                           max_clients=settings.max_clients, max_fps=settings.max_fps, quality=settings.quality)
    server.start()
    return server


def start_metrics(agent: Agent) -> MetricsServer | None:
    """Prometheus ``/metrics`` when ``[metrics] listen`` is set (read from the agent at each scrape).

    Raises:
        ConfigError: the address cannot be listened on.
    """
    address = agent.config.metrics.address
    if address is None:
        return None
    from edge_agent.agent.metrics import BoardReader, MetricsServer, Sources, process_start_time

    def publisher_stats() -> dict[str, Any]:
        publisher = agent.publisher
        return publisher.stats() if publisher is not None else {}

    def model_info() -> dict[str, str] | None:
        active = agent.engine.current
        return active.model.info() if active is not None else None

    sources = Sources(agent.stats, publisher_stats, model_info, lambda: agent.settings.health_interval_s,
                      BoardReader(), process_start_time())
    server = MetricsServer(sources, *address)
    server.start()
    return server


def start_systemd(agent: Agent) -> tuple[Notifier | None, Watchdog | None]:
    """``READY=1`` and the watchdog (pinging only while inference progresses and the agent is healthy)."""
    try:
        from edge_agent.agent import sdnotify
    except ImportError:
        return None, None
    notifier = sdnotify.Notifier()
    gate = sdnotify.ProgressGate(lambda: agent.progress_counter, agent.is_healthy)
    watchdog = sdnotify.Watchdog(notifier, gate)
    watchdog.start()
    model = agent.model.manifest
    notifier.ready(f"model {model.name} {model.version}; starting")
    return notifier, watchdog
