"""Runtime settings in force on a running agent: the configuration file's values, then the
remote overrides (``set_config`` / ``config/desired``) persisted in the state directory."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.agent.events import EventPolicy
from edge_agent.config import OVERRIDES_FILE, AgentConfig, RuntimeSettings, validate_settings
from edge_agent.errors import ConfigError
from edge_agent.tasks import Task
from edge_agent.util.fs import atomic_write
from edge_agent.util.statefiles import set_aside

log = logging.getLogger(__name__)


class Settings:
    """Event policy, fps, health interval and task limits, with the config version they carry.

    Args:
        config: the configuration the defaults come from (replaced by :meth:`reset` on reload).
    """

    def __init__(self, config: AgentConfig) -> None:
        self._lock = threading.Lock()
        self.overrides: dict[str, Any] = {}
        self.version = 0
        self.on_change: Callable[[], None] = lambda: None  # re-configures the running task
        self.reset(config)

    def reset(self, config: AgentConfig) -> None:
        """Take the defaults of a (re-read) configuration; overrides applied so far stay."""
        self._config = config
        self.policy = EventPolicy(config.events.policy)
        self.fps = config.source.fps
        self.health_interval_s = config.health.interval_s

    def restart_policy(self) -> None:
        """Forget what the event policy has seen (after a model swap)."""
        self.policy = EventPolicy(self.policy.spec)

    def task_limits(self) -> tuple[float | None, int | None]:
        """The score threshold and top-k the task runs with."""
        events = self._config.events
        threshold: float | None = self.overrides.get("score_threshold", events.score_threshold)
        top_k: int | None = self.overrides.get("top_k", events.top_k)
        return threshold, top_k

    def load(self, state_dir: Path) -> None:
        """Apply the overrides persisted in ``state_dir``: a damaged file is set aside, one with
        settings this version refuses is logged and ignored."""
        path = state_dir / OVERRIDES_FILE
        try:
            version, raw = _read_overrides(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("ignoring unreadable %s: %s", path, exc.strerror or exc)
            return
        except (ValueError, RecursionError) as exc:
            set_aside(path, str(exc))
            return
        try:
            settings = validate_settings(raw)
        except ConfigError as exc:
            log.warning("ignoring invalid %s: %s", path, exc)
            return
        self.version = version
        self._apply(settings)

    def _apply(self, settings: RuntimeSettings) -> None:
        values = settings.model_dump(exclude_none=True, exclude={"version"})
        with self._lock:
            self.overrides.update(values)
            if "events" in values:
                self.policy = EventPolicy(values["events"])
            if "fps" in values:
                self.fps = values["fps"]
            if "health_interval_s" in values:
                self.health_interval_s = values["health_interval_s"]
            self.on_change()

    def apply(self, changes: dict[str, Any], state_dir: Callable[[], Path]) -> None:
        """Validate, persist and apply runtime settings in the state directory (made on demand).

        Persisted first, so what runs is what a restart brings back and what the ack says.

        Raises:
            ConfigError: the changes are invalid or cannot be persisted (nothing applied).
        """
        settings = validate_settings(changes)
        version = settings.version if settings.version is not None else self.version + 1
        values = settings.model_dump(exclude_none=True, exclude={"version"})
        path = state_dir() / OVERRIDES_FILE
        data = {"version": version, "settings": {**self.overrides, **values}}
        try:
            atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise ConfigError(f"cannot persist settings to {path}: {exc.strerror or exc}; nothing changed") from exc
        self._apply(settings)
        self.version = version
        log.info("config version %d applied: %s", self.version, settings.model_dump(exclude_none=True))

    def reported(self, task: Task | None) -> dict[str, Any]:
        """The settings in force, as published on ``config/reported``."""
        events = self._config.events
        return {
            "version": self.version,
            "events": self.policy.spec,
            "score_threshold": task.threshold if task else events.score_threshold,
            "top_k": task.top_k if task else events.top_k,
            "fps": self.fps,
            "health_interval_s": self.health_interval_s,
        }


def _read_overrides(path: Path) -> tuple[int, dict[str, Any]]:
    """(version, settings) of the overrides file.

    Raises:
        OSError: it cannot be read.
        ValueError: it is not ``{"version": int, "settings": {...}}`` in UTF-8 JSON.
    """
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version, settings = data.get("version", 0), data.get("settings", {})
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(settings, dict):
        raise ValueError("needs an integer version and a settings object")
    return version, settings
