"""Publishers: where results, health and status go. Created from config by type name.

A publisher never blocks the caller on the network: ``publish`` hands the message
to a queue (or writes a line to stdout) and returns.

``kind`` is the topic suffix under ``edge/v1/{device_id}/``: ``status``,
``health``, ``evt/<type>``, ``ack``, ``config/reported``. ``payload`` is the message
body; the publisher wraps it in the envelope (:mod:`edge_agent.messaging.envelope`) when
it is published, and no other code does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.control import AgentControl
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.messaging.link import InboundMessage


class Inbound(Protocol):
    """Receives what arrives on the device's subscriptions (the agent's command inbox,
    :class:`edge_agent.remote.inbox.Inbox`). Called on the network thread: never blocks."""

    def filters(self) -> tuple[str, ...]:
        """The MQTT topic filters to subscribe to."""
        ...

    def offer(self, message: InboundMessage) -> None:
        """Queue one message for the inbox's own worker."""
        ...

    def set_control(self, control: AgentControl) -> None: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    @property
    def alive(self) -> bool: ...

    def stats(self) -> dict[str, Any]:
        """Counters merged into the health message."""
        ...


class Publisher(ABC):
    """Sink for device messages."""

    @abstractmethod
    def start(self, control: AgentControl | None = None) -> None:
        """Begin delivering (connect asynchronously); never raises on network failure."""

    @abstractmethod
    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Wrap ``payload`` in the envelope and queue it for delivery; must not block on the network."""

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, publish ``offline``, disconnect."""

    def stats(self) -> dict[str, Any]:
        """Delivery counters merged into the health payload (outbox depth, reconnects …)."""
        return {}

    def problems(self) -> list[str]:
        """Delivery problems worth a word in the agent's final summary (e.g. a duplicate device id)."""
        return []

    @property
    def connected(self) -> bool:
        return False

    def attach(self, inbound: Inbound) -> None:
        """Deliver inbound messages (commands, desired config) to ``inbound``."""
        raise ConfigError(f"the {type(self).__name__} receives no commands; use the mqtt publisher")

    def thread_alive(self) -> bool:
        """The publisher's own threads run (a broker outage is no reason to say False)."""
        return True


PublisherFactory = Callable[..., Publisher]
PUBLISHERS: dict[str, PublisherFactory] = {}


def register_publisher(kind: str, factory: PublisherFactory) -> None:
    PUBLISHERS[kind] = factory


def create_publisher(kind: str, **options: Any) -> Publisher:
    """Create a publisher by registry name; raises ValueError for an unknown type."""
    if kind not in PUBLISHERS:
        _load_builtin(kind)
    try:
        factory = PUBLISHERS[kind]
    except KeyError:
        raise ValueError(f"unknown publisher type {kind!r}; choose one of {sorted(PUBLISHERS)}") from None
    return factory(**options)


def _load_builtin(kind: str) -> None:
    import importlib

    if kind in ("stdout", "mqtt"):
        importlib.import_module(f"edge_agent.messaging.publishers.{kind}")
