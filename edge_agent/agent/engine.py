"""The model the pipeline runs: verify and load it (an installed model that cannot start falls
back to ``previous``), configure its task, and hot-swap a new one between two inferences
(refused when the running source cannot feed it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.agent.settings import Settings
from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, EdgeError
from edge_agent.model import compat
from edge_agent.model.bundle import BundleLimits
from edge_agent.model.loader import LoadedModel, ModelFile, verify_model
from edge_agent.model.startup import start_model
from edge_agent.sources import Source
from edge_agent.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    """What the inference thread swaps atomically on a model reload."""

    model: LoadedModel
    task: Task


class Engine:
    """Owns the running model: one reference (:attr:`current`) the inference thread reads per item.

    Args:
        config: returns the configuration in force (it changes on reload).
        settings: the runtime settings the task is configured with.
    """

    def __init__(self, config: Callable[[], AgentConfig], settings: Settings) -> None:
        self._config = config
        self._settings = settings
        self._swap_lock = threading.Lock()  # SIGHUP (main thread) vs OTA worker / MQTT commands
        self.current: ActiveModel | None = None
        self.fallback: str | None = None  # why the agent started ``previous`` instead of ``current``

    @property
    def model(self) -> LoadedModel:
        if self.current is None:
            raise EdgeError("no model loaded")
        return self.current.model

    def candidates(self) -> list[Path]:
        """What to try, in order: the configured model; for the store, ``current`` then ``previous``."""
        config = self._config()
        if config.model.bundle is not None:
            return [config.bundle_path]
        from edge_agent.store.layout import MODELS, PREVIOUS  # the store is only needed without a fixed model

        current, previous = config.bundle_path, config.state_dir / MODELS / PREVIOUS
        same = previous.exists() and current.exists() and previous.resolve() == current.resolve()
        return [current] if same else [current, previous]

    def verify(self) -> ModelFile:
        """Check the configured model (sha256, signature); a damaged ``current`` falls back to ``previous``."""
        first: BundleError | None = None
        for path in self.candidates():
            try:
                verified = self._verify(path)
            except BundleError as exc:
                first = first or exc
                continue
            if first is not None:
                log.warning("models/current cannot be used (%s); running %s instead", first, path)
            return verified
        assert first is not None
        raise first

    def _verify(self, path: Path) -> ModelFile:
        cfg = self._config().model
        return verify_model(path, sidecar=cfg.sidecar, public_key=cfg.public_key,
                            limits=BundleLimits.with_model_mb(cfg.max_model_mb))

    def start(self, open_source: Callable[[ModelFile], Source]) -> Source:
        """Verify and load the model to run at start, with the source opened in between (a bad
        model or source is reported before the interpreter writes to stderr).

        An installed ``current`` that cannot be verified or started falls back to ``previous``:
        one WARNING line, and :attr:`fallback` (in status and health) says why. A device never
        crash-loops on a model while another one can run.

        Raises:
            EdgeError: no model can start (the first model's error), or the source fails.
        """
        first: EdgeError | None = None
        for path in self.candidates():
            try:
                verified = self._verify(path)
                source = open_source(verified)
            except BundleError as exc:
                first = first or exc
                continue
            try:
                self.current = self.load(verified)
            except EdgeError as exc:
                source.close()
                first = first or exc
                continue
            except BaseException:
                source.close()
                raise
            if first is not None:
                self.fallback = f"{first}"
                log.warning("the active model cannot start (%s); running the previous model %s instead",
                            first, path)
            return source
        assert first is not None
        raise first

    def load(self, verified: ModelFile | None = None) -> ActiveModel:
        """Open the interpreter and create the configured task (not yet running)."""
        cfg = self._config().model
        started = start_model(
            verified or self.verify(),
            threads=cfg.threads,
            delegate=cfg.delegate,
            delegate_options=cfg.delegate_options or None,
            runtime_kind=cfg.runtime,
        )
        model = started.model
        self.configure(started.task)
        log.info(
            "model %s %s (%s, sha256 %s, manifest %s) on %s, %d thread(s)",
            model.manifest.name, model.manifest.version, model.manifest.task, model.sha256[:12],
            model.manifest_sha256[:12], model.runtime.backend, cfg.threads,
        )
        return ActiveModel(model, started.task)

    def configure(self, task: Task) -> None:
        task.configure(*self._settings.task_limits())

    def configure_current(self) -> None:
        """Apply changed runtime settings to the running task."""
        if self.current is not None:
            self.configure(self.current.task)

    def swap(self, on_swapped: Callable[[ActiveModel], None]) -> ActiveModel:
        """Load the configured model again and make it current; ``on_swapped`` runs before another swap.

        Raises:
            EdgeError: the new model cannot be loaded or needs a different source; the old one stays.
        """
        with self._swap_lock:
            old = self.current
            new = self.load()
            if old is not None:
                check_compatible(old.model, new.model)
            self.current = new  # one reference assignment: the inference thread picks it up
            self.fallback = None
            on_swapped(new)
        return new


def check_compatible(old: LoadedModel, new: LoadedModel) -> None:
    """A hot swap keeps the source: the new model must take the same kind of input."""
    problems = compat.source_differences(old.manifest, new.manifest)
    if problems:
        raise BundleError(f"the new model does not fit the running source ({'; '.join(problems)}); restart the agent")
