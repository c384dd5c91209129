"""Remote commands (``edge/v1/{device}/cmd/{name}``): hostile input, answered with an ack each.

Checks, in order, before anything runs: retained messages are refused, a rate
limit (token bucket), a size cap before parsing, UTF-8, JSON (no NaN, no
duplicate keys), a JSON object with bounded nesting, the strict schema ``{id,
ts?, expires, args?, sig?}`` (no other keys, right types), the allow-listed
name, expiry (not expired, not too far ahead, ``ts`` not in the future),
replayed ids, a bounded number of live ids (``busy`` beyond it), a valid
Ed25519 signature for privileged commands, then the command's own argument
check. Every message gets an ack ``{id, status, reason}`` carrying the command's id whenever
it can be read; no exception escapes. ``ts`` and ``expires`` are Unix times in seconds (finite
int or float); numbers of more than 64 digits are refused before anything is computed with them.

Signatures: base64 Ed25519 over :func:`~edge_agent.remote.protocol.signing_bytes`
(canonical JSON of device id, name, id, ts, expires and args), with a key pinned on the device.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.control import AgentControl
from edge_agent.errors import ConfigError, EdgeError
from edge_agent.remote.builtin import builtin_commands
from edge_agent.remote.guards import (
    CLOCK_SKEW_S,
    MAX_COMMAND_BYTES,
    MAX_EXPIRY_HORIZON_S,
    MAX_LIVE_IDS,
    RejectError,
    ReplayCache,
    TokenBucket,
    parse_command,
    peek_id,
    safe_response_topic,
)
from edge_agent.remote.protocol import (
    NAME_RE,
    Ack,
    CommandContext,
    CommandError,
    CommandRegistry,
    Publish,
    Reply,
    Route,
    command_registry,
    signing_bytes,
)

if TYPE_CHECKING:  # cryptography costs ~6 MB RSS: loaded only when a command key is pinned or used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)


@dataclass
class CommandStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class CommandHandler:
    """Validates and runs commands; calls ``reply`` once or more for every message.

    Args:
        device_id: this device (part of the signed bytes).
        control: the running agent, or None.
        reply: sends an ack (the inbox puts it on ``…/ack`` and the response topic).
        publish: publishes a message kind/body (used by ``snapshot`` and ``set_config``).
        public_key: pinned key for privileged commands; without one they are refused.
        replay_path: file keeping seen command ids across restarts.
        registry: the allow-listed commands (default: the built-in ones,
            :func:`edge_agent.remote.builtin.builtin_commands`).
    """

    def __init__(
        self,
        device_id: str,
        *,
        control: AgentControl | None = None,
        reply: Reply,
        publish: Publish | None = None,
        public_key: Ed25519PublicKey | None = None,
        max_bytes: int = MAX_COMMAND_BYTES,
        rate: float = 5.0,
        burst: float = 20.0,
        max_horizon_s: float = MAX_EXPIRY_HORIZON_S,
        replay_path: Path | None = None,
        max_live_ids: int = MAX_LIVE_IDS,
        clock: Callable[[], float] = time.time,
        registry: CommandRegistry | None = None,
    ) -> None:
        self.device_id = device_id
        self.control = control
        self._reply = reply
        self._publish: Publish = publish or (lambda kind, body: None)
        self.public_key = public_key
        self.max_bytes = max_bytes
        self.max_horizon_s = max_horizon_s
        self.bucket = TokenBucket(rate, burst)
        self.replay = ReplayCache(replay_path, max_live_ids)
        self.clock = clock
        self.registry: CommandRegistry = registry if registry is not None else command_registry(builtin_commands())
        self.stats = CommandStats()
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {"received": s.received, "accepted": s.accepted, "rejected": s.rejected, "failed": s.failed,
                "rejected_reasons": dict(s.reasons)}

    def handle(
        self,
        name: str,
        payload: bytes,
        *,
        retained: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Process one command message; never raises."""
        route = Route(name=name[:64] if isinstance(name, str) else None,
                      response_topic=safe_response_topic(response_topic),
                      correlation_data=correlation_data[:256] if correlation_data else None)
        started: list[CommandContext] = []
        try:
            with self._lock:
                self.stats.received += 1
            ack = self._process(name, payload, retained, route, started)
        except RejectError as rej:
            ack = Ack(rej.cmd_id, "rejected", rej.reason)
        except Exception as exc:  # hostile input must never crash the agent
            log.exception("command %s crashed", name)
            # the id as parse_command read it, whether or not the command had started
            ack = Ack(peek_id(payload, self.max_bytes), "failed", f"internal_error: {type(exc).__name__}")
        self._count(ack)
        self._send(ack, route)
        for ctx in started:  # work that replies later starts only now: its acks come after this one
            ctx.run_after_ack()

    def record(self, ack: Ack) -> None:
        """Count an ack produced outside :meth:`handle` (e.g. ``busy`` when the queue is full)."""
        with self._lock:
            self.stats.received += 1
        self._count(ack)

    def _count(self, ack: Ack) -> None:
        with self._lock:
            if ack.status == "rejected":
                self.stats.rejected += 1
                key = ack.reason.split(":", 1)[0]
                self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
            elif ack.status == "failed":
                self.stats.failed += 1
            else:
                self.stats.accepted += 1

    def _send(self, ack: Ack, route: Route) -> None:
        try:
            self._reply(ack, route)
        except Exception:  # never raise into the MQTT thread
            log.exception("sending ack failed")

    def _process(self, name: str, payload: bytes, retained: bool, route: Route,
                 started: list[CommandContext]) -> Ack:
        if retained:
            raise RejectError("retained: commands must not be retained", peek_id(payload, self.max_bytes))
        if not self.bucket.take():
            raise RejectError("rate_limited")
        body = parse_command(payload, self.max_bytes)
        cmd_id = body.id
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name not in self.registry:
            raise RejectError("unknown_command", cmd_id)
        spec = self.registry[name]
        now = self.clock()
        if body.expires <= now:
            raise RejectError("expired", cmd_id)
        if body.expires > now + self.max_horizon_s:
            raise RejectError(f"expires_too_far: at most {self.max_horizon_s:.0f} s ahead", cmd_id)
        if body.ts is not None and body.ts > now + CLOCK_SKEW_S:
            raise RejectError("ts_in_future", cmd_id)
        with self._lock:
            self.replay.prune(now)
            if self.replay.seen(cmd_id):
                raise RejectError("duplicate_id", cmd_id)
            if self.replay.full():
                raise RejectError("busy: too many live command ids", cmd_id)
        if spec.privileged:
            self._verify(name, body.raw, body.sig, cmd_id)
        with self._lock:
            if self.replay.seen(cmd_id):
                raise RejectError("duplicate_id", cmd_id)
            self.replay.add(cmd_id, body.expires)
        ctx = CommandContext(self.device_id, name, cmd_id, body.args, self.control, self._publish, route,
                             self._reply)
        started.append(ctx)
        try:
            ack = spec.run(ctx)
        except (CommandError, ConfigError) as exc:
            return Ack(cmd_id, "rejected", f"invalid_args: {exc}")
        except EdgeError as exc:
            return Ack(cmd_id, "failed", str(exc))
        except Exception as exc:  # a bug or a library error the command did not convert: still this id's ack
            log.exception("command %s (%s) crashed", name, cmd_id)
            return Ack(cmd_id, "failed", f"internal_error: {type(exc).__name__}")
        if not isinstance(ack, Ack):
            return Ack(cmd_id, "failed", "internal_error: command returned no ack")
        return ack

    def _verify(self, name: str, body: dict[str, Any], sig: str | None, cmd_id: str) -> None:
        if self.public_key is None:
            raise RejectError("signature_required: no command key pinned on this device", cmd_id)
        if sig is None:
            raise RejectError("signature_required", cmd_id)
        from cryptography.exceptions import InvalidSignature  # loaded with the pinned key already

        try:
            raw = base64.b64decode(sig, validate=True)
            self.public_key.verify(raw, signing_bytes(self.device_id, name, body))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise RejectError("bad_signature", cmd_id) from exc
