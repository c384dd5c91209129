"""Inbound command and desired-config messages: a bounded queue, one worker, acks routed back.

The MQTT network thread only hands messages to :meth:`Inbox.offer`; commands run
on the inbox's own worker thread, so a slow ``reload`` never stalls keepalives.
When the queue is full a command is refused (``busy``) and a desired config is
deferred, never lost: the worker applies the newest one with its next message.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.control import AgentControl
from edge_agent.messaging.envelope import TOPIC_ROOT, topic_root
from edge_agent.messaging.link import InboundMessage
from edge_agent.model.keys import load_command_public_key
from edge_agent.remote import ota
from edge_agent.remote.builtin import builtin_commands
from edge_agent.remote.desired import DesiredConfig
from edge_agent.remote.guards import peek_id
from edge_agent.remote.handler import CommandHandler
from edge_agent.remote.protocol import Ack, CommandRegistry, CommandSpec, Route, command_registry

if TYPE_CHECKING:
    from edge_agent.messaging.publishers.mqtt import MqttPublisher

log = logging.getLogger(__name__)

COMMAND_QUEUE_MAX = 64


def default_commands() -> dict[str, CommandSpec]:
    """Every command a device accepts: the built-in ones and the privileged model updates."""
    return command_registry(builtin_commands(), ota.commands())


def inbox_filters(device_id: str) -> tuple[str, str]:
    """The topic filters an inbox receives: ``…/cmd/+`` and ``…/config/desired``."""
    root = topic_root(device_id)
    return f"{root}/cmd/+", f"{root}/config/desired"


class Outlet(Protocol):
    """Where the inbox's messages go (the MQTT publisher; it wraps every body in the envelope)."""

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue one message of ``kind`` (``config/reported``, ``evt/snapshot`` …)."""
        ...

    def publish_reply(self, kind: str, payload: dict[str, Any], response_topic: str | None,
                      correlation_data: bytes | None) -> None:
        """Queue ``payload`` on ``kind`` and the same message on ``response_topic`` (MQTT 5)."""
        ...


class Inbox:
    """Receives ``…/cmd/+`` and ``…/config/desired`` for one device and answers every command.

    Args:
        device_id: this device.
        outlet: publishes acks, ``config/reported`` and command output.
        control: the running agent, or None until :meth:`set_control`.
        commands: the allow-listed commands (default: :func:`default_commands`).
        command_public_key: the pinned Ed25519 key for privileged commands.
        state_dir: where the replay cache and the desired-config version live.
    """

    def __init__(
        self,
        device_id: str,
        outlet: Outlet,
        *,
        control: AgentControl | None = None,
        commands: CommandRegistry | None = None,
        command_public_key: Path | None = None,
        command_rate: float = 5.0,
        command_burst: float = 20.0,
        state_dir: Path | None = None,
    ) -> None:
        self.device_id = device_id
        self.root = topic_root(device_id)
        self._outlet = outlet
        key = load_command_public_key(command_public_key) if command_public_key else None
        self.commands = CommandHandler(
            device_id,
            control=control,
            reply=self.send_ack,
            publish=outlet.publish,
            public_key=key,
            rate=command_rate,
            burst=command_burst,
            replay_path=state_dir / "command-ids" if state_dir else None,
            registry=commands if commands is not None else default_commands(),
        )
        self.desired = DesiredConfig(control=control, publish=outlet.publish, state_dir=state_dir)
        self._queue: queue.Queue[InboundMessage | None] = queue.Queue(COMMAND_QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def filters(self) -> tuple[str, ...]:
        """``…/cmd/+`` and ``…/config/desired`` of this device."""
        return inbox_filters(self.device_id)

    def set_control(self, control: AgentControl) -> None:
        self.commands.control = control
        self.desired.control = control

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="mqtt-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {"desired_dropped": self.desired.dropped, "commands": self.commands.snapshot(),
                "commands_rejected": self.commands.stats.rejected}

    # ---- acks ---------------------------------------------------------------------------
    def _response_topic_allowed(self, topic: str) -> bool:
        """A command must not make the device write into the fleet's own topic tree, except
        ``…/reply/…`` under this device (the shipped ACL allows exactly that)."""
        if topic.startswith(f"{self.root}/reply/"):
            return True
        return not topic.startswith((f"{TOPIC_ROOT}/", "homeassistant/", "$"))

    def send_ack(self, ack: Ack, route: Route) -> None:
        """Publish ``ack`` on ``…/ack`` and, when allowed, on the command's MQTT 5 response topic."""
        response_topic = route.response_topic
        if response_topic and not self._response_topic_allowed(response_topic):
            response_topic = None
        self._outlet.publish_reply("ack", ack.body(route.name), response_topic, route.correlation_data)

    # ---- network thread -----------------------------------------------------------------
    def offer(self, message: InboundMessage) -> None:
        """Queue one inbound message (called on the network thread: never blocks)."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            if message.topic.startswith(f"{self.root}/cmd/"):
                ack = Ack(peek_id(message.payload, self.commands.max_bytes), "rejected", "busy")
                self.commands.record(ack)
                self.send_ack(ack, Route(message.topic.rsplit("/", 1)[-1], message.response_topic,
                                         message.correlation_data))
            elif message.topic == f"{self.root}/config/desired":
                # Not lost: the newest desired config waits in a slot the worker checks.
                replaced = self.desired.defer(message.payload)
                log.warning("command queue full: desired config deferred%s",
                            " (replacing an older deferred one)" if replaced else "")

    # ---- worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        cmd_prefix = f"{self.root}/cmd/"
        while not self._stop.is_set():
            message = self._queue.get()
            if message is None:
                return
            self.desired.apply_deferred()
            try:
                if message.topic.startswith(cmd_prefix):
                    self.commands.handle(
                        message.topic[len(cmd_prefix):],
                        message.payload,
                        retained=message.retain,
                        response_topic=message.response_topic,
                        correlation_data=message.correlation_data,
                    )
                elif message.topic == f"{self.root}/config/desired":
                    self.desired.apply(message.payload)
            except Exception:  # keep the worker alive whatever happens
                log.exception("handling %s failed", message.topic)


def attach_inbox(
    publisher: MqttPublisher,
    *,
    control: AgentControl | None = None,
    commands: CommandRegistry | None = None,
    command_public_key: Path | None = None,
    command_rate: float = 5.0,
    command_burst: float = 20.0,
    state_dir: Path | None = None,
) -> Inbox:
    """An inbox for ``publisher``'s device, attached to it (acks and replies go out through it).

    ``state_dir`` defaults to the publisher's (replay cache, desired-config version).
    """
    inbox = Inbox(
        publisher.device_id, publisher, control=control, commands=commands,
        command_public_key=command_public_key, command_rate=command_rate, command_burst=command_burst,
        state_dir=state_dir if state_dir is not None else publisher.state_dir,
    )
    publisher.attach(inbox)
    return inbox
