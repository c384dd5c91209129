"""The running agent as the rest of the device sees it: one typed boundary.

Remote commands (:mod:`edge_agent.remote`), over-the-air updates (:mod:`edge_agent.remote.ota`)
and the publishers (:mod:`edge_agent.messaging.publishers`) reach the agent only through
:class:`AgentControl`; nothing looks attributes up by name. The agent
(:class:`edge_agent.agent.agent.Agent`) implements it, and so can a test double.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edge_agent.remote.ota import OtaUpdater


@dataclass(frozen=True)
class ProbeSample:
    """What the running pipeline reports to the probation monitor after an update."""

    inferences: int
    errors: int
    invoke_p95_ms: float | None


class ModelHost(Protocol):
    """What an over-the-air update needs from the agent it updates."""

    @property
    def state_dir(self) -> Path:
        """The model store's directory."""
        ...

    @property
    def bundle_key(self) -> Path | None:
        """The public key bundles must be signed with (None: the store's trusted key)."""
        ...

    @property
    def fixed_model(self) -> Path | None:
        """The bundle the agent was told to run (``--bundle``), which the store cannot replace."""
        ...

    def reload_model(self) -> dict[str, str]:
        """Load the store's active model and swap it in; returns its info with ``manifest_sha256``.

        Raises:
            edge_agent.errors.EdgeError: the new model cannot be loaded; the old one keeps running.
        """
        ...

    def probe(self) -> ProbeSample:
        """Inference and error counts and the live invoke p95 since the last swap."""
        ...


class AgentControl(ModelHost, Protocol):
    """What remote commands, desired configuration and updates may do to a running agent."""

    def status_info(self) -> dict[str, Any]:
        """Agent version, model name/version/sha256, task and config version (the birth message)."""
        ...

    def model_labels(self) -> list[str]:
        """The running model's labels (what its results can name; Home Assistant discovery)."""
        ...

    def reported_config(self) -> dict[str, Any]:
        """The runtime settings in force, as published on ``config/reported``."""
        ...

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate, apply and persist runtime settings; returns the new reported config.

        Raises:
            edge_agent.errors.ConfigError: the changes are invalid; nothing was applied.
        """
        ...

    def reload(self) -> None:
        """Re-read the configuration file and the active model."""
        ...

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> bytes | None:
        """The latest frame as a JPEG of at most ``max_bytes``, or None (no frame yet, or audio);
        ``annotated``: with its result drawn (boxes, labels, scores)."""
        ...

    def health_extra(self) -> dict[str, Any]:
        """Pipeline figures for the health message (stages, fps, drops, queue, source, model)."""
        ...

    @property
    def updater(self) -> OtaUpdater:
        """This agent's over-the-air updater (one per agent; it serialises updates and rollbacks)."""
        ...
