"""Remote commands (``edge/v1/{device}/cmd/{name}``): hostile input, answered with an ack each.

Checks, in order, before anything runs: retained messages are refused, a rate
limit (token bucket), a size cap before parsing, UTF-8, JSON (no NaN, no
duplicate keys), a JSON object with bounded nesting, the strict schema ``{id,
ts?, expires, args?, sig?}`` (no other keys, right types), the allow-listed
name, expiry (not expired, not too far ahead, ``ts`` not in the future),
replayed ids, a bounded number of live ids (``busy`` beyond it), a valid
Ed25519 signature for privileged commands, then the command's own argument
check. Every message gets an ack ``{id, status, reason}``; no exception escapes.
``tests/unit/test_commands_fuzz.py`` holds an independent model of these rules.

``ts`` and ``expires`` are Unix times in seconds (finite int or float).

Commands live in a registry so other modules can add theirs::

    register_command("update_model", run_update, privileged=True)

A command function gets a :class:`CommandContext` and returns the final
:class:`Ack`, or returns an ``in_progress`` ack and later calls ``ctx.reply``
(from any thread) with ``succeeded``/``failed``.

Signatures: base64 Ed25519 over :func:`signing_bytes` (canonical JSON of device
id, name, id, ts, expires and args), with a key pinned on the device.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_agent.errors import ConfigError, EdgeError

if TYPE_CHECKING:  # cryptography costs ~6 MB RSS: loaded only when a command key is pinned or used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

AckStatus = Literal["accepted", "rejected", "in_progress", "succeeded", "failed"]

MAX_COMMAND_BYTES = 8 * 1024
MAX_DEPTH = 8
MAX_EXPIRY_HORIZON_S = 3600.0
CLOCK_SKEW_S = 300.0
# Used with fullmatch: with match, "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_LIVE_IDS = 20000
ALLOWED_KEYS = frozenset({"id", "ts", "expires", "args", "sig"})
SNAPSHOT_MAX_BYTES = 96 * 1024


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


@dataclass
class CommandContext:
    """What a command function can use."""

    device_id: str
    name: str
    id: str
    args: dict[str, Any]
    control: Any
    publish: Callable[[str, dict[str, Any]], None]
    route: Route
    _reply: Reply

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


COMMANDS: dict[str, CommandSpec] = {}


def register_command(name: str, run: CommandFn, *, privileged: bool = False, description: str = "") -> None:
    """Add (or replace) an allow-listed command. Privileged ones need a valid signature."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid command name {name!r}")
    COMMANDS[name] = CommandSpec(name, run, privileged, description)


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


