"""The command protocol's values: acks, reply routes, the context a command runs with, signatures.

A command function gets a :class:`CommandContext` and returns the final
:class:`Ack`, or returns an ``in_progress`` ack and later calls ``ctx.reply``
(from any thread) with ``succeeded``/``failed``; work that may reply should start
from ``ctx.after_ack`` so that no later ack can overtake the returned one. Commands are listed explicitly
in a registry built with :func:`command_registry` (no import side effects).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edge_agent.control import AgentControl
from edge_agent.errors import EdgeError

if TYPE_CHECKING:  # cryptography costs ~6 MB RSS: loaded only when a command key is pinned or used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

AckStatus = Literal["accepted", "rejected", "in_progress", "succeeded", "failed"]

# Used with fullmatch: with match, "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class CommandError(EdgeError):
    """A command's arguments are invalid (the reason goes into the rejected ack)."""


@dataclass(frozen=True)
class Ack:
    id: str | None
    status: AckStatus
    reason: str = ""
    result: dict[str, Any] | None = None

    def body(self, name: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "reason": self.reason, "command": name}
        if self.result is not None:
            out["result"] = self.result
        return out


@dataclass(frozen=True)
class Route:
    """Where acks for one command go besides ``…/ack`` (MQTT 5 request/response)."""

    name: str | None
    response_topic: str | None = None
    correlation_data: bytes | None = None


Reply = Callable[[Ack, Route], None]
Publish = Callable[[str, dict[str, Any]], None]


@dataclass
class CommandContext:
    """What a command function can use."""

    device_id: str
    name: str
    id: str
    args: dict[str, Any]
    control: AgentControl | None
    publish: Publish
    route: Route
    _reply: Reply
    _after: list[Callable[[], None]] = field(default_factory=list)

    def after_ack(self, start: Callable[[], None]) -> None:
        """Run ``start`` once the command's returned ack has been sent (e.g. start a worker that
        will reply later), so the acks of one command go out in order."""
        self._after.append(start)

    def run_after_ack(self) -> None:
        """Called by the handler after sending the returned ack; never raises."""
        while self._after:
            start = self._after.pop(0)
            try:
                start()
            except Exception:  # the MQTT worker thread must survive a broken command
                log.exception("starting the work of command %s failed", self.id)

    def reply(self, ack: Ack) -> None:
        """Send a further ack (e.g. ``succeeded`` after ``in_progress``); never raises."""
        try:
            self._reply(ack, self.route)
        except Exception:  # replies come from worker threads; never crash them
            log.exception("sending ack for command %s failed", self.id)


CommandFn = Callable[[CommandContext], Ack]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    run: CommandFn
    privileged: bool = False
    description: str = ""


CommandRegistry = Mapping[str, CommandSpec]


def command(name: str, run: CommandFn, *, privileged: bool = False, description: str = "") -> CommandSpec:
    """An allow-listed command. Privileged ones need a valid signature; raises ValueError for a bad name."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid command name {name!r}")
    return CommandSpec(name, run, privileged, description)


def command_registry(*groups: Iterable[CommandSpec]) -> dict[str, CommandSpec]:
    """The commands a device accepts, by name; a later group's command replaces an earlier one's."""
    return {spec.name: spec for group in groups for spec in group}


# ---- signatures -------------------------------------------------------------------------
def signing_bytes(device_id: str, name: str, body: dict[str, Any]) -> bytes:
    """Canonical bytes a command signature covers."""
    signed = {
        "device_id": device_id,
        "name": name,
        "id": body.get("id"),
        "ts": body.get("ts"),
        "expires": body.get("expires"),
        "args": body.get("args", {}),
    }
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_command(key: Ed25519PrivateKey, device_id: str, name: str, body: dict[str, Any]) -> str:
    """Base64 signature for ``body`` (operator side; used by ``edge-fleet send --sign-key``)."""
    return base64.b64encode(key.sign(signing_bytes(device_id, name, body))).decode()
