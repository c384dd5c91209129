"""Remote configuration (``…/config/desired``): reconcile the agent with the desired version.

The last applied version is persisted (``<state_dir>/desired-version``), so the
retained desired config that comes again after every reconnect or restart is not
applied twice; a stale version is refused. Every outcome is reported on
``config/reported`` (retained) as ``{version, status, reason?, config, source}``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from edge_agent.control import AgentControl
from edge_agent.errors import EdgeError
from edge_agent.remote.guards import MAX_COMMAND_BYTES, MAX_DEPTH, SET_CONFIG_MAX_KEYS, RejectError, loads_strict
from edge_agent.remote.protocol import CommandError, Publish
from edge_agent.util.fs import atomic_write
from edge_agent.util.statefiles import set_aside
from edge_agent.util.strict_json import depth

log = logging.getLogger(__name__)

VERSION_FILE = "desired-version"
# The envelope fields are accepted: an operator tool may send a wrapped body.
DESIRED_KEYS = frozenset({"version", "config", "ts", "schema", "device_id", "boot_id", "session", "seq", "ts_ms",
                          "replayed"})


def parse_desired(payload: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> tuple[int, dict[str, Any]]:
    """``{"version": int, "config": {...}}`` → (version, config); raises CommandError."""
    if len(payload) > max_bytes:
        raise CommandError(f"desired config over {max_bytes} bytes")
    try:
        body = loads_strict(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError, RejectError) as exc:
        raise CommandError("desired config is not valid JSON") from exc
    if not isinstance(body, dict) or depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise CommandError("desired config must be a JSON object")
    if set(body) - DESIRED_KEYS:
        raise CommandError(f"unknown field(s) in desired config: {sorted(set(body) - DESIRED_KEYS)[:5]}")
    version = body.get("version")
    config = body.get("config")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CommandError("desired config needs an integer version >= 0")
    if not isinstance(config, dict) or len(config) > SET_CONFIG_MAX_KEYS:
        raise CommandError("desired config needs a config object")
    return version, config


class DesiredConfig:
    """Applies desired configs to the agent in version order and reports each outcome.

    Args:
        control: the running agent (None: versions are checked, nothing is applied).
        publish: publishes ``config/reported`` (the publisher wraps the body).
        state_dir: where the last applied version is kept (None: in memory only).
    """

    def __init__(self, *, control: AgentControl | None, publish: Publish, state_dir: Path | None) -> None:
        self.control = control
        self._publish = publish
        self._path = state_dir / VERSION_FILE if state_dir is not None else None
        self.version = self._load_version()
        self.dropped = 0  # deferred configs replaced by a newer one before they were applied
        self._pending: bytes | None = None
        self._lock = threading.Lock()

    @property
    def pending(self) -> bool:
        """A deferred desired config waits to be applied."""
        return self._pending is not None

    def defer(self, payload: bytes) -> bool:
        """Keep ``payload`` for :meth:`apply_deferred` (any thread); True if it replaced an older one."""
        with self._lock:
            replaced = self._pending is not None
            self._pending = payload
        self.dropped += 1 if replaced else 0
        return replaced

    def apply_deferred(self) -> None:
        """Apply the deferred desired config, if any; never raises."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            try:
                self.apply(pending)
            except Exception:  # keep the worker alive whatever happens
                log.exception("handling deferred desired config failed")

    def apply(self, payload: bytes) -> None:
        """Reconcile with one ``config/desired`` message (empty: the retained config was cleared)."""
        if not payload:
            return  # retained desired config cleared
        try:
            version, config = parse_desired(payload)
        except CommandError as exc:
            self._report(self.version, "rejected", str(exc))
            return
        if self.version is not None and version <= self.version:
            if version < self.version:
                self._report(version, "rejected", f"stale version {version} <= {self.version}")
            # Equal: already applied (the retained message comes again after every reconnect).
            return
        if self.control is None:
            return
        try:
            # The desired version becomes the agent's config version (status, health, reported).
            reported = self.control.apply_config({**config, "version": version})
        except EdgeError as exc:
            self._report(version, "rejected", str(exc))
            return
        self.version = version
        self._save_version(version)
        self._report(version, "applied", config=reported)

    def _current_config(self) -> dict[str, Any] | None:
        if self.control is None:
            return None
        try:
            config = self.control.reported_config()
        except Exception:  # the report must go out even if the app misbehaves
            log.exception("reported_config failed")
            return None
        return dict(config) if isinstance(config, dict) else None

    def _report(self, version: int | None, status: str, reason: str | None = None,
                config: dict[str, Any] | None = None) -> None:
        """Publish ``config/reported`` (retained): ``{version, status, reason?, config, source}``."""
        body: dict[str, Any] = {"version": version, "status": status}
        if reason is not None:
            body["reason"] = reason
        body["config"] = config if config is not None else self._current_config()
        body["source"] = "desired"
        self._publish("config/reported", body)

    def _load_version(self) -> int | None:
        """The last applied version; None when there is none (a damaged file is set aside)."""
        if self._path is None:
            return None
        try:
            version = int(self._path.read_bytes().decode("ascii"))
        except OSError:
            return None
        except ValueError:
            set_aside(self._path, "not a version number")
            return None
        if version < 0:
            set_aside(self._path, "a negative version")
            return None
        return version

    def _save_version(self, version: int) -> None:
        if self._path is None:
            return
        try:
            atomic_write(self._path, str(version).encode())
        except OSError as exc:
            log.warning("cannot persist desired config version: %s", exc)
