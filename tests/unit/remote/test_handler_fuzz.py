"""Command payloads generated with hypothesis, each ack checked against an independent model.

:class:`CommandModel` is a second, separately written statement of the command rules in
``docs``/ARCHITECTURE ("Commands are hostile input") and the ``edge_agent.remote.handler``
docstring: size cap, UTF-8, JSON, a JSON object with bounded nesting, strict schema,
allow-listed names, expiry, replay protection with a bound on live ids, rate limit. It
shares no code with :class:`~edge_agent.remote.handler.CommandHandler` (own id/number/depth
checks, own replay set, own token count), so a handler that loses a rule disagrees with it.

Shared strategies and the model are reused by the broker-level fuzz test in
``tests/integration/test_mqtt_commands.py``.
"""

from __future__ import annotations

import json
import math
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.remote.builtin import builtin_commands
from edge_agent.remote.guards import MAX_COMMAND_BYTES
from edge_agent.remote.handler import CommandHandler
from edge_agent.remote.protocol import Ack, Route, command_registry

NOW = float(int(time.time()))


# ---- the model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str  # the reason's class: the text before the first ':'
    id: str | None = None  # checked when set: the ack must carry this id


Outcome = Callable[[dict[str, Any]], tuple[str, str]]


def ping_outcome(args: dict[str, Any]) -> tuple[str, str]:
    return ("rejected", "invalid_args") if args else ("succeeded", "pong")


def reload_without_agent(args: dict[str, Any]) -> tuple[str, str]:
    return ("rejected", "invalid_args") if args else ("failed", "no agent to reload")


class _BadJsonError(Exception):
    pass


class CommandModel:
    """What the device must answer to a command message, from the written rules.

    Rules in order (the first one broken names the reason): a retained message is refused;
    the rate limit (``burst`` tokens, none refilled here; ``None`` = unlimited); at most
    ``max_bytes`` bytes; UTF-8; JSON without NaN/Infinity or duplicate keys; a JSON object
    nested at most 8 deep; only the keys id, ts, expires, args, sig; id of 1-64 characters
    from ``[A-Za-z0-9._:-]``; expires (and ts when given) a finite number, not a boolean;
    args an object; sig a string; the name allow-listed; not expired (``expires <= now``),
    not more than ``horizon_s`` ahead, ts at most 300 s ahead; an id still live is a
    replay; at most ``max_live_ids`` live ids (``busy``); then the command's own answer.
    A command that passed the replay check is remembered until its expiry, whatever its
    own answer.
    """

    CLOCK_SKEW_S = 300.0
    DEPTH = 8
    ID_CHARS = frozenset(string.ascii_letters + string.digits + "._:-")
    KEYS = frozenset({"id", "ts", "expires", "args", "sig"})

    def __init__(self, commands: dict[str, Outcome], *, max_bytes: int = MAX_COMMAND_BYTES,
                 horizon_s: float = 3600.0, burst: int | None = None, max_live_ids: int = 20000) -> None:
        self.commands = commands
        self.max_bytes = max_bytes
        self.horizon_s = horizon_s
        self.tokens = burst
        self.max_live_ids = max_live_ids
        self.live: dict[str, float] = {}

    def verdict(self, name: str, payload: bytes, retained: bool, now: float) -> Verdict:
        if retained:
            return Verdict("rejected", "retained")
        if self.tokens is not None:
            if self.tokens < 1:
                return Verdict("rejected", "rate_limited")
            self.tokens -= 1
        if len(payload) > self.max_bytes:
            return Verdict("rejected", "too_large")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Verdict("rejected", "not_utf8")
        try:
            body = json.loads(text, object_pairs_hook=self._pairs, parse_constant=self._constant)
        except RecursionError:
            return Verdict("rejected", "too_deep")
        except (ValueError, _BadJsonError):
            return Verdict("rejected", "invalid_json")
        if not isinstance(body, dict):
            return Verdict("rejected", "bad_schema")
        if self._too_deep(body, 1):
            return Verdict("rejected", "too_deep")
        if not set(body) <= self.KEYS or not self._valid_id(body.get("id")):
            return Verdict("rejected", "bad_schema")
        if not self._finite_number(body.get("expires")) or ("ts" in body and not self._finite_number(body["ts"])):
            return Verdict("rejected", "bad_schema")
        if not isinstance(body.get("args", {}), dict) or ("sig" in body and not isinstance(body["sig"], str)):
            return Verdict("rejected", "bad_schema")
        cmd_id: str = body["id"]
        if name not in self.commands:
            return Verdict("rejected", "unknown_command", cmd_id)
        expires = float(body["expires"])
        if expires <= now:
            return Verdict("rejected", "expired", cmd_id)
        if expires > now + self.horizon_s:
            return Verdict("rejected", "expires_too_far", cmd_id)
        if "ts" in body and float(body["ts"]) > now + self.CLOCK_SKEW_S:
            return Verdict("rejected", "ts_in_future", cmd_id)
        self.live = {k: exp for k, exp in self.live.items() if exp > now}
        if cmd_id in self.live:
            return Verdict("rejected", "duplicate_id", cmd_id)
        if len(self.live) >= self.max_live_ids:
            return Verdict("rejected", "busy", cmd_id)
        self.live[cmd_id] = expires
        status, reason = self.commands[name](body.get("args", {}))
        return Verdict(status, reason, cmd_id)

    @staticmethod
    def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise _BadJsonError("duplicate key")
        return dict(pairs)

    @staticmethod
    def _constant(token: str) -> Any:
        raise _BadJsonError(token)

    def _too_deep(self, value: Any, level: int) -> bool:
        if not isinstance(value, dict | list):
            return False
        if level > self.DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        return any(self._too_deep(child, level + 1) for child in children)

    def _valid_id(self, value: Any) -> bool:
        return isinstance(value, str) and 1 <= len(value) <= 64 and set(value) <= self.ID_CHARS

    @staticmethod
    def _finite_number(value: Any) -> bool:
        if type(value) not in (int, float):  # bool is not a number here
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:
            return False


