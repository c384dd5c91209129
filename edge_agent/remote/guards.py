"""The defences in front of every command: strict parsing, the rate limit and the replay cache.

Commands are hostile input. Nothing here runs a command; it decides whether one
may run and, if not, the reason that goes into the rejected ack.
``tests/unit/remote/test_handler_fuzz.py`` holds an independent model of these rules.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.util.fs import atomic_write
from edge_agent.util.statefiles import set_aside
from edge_agent.util.strict_json import depth

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 8 * 1024
MAX_DEPTH = 8
MAX_NUMBER_DIGITS = 64  # a Unix time, a size or a version needs far fewer; 400 digits overflow a float
MAX_EXPIRY_HORIZON_S = 3600.0
CLOCK_SKEW_S = 300.0
# Used with fullmatch: with match, "$" would also accept a trailing newline.
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_LIVE_IDS = 20000
ALLOWED_KEYS = frozenset({"id", "ts", "expires", "args", "sig"})
SET_CONFIG_MAX_KEYS = 32  # settings changed at once by set_config or one desired config


class RejectError(Exception):
    """A command is refused; ``reason`` goes into the ack (its prefix up to ``:`` is counted)."""

    def __init__(self, reason: str, cmd_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd_id = cmd_id


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RejectError(f"invalid_json: duplicate key {key[:32]!r}")
        out[key] = value
    return out


def _no_constants(value: str) -> Any:
    raise RejectError(f"invalid_json: {value} is not allowed")


class NumberTooLongError(RejectError):
    """A JSON number with more digits than any field of the protocol needs."""


def _bounded_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_NUMBER_DIGITS:
        raise NumberTooLongError(f"bad_schema: a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS * 2:  # digits, point, exponent
        raise NumberTooLongError(f"bad_schema: a number has more than {MAX_NUMBER_DIGITS * 2} characters")
    return float(text)


def loads_strict(text: str) -> Any:
    """``json.loads`` refusing duplicate keys, NaN/Infinity and overlong numbers (raises RejectError,
    ValueError, RecursionError)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                      parse_int=_bounded_int, parse_float=_bounded_float)


def _id_of(text: str) -> str | None:
    """The id of a command, if well formed, whatever its numbers: integers stay text here (``int()``
    refuses over 4300 digits and is slow long before); a float of any length converts fast."""
    try:
        body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_int=str)
    except (ValueError, RecursionError, RejectError):
        return None
    raw = body.get("id") if isinstance(body, dict) else None
    return raw if isinstance(raw, str) and ID_RE.fullmatch(raw) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    """A finite number of seconds (``1e999`` parses as infinity; an int has at most
    MAX_NUMBER_DIGITS digits, so it never overflows a float)."""
    return _is_number(value) and math.isfinite(value)


@dataclass(frozen=True)
class CommandBody:
    """A command message that passed the schema checks: ``{id, ts?, expires, args?, sig?}``."""

    raw: dict[str, Any]
    id: str
    expires: float
    ts: float | None
    args: dict[str, Any]
    sig: str | None


def parse_command(payload: bytes, max_bytes: int) -> CommandBody:
    """Size cap, UTF-8, strict JSON, an object of bounded depth, then the strict schema.

    Raises:
        RejectError: with the reason (and the id once it is known to be well formed).
    """
    if not isinstance(payload, bytes | bytearray) or len(payload) > max_bytes:
        raise RejectError(f"too_large: over {max_bytes} bytes")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectError("not_utf8") from exc
    try:
        body = loads_strict(text)
    except NumberTooLongError as exc:
        raise RejectError(exc.reason, _id_of(text)) from exc
    except RecursionError as exc:
        raise RejectError("too_deep") from exc
    except ValueError as exc:
        raise RejectError("invalid_json") from exc
    if not isinstance(body, dict):
        raise RejectError("bad_schema: payload must be a JSON object")
    if depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise RejectError("too_deep")
    raw_id = body.get("id")
    cmd_id = raw_id if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id) else None
    extra = set(body) - ALLOWED_KEYS
    if extra:
        raise RejectError(f"bad_schema: unknown field(s) {sorted(extra)[:5]}", cmd_id)
    if cmd_id is None:
        raise RejectError("bad_schema: id must be a string of 1-64 characters [A-Za-z0-9._:-]")
    if "expires" not in body or not _is_time(body["expires"]):
        raise RejectError("bad_schema: expires (Unix seconds) is required", cmd_id)
    if "ts" in body and not _is_time(body["ts"]):
        raise RejectError("bad_schema: ts must be a number (Unix seconds)", cmd_id)
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise RejectError("bad_schema: args must be an object", cmd_id)
    sig = body.get("sig")
    if "sig" in body and not isinstance(sig, str):
        raise RejectError("bad_schema: sig must be a base64 string", cmd_id)
    return CommandBody(body, cmd_id, float(body["expires"]), float(body["ts"]) if "ts" in body else None,
                       args, sig)


def peek_id(payload: bytes, max_bytes: int) -> str | None:
    """The command id, if it can be read safely (only to label a rejection)."""
    if len(payload) > max_bytes:
        return None
    try:
        return _id_of(bytes(payload).decode("utf-8"))
    except UnicodeDecodeError:
        return None


def safe_response_topic(topic: str | None) -> str | None:
    """An MQTT 5 response topic that is safe to publish to, or None."""
    if not topic or len(topic) > 256 or any(c in topic for c in "+#\x00"):
        return None
    return topic


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
        """Read the ids still live and rewrite the file with just those. A file with a line that
        is not ``<id> <expiry>`` in UTF-8 is set aside; the lines that are stay in force."""
        now = time.time()
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError:
            lines = []
        damaged = 0
        for raw in lines:
            entry = _parse_entry(raw)
            if entry is None:
                damaged += bool(raw.strip())
                continue
            cmd_id, expires = entry
            if expires > now:
                self._seen[cmd_id] = max(expires, self._seen.get(cmd_id, expires))
        if damaged:
            set_aside(path, f"{damaged} damaged line(s)")
        self._expiries = [(exp, key) for key, exp in self._seen.items()]
        heapq.heapify(self._expiries)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, "".join(f"{k} {v}\n" for k, v in self._seen.items()).encode())
        except OSError as exc:  # a full disk: appends are tried at every command
            log.warning("cannot write replay cache %s: %s", path, exc.strerror or exc)

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


def _parse_entry(raw: bytes) -> tuple[str, float] | None:
    """``<id> <expiry>`` of one replay-cache line, or None when it is not one."""
    try:
        cmd_id, _, exp = raw.decode("utf-8").strip().partition(" ")
        expires = float(exp)
    except ValueError:
        return None
    # No separator leaves exp empty and float("") raises; the line is stripped, so an id before
    # the first space is never empty: only the expiry is left to check.
    return (cmd_id, expires) if math.isfinite(expires) else None
