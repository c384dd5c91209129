"""Command rules the mutation run (``make mutate``) found untested: the exact acks of the built-in
commands, the signed bytes, key formats, reading the id of a refused message, desired config."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import ConfigError, EdgeError
from edge_agent.model.keys import load_command_public_key as load_public_key
from edge_agent.remote.builtin import SNAPSHOT_MAX_BYTES, builtin_commands
from edge_agent.remote.desired import parse_desired
from edge_agent.remote.guards import SET_CONFIG_MAX_KEYS, ReplayCache
from edge_agent.remote.handler import CommandHandler
from edge_agent.remote.protocol import (
    Ack,
    CommandContext,
    CommandError,
    CommandSpec,
    Route,
    command,
    command_registry,
    signing_bytes,
)

JPEG = b"\xff\xd8jpeg\xff\xd9"


class Control:
    """The running agent as the built-in commands see it (records what they asked for)."""

    def __init__(self, jpeg: bytes | None = JPEG) -> None:
        self.jpeg = jpeg
        self.snapshot_sizes: list[int] = []
        self.snapshot_annotated: list[bool] = []
        self.applied: list[dict[str, Any]] = []
        self.reloads = 0

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(changes)
        return {"version": 7, **changes}

    def reload(self) -> None:
        self.reloads += 1

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> bytes | None:
        self.snapshot_sizes.append(max_bytes)
        self.snapshot_annotated.append(annotated)
        return self.jpeg


class Harness:
    def __init__(self, control: Any = None, **kw: Any) -> None:
        self.acks: list[tuple[Ack, Route]] = []
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.control = control
        self.handler = CommandHandler("dev1", control=control, reply=lambda a, r: self.acks.append((a, r)),
                                      publish=lambda k, b: self.published.append((k, b)), **kw)

    def send(self, name: str, body: Any, **kw: Any) -> Ack:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.handler.handle(name, payload, **kw)
        return self.acks[-1][0]


def cmd(cmd_id: str = "c1", **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"id": cmd_id, "ts": now, "expires": now + 60, **extra}


# --------------------------------------------------------------------------- the ack and the registry


def test_ack_body_is_the_protocol_message() -> None:
    assert Ack("c1", "succeeded", "pong").body("ping") == {
        "id": "c1", "status": "succeeded", "reason": "pong", "command": "ping"}
    assert Ack(None, "failed", "x", {"n": 1}).body(None) == {
        "id": None, "status": "failed", "reason": "x", "command": None, "result": {"n": 1}}
    assert "result" not in Ack("c1", "accepted").body("ping")


def test_command_defaults_and_name_check() -> None:
    def run(ctx: CommandContext) -> Ack:
        return Ack(ctx.id, "succeeded", "ran")

    plain = command("mut_plain", run)
    assert plain == CommandSpec("mut_plain", run, False, "")
    desc = command("mut_desc", run, description="what it does")
    assert desc.description == "what it does"
    registry = command_registry(builtin_commands(), [plain, desc])
    assert registry["mut_plain"] is plain and registry["mut_desc"] is desc and "ping" in registry
    # not privileged by default: runs without a signature even with a key pinned
    h = Harness(public_key=Ed25519PrivateKey.generate().public_key(), registry=registry)
    assert h.send("mut_plain", cmd()) == Ack("c1", "succeeded", "ran")
    with pytest.raises(ValueError, match=r"^invalid command name 'Bad'$"):
        command("Bad", run)


def test_further_acks_keep_the_route_of_the_message() -> None:
    def run(ctx: CommandContext) -> Ack:
        ctx.reply(Ack(ctx.id, "in_progress", "working"))
        return Ack(ctx.id, "succeeded", "done")

    h = Harness(registry={"work": CommandSpec("work", run)})
    h.handler.handle("work", json.dumps(cmd()).encode(), response_topic="r/t", correlation_data=b"\x07")
    assert [(a.status, r) for a, r in h.acks] == [("in_progress", Route("work", "r/t", b"\x07")),
                                                    ("succeeded", Route("work", "r/t", b"\x07"))]


def test_snapshot_and_record_count_everything() -> None:
    h = Harness()
    h.send("ping", cmd("a"))
    h.send("nope", cmd("b"))
    h.send("reload", cmd("c"))  # no agent: failed
    h.handler.record(Ack(None, "rejected", "busy: queue full"))
    h.handler.record(Ack(None, "rejected", "busy: queue full"))
    assert h.handler.snapshot() == {"received": 5, "accepted": 1, "rejected": 3, "failed": 1,
                                    "rejected_reasons": {"unknown_command": 1, "busy": 2}}


def test_default_rate_limit_and_live_id_bound() -> None:
    handler = CommandHandler("dev1", reply=lambda a, r: None)
    assert (handler.bucket.rate, handler.bucket.burst) == (5.0, 20.0)
    assert handler.replay.max_entries == ReplayCache().max_entries == 20000


# --------------------------------------------------------------------------- signatures and keys


def test_signed_bytes_are_canonical_json_of_the_six_fields() -> None:
    body = {"id": "c1", "ts": 10, "expires": 20.5, "args": {"b": "é", "a": [1, 2]}, "sig": "x"}
    assert signing_bytes("dev", "ping", body) == (
        '{"args":{"a":[1,2],"b":"é"},"device_id":"dev","expires":20.5,"id":"c1","name":"ping","ts":10}'
    ).encode()
    assert signing_bytes("dev", "ping", {"id": "c1", "expires": 1}) == (
        b'{"args":{},"device_id":"dev","expires":1,"id":"c1","name":"ping","ts":null}')


def _signed(key: Ed25519PrivateKey, body: dict[str, Any], name: str = "mut_priv") -> dict[str, Any]:
    """Signs the canonical form built here, independently of the code under test."""
    canonical = json.dumps({"device_id": "dev1", "name": name, "id": body["id"], "ts": body.get("ts"),
                            "expires": body["expires"], "args": body.get("args", {})},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {**body, "sig": base64.b64encode(key.sign(canonical)).decode()}


def test_privileged_command_rejections_carry_the_id() -> None:
    registry = command_registry([command("mut_priv", lambda ctx: Ack(ctx.id, "succeeded", "ok"), privileged=True)])
    key = Ed25519PrivateKey.generate()
    assert Harness(registry=registry).send("mut_priv", cmd("p0")) == Ack(
        "p0", "rejected", "signature_required: no command key pinned on this device")
    h = Harness(public_key=key.public_key(), registry=registry)
    assert h.send("mut_priv", cmd("p1")) == Ack("p1", "rejected", "signature_required")
    wrong = _signed(Ed25519PrivateKey.generate(), cmd("p2"))
    assert h.send("mut_priv", wrong) == Ack("p2", "rejected", "bad_signature")
    good = _signed(key, cmd("p3", args={"v": "é"}))
    sig = good["sig"]
    junk = {**good, "sig": sig[:10] + "!" + sig[10:]}  # not strict base64: refused, not cleaned up
    assert h.send("mut_priv", junk) == Ack("p3", "rejected", "bad_signature")
    assert h.send("mut_priv", good) == Ack("p3", "succeeded", "ok")


def _ed25519_files(tmp_path: Path) -> tuple[Ed25519PrivateKey, dict[str, Path]]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    files = {
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "raw": raw,
        "base64": base64.b64encode(raw) + b"\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"cmd-{name}.pub"
        paths[name].write_bytes(data)
    return key, paths


def test_command_key_formats(tmp_path: Path) -> None:
    key, paths = _ed25519_files(tmp_path)
    message = b"signed by the operator"
    signature = key.sign(message)
    for path in paths.values():
        load_public_key(path).verify(signature, message)  # raises if it is another key


def test_command_key_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.pub"
    with pytest.raises(ConfigError) as info:
        load_public_key(missing)
    assert str(info.value) == f"command public key {missing} not found"
    _, paths = _ed25519_files(tmp_path)
    sloppy = tmp_path / "sloppy.pub"
    text = paths["base64"].read_bytes().strip()
    sloppy.write_bytes(text[:8] + b"!" + text[8:])  # strict base64 only
    wrong_length = tmp_path / "short.pub"
    wrong_length.write_bytes(b"\x01" * 33)
    for bad in (sloppy, wrong_length):
        with pytest.raises(ConfigError) as info:
            load_public_key(bad)
        assert str(info.value).startswith(f"{bad} is not an Ed25519 public key: ")
    ec_path = tmp_path / "ec.pub"
    ec_path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError) as info:
        load_public_key(ec_path)
    assert str(info.value) == f"{ec_path} is not an Ed25519 public key"


# --------------------------------------------------------------------------- refused messages and replays


@pytest.mark.parametrize(
    ("payload", "cmd_id"),
    [
        (b'{"id": "r1", "expires": 1}', "r1"),
        (b'{"id": "r1", "id": "r1", "expires": 1}', None),  # duplicate keys: not read
        (b'{"id": "r1", "expires": NaN}', None),  # NaN: not read
        (b'["r1"]', None),
        (b'{"id": "a b"}', None),
        (b'{"ID": "r1"}', None),
        (b"\xff", None),
    ],
)
def test_retained_rejection_carries_the_id_only_when_it_is_safe_to_read(payload: bytes, cmd_id: str | None) -> None:
    h = Harness()
    assert h.send("ping", payload, retained=True) == Ack(cmd_id, "rejected", "retained: commands must not be retained")


def test_id_of_a_retained_message_at_the_size_cap_is_read() -> None:
    body = b'{"id": "r1", "expires": 1}'
    at_cap = Harness(max_bytes=len(body))
    assert at_cap.send("ping", body, retained=True).id == "r1"
    over_cap = Harness(max_bytes=len(body) - 1)
    assert over_cap.send("ping", body, retained=True).id is None


def test_replay_file_survives_restarts_and_skips_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "ids"  # parents are created
    assert Harness(replay_path=path).send("ping", cmd("first")).status == "succeeded"
    later = time.time() + 600
    with path.open("a") as handle:
        handle.write("garbled-line-without-expiry\n")
        handle.write(f"second {later}\n")
    assert Harness(replay_path=path).send("ping", cmd("second")).reason == "duplicate_id"
    third = Harness(replay_path=path)  # a second restart reads what the first one rewrote
    assert third.send("ping", cmd("first")).reason == "duplicate_id"
    assert third.send("ping", cmd("second")).reason == "duplicate_id"
    assert third.send("ping", cmd("fresh")).status == "succeeded"


def test_unwritable_replay_file_keeps_commands_working(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    h = Harness(replay_path=blocker / "ids")
    assert h.send("ping", cmd("a")).status == "succeeded"
    assert h.send("ping", cmd("a")).reason == "duplicate_id"  # still refused, from memory


# --------------------------------------------------------------------------- built-in commands


def test_ping_answers_pong_with_the_time() -> None:
    h = Harness()
    before = time.time()
    ack = h.send("ping", cmd())
    assert (ack.id, ack.status, ack.reason) == ("c1", "succeeded", "pong")
    assert ack.result is not None and before <= ack.result["ts"] <= time.time()
    assert h.send("ping", cmd("c2", args={"x": 1})) == Ack("c2", "rejected", "invalid_args: ping takes no arguments")


def test_reload_acks() -> None:
    assert Harness().send("reload", cmd()) == Ack("c1", "failed", "no agent to reload")
    control = Control()
    assert Harness(control).send("reload", cmd()) == Ack("c1", "succeeded", "reloaded")
    assert control.reloads == 1

    def broken() -> None:
        raise ConfigError("agent.toml: bad")

    control.reload = broken  # type: ignore[method-assign]
    assert Harness(control).send("reload", cmd()) == Ack("c1", "failed", "reload_failed: agent.toml: bad")


def test_set_config_acks_and_report() -> None:
    assert Harness(Control()).send("set_config", cmd()) == Ack(
        "c1", "rejected", "invalid_args: set_config needs at least one setting")
    too_many = {f"k{i}": i for i in range(SET_CONFIG_MAX_KEYS + 1)}
    assert Harness(Control()).send("set_config", cmd(args=too_many)) == Ack(
        "c1", "rejected", f"invalid_args: at most {SET_CONFIG_MAX_KEYS} settings at once")
    assert Harness().send("set_config", cmd(args={"a": 1})) == Ack("c1", "failed", "no agent to configure")
    control = Control()
    h = Harness(control)
    most = {f"k{i}": i for i in range(SET_CONFIG_MAX_KEYS)}
    ack = h.send("set_config", cmd("s1", args=most))
    assert ack == Ack("s1", "succeeded", "applied", {"config": {"version": 7, **most}})
    assert control.applied == [most]
    assert h.published == [("config/reported", {"version": 7, "status": "applied",
                                                 "config": {"version": 7, **most}, "source": "cmd",
                                                 "cmd_id": "s1"})]


@pytest.mark.parametrize("args", [{"max_bytes": 1023}, {"max_bytes": SNAPSHOT_MAX_BYTES + 1}, {"max_bytes": True},
                                  {"max_bytes": 2048.0}, {"quality": 5}, {"max_bytes": 2048, "quality": 5},
                                  {"annotated": 1}, {"annotated": "yes"}, {"annotated": None}])
def test_snapshot_argument_check(args: dict[str, Any]) -> None:
    control = Control()
    assert Harness(control).send("snapshot", cmd(args=args)) == Ack(
        "c1", "rejected",
        f"invalid_args: snapshot takes only max_bytes (1024..{SNAPSHOT_MAX_BYTES}) and annotated (true/false)")
    assert control.snapshot_sizes == []


@pytest.mark.parametrize("max_bytes", [1024, SNAPSHOT_MAX_BYTES, None])
def test_snapshot_publishes_the_frame(max_bytes: int | None) -> None:
    control = Control()
    h = Harness(control)
    args = {} if max_bytes is None else {"max_bytes": max_bytes}
    ack = h.send("snapshot", cmd("s1", args=args))
    assert ack == Ack("s1", "succeeded", "published on evt/snapshot", {"bytes": len(JPEG)})
    assert control.snapshot_sizes == [max_bytes or SNAPSHOT_MAX_BYTES]
    assert control.snapshot_annotated == [False]
    assert h.published == [("evt/snapshot", {"cmd_id": "s1", "format": "jpeg", "bytes": len(JPEG),
                                             "annotated": False, "data_b64": base64.b64encode(JPEG).decode()})]


@pytest.mark.parametrize("annotated", [True, False])
def test_snapshot_passes_annotated_on(annotated: bool) -> None:
    control = Control()
    h = Harness(control)
    assert h.send("snapshot", cmd("s1", args={"annotated": annotated})).status == "succeeded"
    assert control.snapshot_annotated == [annotated]
    assert h.published[0][1]["annotated"] is annotated


@pytest.mark.parametrize("control", [None, Control(jpeg=None), Control(jpeg=b"")])
def test_snapshot_without_a_frame_fails(control: Any) -> None:
    h = Harness(control)
    assert h.send("snapshot", cmd()) == Ack("c1", "failed", "no frame available")
    assert h.published == []


# --------------------------------------------------------------------------- desired config


def _desired(**body: Any) -> bytes:
    return json.dumps(body).encode()


def test_desired_config_accepts_the_envelope_fields_and_bounds() -> None:
    envelope = {"ts": 1, "schema": "edge/v1", "device_id": "d", "boot_id": "b", "session": "s", "seq": 3,
                "ts_ms": 5, "replayed": False}
    assert parse_desired(_desired(version=0, config={"a": 1}, **envelope)) == (0, {"a": 1})
    most = {f"k{i}": i for i in range(SET_CONFIG_MAX_KEYS)}
    assert parse_desired(_desired(version=2, config=most)) == (2, most)
    payload = _desired(version=1, config={"a": 1})
    assert parse_desired(payload, max_bytes=len(payload)) == (1, {"a": 1})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff", "desired config is not valid JSON"),
        (b'{"version": 1, "version": 2, "config": {}}', "desired config is not valid JSON"),
        (b'{"version": 1, "config": {"a": NaN}}', "desired config is not valid JSON"),
        (b"[1]", "desired config must be a JSON object"),
        (_desired(version=1, config={"a": [[[[[[[[[1]]]]]]]]]}), "desired config must be a JSON object"),
        (_desired(version=1, config={}, zzz=1, aaa=2), "unknown field(s) in desired config: ['aaa', 'zzz']"),
        (_desired(version=-1, config={}), "desired config needs an integer version >= 0"),
        (_desired(version=True, config={}), "desired config needs an integer version >= 0"),
        (_desired(version=1, config=[]), "desired config needs a config object"),
        (_desired(version=1, config={f"k{i}": i for i in range(SET_CONFIG_MAX_KEYS + 1)}),
         "desired config needs a config object"),
    ],
)
def test_desired_config_refusals(payload: bytes, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_desired(payload)
    assert str(info.value) == message


def test_desired_config_size_cap() -> None:
    payload = _desired(version=1, config={"a": 1})
    with pytest.raises(CommandError) as info:
        parse_desired(payload, max_bytes=len(payload) - 1)
    assert str(info.value) == f"desired config over {len(payload) - 1} bytes"


# --------------------------------------------------------------------------- every rejection, exactly

NOW = 1_000_000.0


def _at_now(**kw: Any) -> Harness:
    return Harness(Control(), clock=lambda: NOW, **kw)


def _body(cmd_id: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"id": cmd_id, "ts": NOW, "expires": NOW + 60, **extra}


@pytest.mark.parametrize(
    ("name", "body", "ack"),
    [
        ("ping", [1], Ack(None, "rejected", "bad_schema: payload must be a JSON object")),
        ("ping", {"expires": NOW + 60},
         Ack(None, "rejected", "bad_schema: id must be a string of 1-64 characters [A-Za-z0-9._:-]")),
        ("ping", _body(a=1, b=2, c=3, d=4, e=5, f=6, g=7),
         Ack("c1", "rejected", "bad_schema: unknown field(s) ['a', 'b', 'c', 'd', 'e']")),
        ("ping", {"id": "c1"}, Ack("c1", "rejected", "bad_schema: expires (Unix seconds) is required")),
        ("ping", _body(ts="now"), Ack("c1", "rejected", "bad_schema: ts must be a number (Unix seconds)")),
        ("ping", _body(args=[1]), Ack("c1", "rejected", "bad_schema: args must be an object")),
        ("ping", _body(sig=5), Ack("c1", "rejected", "bad_schema: sig must be a base64 string")),
        ("nope", _body(), Ack("c1", "rejected", "unknown_command")),
        ("ping", _body(expires=NOW), Ack("c1", "rejected", "expired")),
        ("ping", _body(expires=NOW + 3600.5), Ack("c1", "rejected", "expires_too_far: at most 3600 s ahead")),
        ("ping", _body(ts=NOW + 300.5), Ack("c1", "rejected", "ts_in_future")),
    ],
)
def test_each_rejection_names_the_id_once_it_is_known(name: str, body: Any, ack: Ack) -> None:
    assert _at_now().send(name, body) == ack


def test_time_bounds_are_inclusive() -> None:
    h = _at_now()
    assert h.send("ping", _body("a", expires=NOW + 0.001)).status == "succeeded"
    assert h.send("ping", _body("b", expires=NOW + 3600)).status == "succeeded"
    assert h.send("ping", _body("c", ts=NOW + 300)).status == "succeeded"


def test_a_name_that_is_not_a_string_is_an_unknown_command() -> None:
    h = _at_now()
    h.handler.handle(123, json.dumps(_body()).encode())  # type: ignore[arg-type]
    ack, route = h.acks[-1]
    assert ack == Ack("c1", "rejected", "unknown_command") and route.name is None


def test_route_is_bounded() -> None:
    h = _at_now()
    long_name = "p" * 70
    h.handler.handle(long_name, json.dumps(_body()).encode(), response_topic="r/" + "t" * 254,
                     correlation_data=b"\x01" * 300)
    _, route = h.acks[-1]
    assert route.name == "p" * 64 and route.response_topic == "r/" + "t" * 254
    assert route.correlation_data == b"\x01" * 256
    for topic in ("r/" + "t" * 255, "a/+/b", "a/#", "a\x00b", ""):
        h.handler.handle("ping", json.dumps(_body(f"x{len(h.acks)}")).encode(), response_topic=topic)
        assert h.acks[-1][1].response_topic is None, topic


def test_payload_size_cap_is_inclusive_and_depth_is_bounded() -> None:
    body = json.dumps(_body()).encode()
    assert _at_now(max_bytes=len(body)).send("ping", body).status == "succeeded"
    assert _at_now(max_bytes=len(body) - 1).send("ping", body) == Ack(
        None, "rejected", f"too_large: over {len(body) - 1} bytes")
    eight = _body(args={"a": [[[[[[1]]]]]]})  # body 1, args 2, lists 3..8
    assert _at_now().send("ping", eight) == Ack("c1", "rejected", "invalid_args: ping takes no arguments")
    nine = _body(args={"a": [[[[[[[1]]]]]]]})
    assert _at_now().send("ping", nine) == Ack(None, "rejected", "too_deep")
    recursion = b'{"id": "c1", "args": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    assert _at_now(max_bytes=len(recursion)).send("ping", recursion) == Ack(None, "rejected", "too_deep")


def test_duplicate_keys_are_named_up_to_32_characters() -> None:
    key = "k" * 40
    payload = b'{"id": "c1", "' + key.encode() + b'": 1, "' + key.encode() + b'": 2}'
    assert _at_now().send("ping", payload) == Ack(None, "rejected", f"invalid_json: duplicate key {'k' * 32!r}")


def test_live_id_bound_refuses_with_busy() -> None:
    h = _at_now()
    h.handler.replay.max_entries = 1
    assert h.send("ping", _body("a")).status == "succeeded"
    assert h.send("ping", _body("b")) == Ack("b", "rejected", "busy: too many live command ids")
    assert h.send("ping", _body("a")) == Ack("a", "rejected", "duplicate_id")


def test_stats_count_every_outcome_by_reason_prefix() -> None:
    def fail(ctx: CommandContext) -> Ack:
        raise ConfigError("bad: really")

    def edge(ctx: CommandContext) -> Ack:
        from edge_agent.errors import EdgeError

        raise EdgeError("device busy")

    def none(ctx: CommandContext) -> Ack:
        return None  # type: ignore[return-value]

    seen: list[tuple[str, str, str, Route]] = []

    def record(ctx: CommandContext) -> Ack:
        seen.append((ctx.device_id, ctx.name, ctx.id, ctx.route))
        return Ack(ctx.id, "succeeded", "ok")

    registry = {n: CommandSpec(n, f) for n, f in (("fail", fail), ("edge", edge), ("none", none), ("rec", record))}
    h = Harness(registry=registry, clock=lambda: NOW)
    assert h.send("fail", _body("a")) == Ack("a", "rejected", "invalid_args: bad: really")
    assert h.send("fail", _body("b")).status == "rejected"
    assert h.send("edge", _body("c")) == Ack("c", "failed", "device busy")
    assert h.send("none", _body("d")) == Ack("d", "failed", "internal_error: command returned no ack")
    assert h.send("rec", _body("e")) == Ack("e", "succeeded", "ok")
    assert h.send("rec", _body("f")).status == "succeeded"
    assert seen[0] == ("dev1", "rec", "e", Route("rec"))
    assert h.handler.snapshot() == {"received": 6, "accepted": 2, "rejected": 2, "failed": 2,
                                    "rejected_reasons": {"invalid_args": 2}}


def test_token_bucket_allows_exactly_one_whole_token() -> None:
    from edge_agent.remote.guards import TokenBucket

    bucket = TokenBucket(rate=0.0, burst=1.0, clock=lambda: 0.0)
    assert bucket.take() is True and bucket.take() is False


def test_a_crashing_command_is_named_by_its_exception_type() -> None:
    def crash(ctx: CommandContext) -> Ack:
        raise KeyError("x")

    h = Harness(registry={"crash": CommandSpec("crash", crash)}, clock=lambda: NOW)
    # issue 11: the ack of a crashed command still carries its id
    assert h.send("crash", _body()) == Ack("c1", "failed", "internal_error: KeyError")


class _UnprintableError(EdgeError):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_crash_outside_the_command_is_a_failed_ack_with_the_id() -> None:
    """An exception that escapes the checks (here the clock) or the handling of a command's own error
    (an EdgeError whose str() raises) is caught by handle(): one failed ack naming the exception's
    type, with the id read from the payload, and counted as failed (mutants: the id, the status,
    the reason, the arguments of peek_id, no ack at all)."""

    def clock() -> float:
        raise OSError("no clock")

    h = Harness(registry={"ping": CommandSpec("ping", lambda ctx: Ack(ctx.id, "succeeded"))}, clock=clock)
    assert h.send("ping", _body("k1")) == Ack("k1", "failed", "internal_error: OSError")

    def unprintable(ctx: CommandContext) -> Ack:
        raise _UnprintableError()

    started = Harness(registry={"odd": CommandSpec("odd", unprintable)}, clock=lambda: NOW)
    assert started.send("odd", _body("k2")) == Ack("k2", "failed", "internal_error: RuntimeError")
    assert [s.handler.snapshot() for s in (h, started)] == 2 * [
        {"received": 1, "accepted": 0, "rejected": 0, "failed": 1, "rejected_reasons": {}}]


def test_response_topics_may_hold_any_other_character() -> None:
    h = _at_now()
    h.handler.handle("ping", json.dumps(_body()).encode(), response_topic="replies/X-1/\u00e9")
    assert h.acks[-1][1].response_topic == "replies/X-1/\u00e9"


def test_expired_ids_are_forgotten_and_may_be_used_again() -> None:
    clock = {"now": NOW}
    h = Harness(clock=lambda: clock["now"], rate=1e9, burst=1e9)
    for i in range(256):
        assert h.send("ping", {"id": f"id{i}", "expires": NOW + 10}).status == "succeeded"
    assert h.send("ping", {"id": "id0", "expires": NOW + 20}) == Ack("id0", "rejected", "duplicate_id")
    clock["now"] = NOW + 10  # every one of them expires now: forgotten
    assert h.send("ping", {"id": "id0", "expires": NOW + 20}).status == "succeeded"


def test_desired_config_depth_and_unknown_fields() -> None:
    assert parse_desired(b'{"version": 1, "config": {"a": [[[[[[1]]]]]]}}') == (1, {"a": [[[[[[1]]]]]]})
    with pytest.raises(CommandError) as info:
        parse_desired(_desired(version=1, config={}, a=1, b=2, c=3, d=4, e=5, f=6, g=7))
    assert str(info.value) == "unknown field(s) in desired config: ['a', 'b', 'c', 'd', 'e']"


def test_builtin_commands_describe_themselves() -> None:
    """The descriptions are what an operator reads of each command (kills every mutant of them)."""
    registry = command_registry(builtin_commands())
    assert {name: spec.description for name, spec in registry.items()} == {
        "ping": "answer with pong",
        "reload": "re-read the configuration",
        "set_config": "change runtime settings (validated, persisted)",
        "snapshot": "publish the latest frame as JPEG on evt/snapshot (annotated: with results drawn)",
    }
    assert not any(spec.privileged for spec in registry.values())


def test_replay_cache_keeps_the_latest_expiry_of_an_id(tmp_path: Path) -> None:
    """An id seen twice stays refused until the later of its two expiries, whether the second
    sighting is live or read back from the file (guards `self._seen.get(cmd_id, …)`)."""
    now = time.time()
    cache = ReplayCache(max_entries=10)
    cache.add("a", now + 200)
    cache.add("a", now + 100)  # an earlier expiry must not shorten the first one
    cache.prune(now + 150)
    assert cache.seen("a")
    path = tmp_path / "ids"
    path.write_text(f"b {now + 200}\nb {now + 100}\n")
    loaded = ReplayCache(path, max_entries=10)
    loaded.prune(now + 150)
    assert loaded.seen("b")
    loaded.prune(now + 250)
    assert not loaded.seen("b")