def assert_agrees(ack: Ack, expected: Verdict, case: Any) -> None:
    assert (ack.status, ack.reason.split(":", 1)[0]) == (expected.status, expected.reason), (case, ack, expected)
    if expected.id is not None:
        assert ack.id == expected.id, (case, ack, expected)


# ---- strategies ---------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
not_str = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_number = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=3))
not_object = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                       st.lists(st.integers(), max_size=3))
WRONG = {"id": not_str, "expires": not_number, "ts": not_number, "args": not_object, "sig": not_str}
# Every name any part of the agent may register (the broker test talks to the real agent).
KNOWN_NAMES = frozenset({"ping", "reload", "set_config", "snapshot", "update_model", "rollback"})


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()


def _fresh_id() -> str:
    return uuid.uuid4().hex


@st.composite
def hostile(draw: st.DrawFn, now: float | None = None) -> tuple[str, bytes, bool, str]:
    """(command name, payload, retained, expected reason prefix or '' when the kind does not fix it).

    ``now`` defaults to the import time (fixed times keep drawn data stable between hypothesis
    replays); the broker test passes the real time.
    """
    kind = draw(st.sampled_from([
        "bytes", "non_utf8", "oversize", "deep", "wrong_types", "unknown_name", "expired", "retained",
        "extra_keys", "not_object", "bad_id", "junk_json", "infinite_time",
    ]))
    now = NOW if now is None else now
    valid = {"id": _fresh_id(), "ts": now, "expires": now + 3000, "args": {}}
    if kind == "bytes":
        data = draw(st.binary(max_size=512))
        # Random bytes that happen to be a valid command are astronomically unlikely but possible.
        return "ping", data if data.strip() else b"\x00", False, ""
    if kind == "non_utf8":
        return "ping", b"\xff" + draw(st.binary(max_size=64)), False, "not_utf8"
    if kind == "oversize":
        size = draw(st.integers(MAX_COMMAND_BYTES + 1, MAX_COMMAND_BYTES * 4))
        return "ping", b'{"id":"' + b"a" * size + b'"}', False, "too_large"
    if kind == "deep":
        depth = draw(st.integers(10, 40) | st.integers(41, 4000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        payload = f'{{"id":"d","expires":{now + 60},"args":{{"x":{inner}}}}}'.encode()
        return "ping", payload, False, "too_large" if len(payload) > MAX_COMMAND_BYTES else "too_deep"
    if kind == "wrong_types":
        field = draw(st.sampled_from(["id", "expires", "ts", "args", "sig"]))
        body = dict(valid)
        body[field] = draw(WRONG[field])
        return "ping", _dump(body), False, "bad_schema"
    if kind == "unknown_name":
        name = draw(st.text(min_size=1, max_size=40).filter(lambda s: s not in KNOWN_NAMES))
        return name, _dump(valid), False, "unknown_command"
    if kind == "expired":
        valid["expires"] = now - draw(st.floats(0.001, 1e9))
        return "ping", _dump(valid), False, "expired"
    if kind == "retained":
        return "ping", _dump(valid), True, "retained"
    if kind == "extra_keys":
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in valid and k != "sig"))
        valid[key] = draw(json_values)
        return "ping", _dump(valid), False, "bad_schema"
    if kind == "not_object":
        return "ping", _dump(draw(st.one_of(json_scalars, st.lists(json_values, max_size=3)))), False, ""
    if kind == "bad_id":
        valid["id"] = draw(st.text(max_size=100).filter(lambda s: not (0 < len(s) <= 64 and s.isalnum())))
        return "ping", _dump(valid), False, ""
    if kind == "infinite_time":
        field = draw(st.sampled_from(["expires", "ts"]))
        token = draw(st.sampled_from(["1e999", "-1e999", "1" + "0" * draw(st.integers(309, 2000))]))
        text = _dump(valid).decode().replace(f'"{field}": {json.dumps(valid[field])}', f'"{field}": {token}', 1)
        return "ping", text.encode(), False, "bad_schema"
    # junk_json: a valid command with one byte broken
    raw = bytearray(_dump(valid))
    pos = draw(st.integers(0, len(raw) - 1))
    raw[pos] = draw(st.sampled_from(list(b"{}[]\",:\\")))
    return "ping", bytes(raw), False, ""


