"""Hostile command payloads generated with hypothesis: each one gets exactly one rejected ack.

Shared strategies are reused by the broker-level fuzz test in
``tests/integration/test_mqtt_commands.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.commands import MAX_COMMAND_BYTES, Ack, CommandHandler, Route

NOW = float(int(time.time()))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
not_str = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                  st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_number = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=3))
not_object = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                       st.lists(st.integers(), max_size=3))
WRONG = {"id": not_str, "expires": not_number, "ts": not_number, "args": not_object, "sig": not_str}


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()


def _fresh_id() -> str:
    return uuid.uuid4().hex


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes, bool, str]:
    """(command name, payload, retained, expected reason prefix or '' for any rejection)."""
    kind = draw(st.sampled_from([
        "bytes", "non_utf8", "oversize", "deep", "wrong_types", "unknown_name", "expired", "retained",
        "extra_keys", "not_object", "bad_id", "junk_json",
    ]))
    # Fixed times keep the drawn data shape stable between hypothesis replays.
    now = NOW
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
        depth = draw(st.integers(10, 4000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        return "ping", f'{{"id":"d","expires":{now + 60},"args":{{"x":{inner}}}}}'.encode(), False, ""
    if kind == "wrong_types":
        field = draw(st.sampled_from(["id", "expires", "ts", "args", "sig"]))
        body = dict(valid)
        body[field] = draw(WRONG[field])
        return "ping", _dump(body), False, "bad_schema"
    if kind == "unknown_name":
        name = draw(st.text(min_size=1, max_size=40).filter(lambda s: s not in ("ping", "reload", "set_config",
                                                                               "snapshot")))
        return name, _dump(valid), False, "unknown_command"
    if kind == "expired":
        valid["expires"] = now - draw(st.floats(0.001, 1e9))
        return "ping", _dump(valid), False, "expired"
    if kind == "retained":
        return "ping", _dump(valid), True, "retained"
    if kind == "extra_keys":
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in valid))
        valid[key] = draw(json_values)
        return "ping", _dump(valid), False, "bad_schema"
    if kind == "not_object":
        return "ping", _dump(draw(st.one_of(json_scalars, st.lists(json_values, max_size=3)))), False, ""
    if kind == "bad_id":
        valid["id"] = draw(st.text(max_size=100).filter(lambda s: not (0 < len(s) <= 64 and s.isalnum())))
        return "ping", _dump(valid), False, ""
    # junk_json: a valid command with one byte broken
    raw = bytearray(_dump(valid))
    pos = draw(st.integers(0, len(raw) - 1))
    raw[pos] = draw(st.sampled_from(list(b"{}[]\",:\\")))
    return "ping", bytes(raw), False, ""


class Recorder:
    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def __call__(self, ack: Ack, route: Route) -> None:
        self.acks.append(ack)


RECORDER = Recorder()
HANDLER = CommandHandler("dev1", reply=RECORDER, rate=1e9, burst=1e9)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_hostile_payloads_get_one_rejected_ack_each(case: tuple[str, bytes, bool, str]) -> None:
    name, payload, retained, reason = case
    before = len(RECORDER.acks)
    HANDLER.handle(name, payload, retained=retained)
    assert len(RECORDER.acks) == before + 1
    ack = RECORDER.acks[-1]
    if ack.status != "rejected":
        # Only a mutation that leaves a valid ping may pass (e.g. junk_json hitting a string).
        assert ack.status == "succeeded" and reason == "" and name == "ping", (case, ack)
    else:
        assert ack.reason.startswith(reason), (case, ack)


def test_fuzz_ran_enough_and_handler_still_works() -> None:
    """Self-contained: runs the property itself (no reliance on test order or globals)."""
    recorder = Recorder()
    handler = CommandHandler("dev1", reply=recorder, rate=1e9, burst=1e9)
    runs = {"n": 0}

    @settings(max_examples=1200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(hostile())
    def check(case: tuple[str, bytes, bool, str]) -> None:
        name, payload, retained, _reason = case
        before = len(recorder.acks)
        handler.handle(name, payload, retained=retained)
        assert len(recorder.acks) == before + 1
        runs["n"] += 1

    check()
    assert runs["n"] >= 1000
    before = len(recorder.acks)
    now = time.time()
    handler.handle("ping", _dump({"id": "after-fuzz", "expires": now + 30}))
    assert recorder.acks[before].status == "succeeded"


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
