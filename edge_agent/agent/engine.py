"""The model the pipeline runs: verify and load it, configure its task, and hot-swap a new one
between two inferences (refused when the running source cannot feed it)."""

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
from edge_agent.model.loader import LoadedModel, ModelFile, open_model, verify_model
from edge_agent.tasks import Task, create_task

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

    @property
    def model(self) -> LoadedModel:
        if self.current is None:
            raise EdgeError("no model loaded")
        return self.current.model

    def verify(self) -> ModelFile:
        """Check the configured model (sha256, signature); a damaged ``current`` falls back to ``previous``."""
        config = self._config()
        cfg = config.model
        try:
            return verify_model(config.bundle_path, sidecar=cfg.sidecar, public_key=cfg.public_key)
        except BundleError:
            if cfg.bundle is not None:
                raise
            # The installed `current` is damaged: the model store falls back to `previous`.
            from edge_agent.store.layout import active_model

            fallback = active_model(config.state_dir)
            if fallback is None or Path(fallback.directory) == config.bundle_path:
                raise
            log.warning("models/current cannot be used; running %s instead", fallback.directory)
            return verify_model(Path(fallback.directory), public_key=cfg.public_key)

    def load(self, verified: ModelFile | None = None) -> ActiveModel:
        """Open the interpreter and create the configured task (not yet running)."""
        cfg = self._config().model
        model = open_model(
            verified or self.verify(),
            threads=cfg.threads,
            delegate=cfg.delegate,
            delegate_options=cfg.delegate_options or None,
            runtime_kind=cfg.runtime,
        )
        try:
            task = create_task(model.manifest, model.labels, model.runtime.inputs, model.runtime.outputs)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{model.path}: {exc}") from exc
        self.configure(task)
        log.info(
            "model %s %s (%s, sha256 %s, manifest %s) on %s, %d thread(s)",
            model.manifest.name, model.manifest.version, model.manifest.task, model.sha256[:12],
            model.manifest_sha256[:12], model.runtime.backend, cfg.threads,
        )
        return ActiveModel(model, task)

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
            on_swapped(new)
        return new


def check_compatible(old: LoadedModel, new: LoadedModel) -> None:
    """A hot swap keeps the source: the new model must take the same kind of input."""
    problems = compat.source_differences(old.manifest, new.manifest)
    if problems:
        raise BundleError(f"the new model does not fit the running source ({'; '.join(problems)}); restart the agent")