ID_POOL = ("a", "b", "c", "d", "e")
EDGE_IDS = ("a\n", "\na", "a b", "", "x" * 64, "x" * 65, "é", "a/b")
OFFSETS = (-3600.0, -0.001, 0.0, 0.001, 1.0, 59.0, 299.999, 300.0, 300.001, 3599.999, 3600.0, 3600.001)


def _sized(body: dict[str, Any], size: int) -> bytes:
    """``body`` padded through its (unchecked, for an unprivileged command) ``sig`` to ``size`` bytes."""
    body = {**body, "sig": ""}
    body["sig"] = "s" * (size - len(_dump(body)))
    payload = _dump(body)
    assert len(payload) == size
    return payload


def _nested(levels: int) -> Any:
    """``levels`` containers inside one another (the command object itself is the first level)."""
    value: Any = 1
    for n in range(levels - 2):
        value = [value] if n % 2 else {"k": value}
    return value


@st.composite
def boundary_payload(draw: st.DrawFn, now: float) -> bytes:
    """A ping right at (or one past) the size cap or the nesting bound."""
    body = {"id": draw(st.sampled_from(ID_POOL) | st.just(_fresh_id())), "expires": now + 60}
    if draw(st.booleans()):
        return _sized(body, MAX_COMMAND_BYTES + draw(st.sampled_from([-1, 0, 1])))
    return _dump({**body, "args": {"x": _nested(draw(st.sampled_from([7, 8, 9])))}})