# ---- parsing helpers --------------------------------------------------------------------
class _RejectError(Exception):
    def __init__(self, reason: str, cmd_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd_id = cmd_id


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RejectError(f"invalid_json: duplicate key {key[:32]!r}")
        out[key] = value
    return out


def _no_constants(value: str) -> Any:
    raise _RejectError(f"invalid_json: {value} is not allowed")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of containers, iteratively (never recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    """A finite number of seconds (``1e999`` parses as infinity, a 400-digit int overflows a float)."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class ReplayCache:
    """Ids seen until their expiry; optionally persisted (append-only file) across restarts.

    Bounded: :meth:`full` says when ``max_entries`` ids are live, and the handler then refuses
    new commands (``busy``) rather than forget an id that could still be replayed.
    :meth:`prune` forgets expired ids, oldest expiry first, in O(log n) each.
    """

    def __init__(self, path: Path | None = None, max_entries: int = MAX_LIVE_IDS) -> None:
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []  # heap of (expires, id), one per id in _seen
        self._path = path
        self.max_entries = max_entries
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        now = time.time()
        try:
            lines = path.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            cmd_id, _, exp = line.partition(" ")
            try:
                expires = float(exp)
            except ValueError:
                continue
            if expires > now:
                self._seen[cmd_id] = max(expires, self._seen.get(cmd_id, expires))
        self._expiries = [(exp, key) for key, exp in self._seen.items()]
        heapq.heapify(self._expiries)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{k} {v}\n" for k, v in self._seen.items()))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write replay cache %s: %s", path, exc)
            self._path = None

    def seen(self, cmd_id: str) -> bool:
        return cmd_id in self._seen

    def full(self) -> bool:
        return len(self._seen) >= self.max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, cmd_id: str, expires: float) -> None:
        expires = max(expires, self._seen.get(cmd_id, expires))
        self._seen[cmd_id] = expires
        heapq.heappush(self._expiries, (expires, cmd_id))
        if self._path is not None:
            try:
                with self._path.open("a") as handle:
                    handle.write(f"{cmd_id} {expires}\n")
            except OSError as exc:
                log.warning("cannot persist command id: %s", exc)

    def prune(self, now: float) -> None:
        """Forget the ids whose expiry is at or before ``now`` (a replay of them is refused as expired)."""
        while self._expiries and self._expiries[0][0] <= now:
            expires, key = heapq.heappop(self._expiries)
            if self._seen.get(key) == expires:  # not a stale entry of an id added again later
                del self._seen[key]


@dataclass
class CommandStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


# ---- the handler ------------------------------------------------------------------------
class CommandHandler:
    """Validates and runs commands; calls ``reply`` once or more for every message.

    Args:
        device_id: this device (part of the signed bytes).
        control: the running agent (:class:`edge_agent.messaging.publishers.AgentControl`) or None.
        reply: sends an ack (the publisher puts it on ``…/ack`` and the response topic).
        publish: publishes a message kind/body (used by ``snapshot``).
        public_key: pinned key for privileged commands; without one they are refused.
        replay_path: file keeping seen command ids across restarts.
    """

    def __init__(
        self,
        device_id: str,
        *,
        control: Any = None,
        reply: Reply,
        publish: Callable[[str, dict[str, Any]], None] | None = None,
        public_key: Ed25519PublicKey | None = None,
        max_bytes: int = MAX_COMMAND_BYTES,
        rate: float = 5.0,
        burst: float = 20.0,
        max_horizon_s: float = MAX_EXPIRY_HORIZON_S,
        replay_path: Path | None = None,
        max_live_ids: int = MAX_LIVE_IDS,
        clock: Callable[[], float] = time.time,
        registry: dict[str, CommandSpec] | None = None,
    ) -> None:
        self.device_id = device_id
        self.control = control
        self._reply = reply
        self._publish = publish or (lambda kind, body: None)
        self.public_key = public_key
        self.max_bytes = max_bytes
        self.max_horizon_s = max_horizon_s
        self.bucket = TokenBucket(rate, burst)
        self.replay = ReplayCache(replay_path, max_live_ids)
        self.clock = clock
        self.registry = registry if registry is not None else COMMANDS
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
                      response_topic=_safe_response_topic(response_topic),
                      correlation_data=correlation_data[:256] if correlation_data else None)
        try:
            with self._lock:
                self.stats.received += 1
            ack = self._process(name, payload, retained, route)
        except _RejectError as rej:
            ack = Ack(rej.cmd_id, "rejected", rej.reason)
        except Exception as exc:  # hostile input must never crash the agent
            log.exception("command %s crashed", name)
            ack = Ack(None, "failed", f"internal_error: {type(exc).__name__}")
        self._count(ack)
        self._send(ack, route)

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

    def _process(self, name: str, payload: bytes, retained: bool, route: Route) -> Ack:
        if retained:
            raise _RejectError("retained: commands must not be retained", self._peek_id(payload))
        if not self.bucket.take():
            raise _RejectError("rate_limited")
        if not isinstance(payload, bytes | bytearray) or len(payload) > self.max_bytes:
            raise _RejectError(f"too_large: over {self.max_bytes} bytes")
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _RejectError("not_utf8") from exc
        try:
            body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except RecursionError as exc:
            raise _RejectError("too_deep") from exc
        except ValueError as exc:
            raise _RejectError("invalid_json") from exc
        if not isinstance(body, dict):
            raise _RejectError("bad_schema: payload must be a JSON object")
        if _depth(body, MAX_DEPTH) > MAX_DEPTH:
            raise _RejectError("too_deep")
        raw_id = body.get("id")
        cmd_id = raw_id if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id) else None
        extra = set(body) - ALLOWED_KEYS
        if extra:
            raise _RejectError(f"bad_schema: unknown field(s) {sorted(extra)[:5]}", cmd_id)
        if cmd_id is None:
            raise _RejectError("bad_schema: id must be a string of 1-64 characters [A-Za-z0-9._:-]")
        if "expires" not in body or not _is_time(body["expires"]):
            raise _RejectError("bad_schema: expires (Unix seconds) is required", cmd_id)
        if "ts" in body and not _is_time(body["ts"]):
            raise _RejectError("bad_schema: ts must be a number (Unix seconds)", cmd_id)
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise _RejectError("bad_schema: args must be an object", cmd_id)
        sig = body.get("sig")
        if "sig" in body and not isinstance(sig, str):
            raise _RejectError("bad_schema: sig must be a base64 string", cmd_id)
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name not in self.registry:
            raise _RejectError("unknown_command", cmd_id)
        spec = self.registry[name]
        now = self.clock()
        expires = float(body["expires"])
        if expires <= now:
            raise _RejectError("expired", cmd_id)
        if expires > now + self.max_horizon_s:
            raise _RejectError(f"expires_too_far: at most {self.max_horizon_s:.0f} s ahead", cmd_id)
        if "ts" in body and float(body["ts"]) > now + CLOCK_SKEW_S:
            raise _RejectError("ts_in_future", cmd_id)
        with self._lock:
            self.replay.prune(now)
            if self.replay.seen(cmd_id):
                raise _RejectError("duplicate_id", cmd_id)
            if self.replay.full():
                raise _RejectError("busy: too many live command ids", cmd_id)
        if spec.privileged:
            self._verify(name, body, sig, cmd_id)
        with self._lock:
            if self.replay.seen(cmd_id):
                raise _RejectError("duplicate_id", cmd_id)
            self.replay.add(cmd_id, expires)
        ctx = CommandContext(self.device_id, name, cmd_id, args, self.control, self._publish, route, self._reply)
        try:
            ack = spec.run(ctx)
        except (CommandError, ConfigError) as exc:
            return Ack(cmd_id, "rejected", f"invalid_args: {exc}")
        except EdgeError as exc:
            return Ack(cmd_id, "failed", str(exc))
        if not isinstance(ack, Ack):
            return Ack(cmd_id, "failed", "internal_error: command returned no ack")
        return ack

    def _peek_id(self, payload: bytes) -> str | None:
        """The command id, if it can be read safely (only to label a rejection)."""
        if len(payload) > self.max_bytes:
            return None
        try:
            body = json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicates,
                              parse_constant=_no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError, _RejectError):
            return None
        raw = body.get("id") if isinstance(body, dict) else None
        return raw if isinstance(raw, str) and ID_RE.fullmatch(raw) else None

    def _verify(self, name: str, body: dict[str, Any], sig: str | None, cmd_id: str) -> None:
        if self.public_key is None:
            raise _RejectError("signature_required: no command key pinned on this device", cmd_id)
        if sig is None:
            raise _RejectError("signature_required", cmd_id)
        from cryptography.exceptions import InvalidSignature  # loaded with the pinned key already

        try:
            raw = base64.b64decode(sig, validate=True)
            self.public_key.verify(raw, signing_bytes(self.device_id, name, body))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise _RejectError("bad_signature", cmd_id) from exc


def _safe_response_topic(topic: str | None) -> str | None:
    if not topic or len(topic) > 256 or any(c in topic for c in "+#\x00"):
        return None
    return topic


# ---- built-in commands ------------------------------------------------------------------
def _no_args(ctx: CommandContext) -> None:
    if ctx.args:
        raise CommandError(f"{ctx.name} takes no arguments")


def _ping(ctx: CommandContext) -> Ack:
    _no_args(ctx)
    return Ack(ctx.id, "succeeded", "pong", {"ts": time.time()})


def _reload(ctx: CommandContext) -> Ack:
    _no_args(ctx)
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no agent to reload")
    try:
        ctx.control.reload()
    except ConfigError as exc:
        # The command was fine; the configuration file on the device is not.
        return Ack(ctx.id, "failed", f"reload_failed: {exc}")
    return Ack(ctx.id, "succeeded", "reloaded")


SET_CONFIG_MAX_KEYS = 32


def _set_config(ctx: CommandContext) -> Ack:
    if not ctx.args:
        raise CommandError("set_config needs at least one setting")
    if len(ctx.args) > SET_CONFIG_MAX_KEYS:
        raise CommandError(f"at most {SET_CONFIG_MAX_KEYS} settings at once")
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no agent to configure")
    reported = ctx.control.apply_config(dict(ctx.args))
    ctx.publish("config/reported", {"version": reported.get("version"), "status": "applied", "config": reported,
                                    "source": "cmd", "cmd_id": ctx.id})
    return Ack(ctx.id, "succeeded", "applied", {"config": reported})


def _snapshot(ctx: CommandContext) -> Ack:
    max_bytes = ctx.args.get("max_bytes", SNAPSHOT_MAX_BYTES)
    if set(ctx.args) - {"max_bytes"} or not isinstance(max_bytes, int) or isinstance(max_bytes, bool) \
            or not 1024 <= max_bytes <= SNAPSHOT_MAX_BYTES:
        raise CommandError(f"snapshot takes only max_bytes (1024..{SNAPSHOT_MAX_BYTES})")
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no frame available")
    jpeg = ctx.control.snapshot_jpeg(max_bytes)
    if not jpeg:
        return Ack(ctx.id, "failed", "no frame available")
    ctx.publish("evt/snapshot", {"cmd_id": ctx.id, "format": "jpeg", "bytes": len(jpeg),
                                 "data_b64": base64.b64encode(jpeg).decode()})
    return Ack(ctx.id, "succeeded", "published on evt/snapshot", {"bytes": len(jpeg)})


register_command("ping", _ping, description="answer with pong")
register_command("reload", _reload, description="re-read the configuration")
register_command("set_config", _set_config, description="change runtime settings (validated, persisted)")
register_command("snapshot", _snapshot, description="publish the latest frame as JPEG on evt/snapshot")


# ---- remote configuration (config/desired) ----------------------------------------------
def parse_desired(payload: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> tuple[int, dict[str, Any]]:
    """``{"version": int, "config": {...}}`` → (version, config); raises CommandError."""
    if len(payload) > max_bytes:
        raise CommandError(f"desired config over {max_bytes} bytes")
    try:
        body = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError, _RejectError) as exc:
        raise CommandError("desired config is not valid JSON") from exc
    if not isinstance(body, dict) or _depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise CommandError("desired config must be a JSON object")
    allowed = {"version", "config", "ts", "schema", "device_id", "boot_id", "session", "seq", "ts_ms",
               "replayed"}
    if set(body) - allowed:
        raise CommandError(f"unknown field(s) in desired config: {sorted(set(body) - allowed)[:5]}")
    version = body.get("version")
    config = body.get("config")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CommandError("desired config needs an integer version >= 0")
    if not isinstance(config, dict) or len(config) > SET_CONFIG_MAX_KEYS:
        raise CommandError("desired config needs a config object")
    return version, config