@st.composite
def command_message(draw: st.DrawFn, now: float) -> tuple[str, bytes, bool]:
    """A message near the rules' edges: ids from a small pool (replays, busy), times just
    around each bound, sizes and nesting at the bounds, args for commands that take none,
    sometimes a stray key, a wrong type, a wrong name or the retained flag; now and then a
    hostile payload instead."""
    pick = draw(st.integers(0, 9))
    if pick <= 1:
        name, payload, retained, _ = draw(hostile(now))
        return name, payload, retained
    if pick == 2:
        return "ping", draw(boundary_payload(now)), False
    ids = st.sampled_from(ID_POOL) | st.text(string.ascii_letters + "._:-", min_size=1, max_size=8) \
        | st.sampled_from(EDGE_IDS)
    body: dict[str, Any] = {"id": draw(ids)}
    body["expires"] = now + draw(st.sampled_from(OFFSETS) | st.floats(-10, 5000))
    if draw(st.booleans()):
        body["ts"] = now + draw(st.sampled_from(OFFSETS) | st.floats(-10, 400))
    if draw(st.integers(0, 3)) == 0:
        body["args"] = draw(st.just({}) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    if draw(st.integers(0, 5)) == 0:
        body["sig"] = draw(st.text(max_size=8))
    if draw(st.integers(0, 7)) == 0:
        field = draw(st.sampled_from(["id", "expires", "ts", "args", "sig", "extra"]))
        body[field] = draw(json_values if field == "extra" else WRONG[field])
    name = draw(st.sampled_from(["ping", "ping", "ping", "reload", "shell", "PING", "ping\n"]))
    return name, _dump(body), draw(st.integers(0, 15)) == 0


class Recorder:
    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def __call__(self, ack: Ack, route: Route) -> None:
        self.acks.append(ack)


def _registry() -> dict[str, Any]:
    builtin = command_registry(builtin_commands())
    return {"ping": builtin["ping"], "reload": builtin["reload"]}


MODEL_COMMANDS: dict[str, Outcome] = {"ping": ping_outcome, "reload": reload_without_agent}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _send(handler: CommandHandler, recorder: Recorder, name: str, payload: bytes, retained: bool) -> Ack:
    before = len(recorder.acks)
    handler.handle(name, payload, retained=retained)
    assert len(recorder.acks) == before + 1, "exactly one ack per message"
    return recorder.acks[-1]


# ---- tests --------------------------------------------------------------------------------
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_hostile_payloads_match_the_model(case: tuple[str, bytes, bool, str]) -> None:
    name, payload, retained, reason = case
    recorder = Recorder()
    handler = CommandHandler("dev1", reply=recorder, rate=1e9, burst=1e9, clock=Clock(NOW), registry=_registry())
    expected = CommandModel(MODEL_COMMANDS).verdict(name, payload, retained, NOW)
    if reason:  # the kind fixes the reason: the model must say so too (a check of the model)
        assert expected.reason == reason, (case, expected)
    assert_agrees(_send(handler, recorder, name, payload, retained), expected, case)


SEQUENCE_EXAMPLES = 400
# Every class of answer the sequences must reach; a rule no example reaches is a rule not tested.
ALL_REASONS = {"retained", "rate_limited", "too_large", "not_utf8", "invalid_json", "too_deep", "bad_schema",
               "unknown_command", "expired", "expires_too_far", "ts_in_future", "duplicate_id", "busy",
               "invalid_args", "pong", "no agent to reload"}


def test_command_sequences_match_the_model() -> None:
    """Sequences with a moving clock, a small live-id bound and a small burst: replays, expiry,
    ``busy`` and the rate limit depend on what came before. Self-contained (its own handler
    per example and its own tally), so it does not depend on test order. Derandomized: the same
    examples every run, so whether every reason is reached does not depend on luck."""
    seen: Counter[str] = Counter()

    @settings(max_examples=SEQUENCE_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data(), st.sampled_from([None, None, 2, 8]), st.integers(1, 4))
    def check(data: st.DataObject, burst: int | None, max_live: int) -> None:
        clock = Clock(NOW)
        recorder = Recorder()
        # rate 0: the burst is all there is, so the model's token count is exact.
        handler = CommandHandler("dev1", reply=recorder, rate=0.0 if burst else 1e9, burst=burst or 1e9,
                                 clock=clock, max_live_ids=max_live, registry=_registry())
        model = CommandModel(MODEL_COMMANDS, burst=burst, max_live_ids=max_live)
        for _ in range(data.draw(st.integers(1, 20), label="steps")):
            if data.draw(st.integers(0, 5), label="advance?") == 0:
                clock.now += data.draw(st.sampled_from([0.001, 1.0, 30.0, 60.0, 3600.0]), label="advance")
                continue
            name, payload, retained = data.draw(command_message(clock.now), label="message")
            expected = model.verdict(name, payload, retained, clock.now)
            assert_agrees(_send(handler, recorder, name, payload, retained), expected, (name, payload, retained))
            seen[expected.reason] += 1

    check()
    missing = ALL_REASONS - set(seen)
    assert not missing, f"no example reached {sorted(missing)}; reached {dict(seen)}"


def test_model_is_not_vacuous() -> None:
    """The model itself, on hand-made cases (so a model that says 'rejected' to everything fails)."""
    model = CommandModel(MODEL_COMMANDS, burst=3, max_live_ids=2)
    ok = _dump({"id": "m1", "expires": NOW + 60})
    assert model.verdict("ping", ok, False, NOW) == Verdict("succeeded", "pong", "m1")
    assert model.verdict("ping", ok, False, NOW) == Verdict("rejected", "duplicate_id", "m1")
    assert model.verdict("ping", _dump({"id": "m2", "expires": NOW + 60}), False, NOW).status == "succeeded"
    assert model.verdict("ping", _dump({"id": "m3", "expires": NOW + 60}), True, NOW).reason == "retained"
    assert model.verdict("ping", _dump({"id": "m3", "expires": NOW + 60}), False, NOW).reason == "rate_limited"
    later = CommandModel(MODEL_COMMANDS, max_live_ids=1)
    assert later.verdict("ping", _dump({"id": "x", "expires": NOW + 1}), False, NOW).status == "succeeded"
    assert later.verdict("ping", _dump({"id": "y", "expires": NOW + 9}), False, NOW).reason == "busy"
    assert later.verdict("ping", _dump({"id": "y", "expires": NOW + 9}), False, NOW + 1).status == "succeeded"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["ping", "reload", "snapshot", "set_config"]))
def test_duplicate_ids_are_rejected(name: str) -> None:
    rec = Recorder()
    handler = CommandHandler("dev1", reply=rec, rate=1e9, burst=1e9)
    body = _dump({"id": _fresh_id(), "expires": time.time() + 60})
    handler.handle(name, body)
    handler.handle(name, body)
    assert len(rec.acks) == 2
    assert rec.acks[1].status == "rejected" and rec.acks[1].reason == "duplicate_id"
