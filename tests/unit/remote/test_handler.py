"""Command handler: every message gets exactly one ack; valid commands run; hostile ones are rejected."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import ConfigError
from edge_agent.remote.builtin import builtin_commands
from edge_agent.remote.desired import parse_desired
from edge_agent.remote.handler import CommandHandler
from edge_agent.remote.protocol import (
    Ack,
    CommandContext,
    CommandError,
    CommandSpec,
    Route,
    command,
    command_registry,
    sign_command,
)


class Control:
    def __init__(self) -> None:
        self.config: dict[str, Any] = {"threshold": 0.5}
        self.reloads = 0

    def status_info(self) -> dict[str, Any]:
        return {}

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if key != "threshold" or not isinstance(value, float):
                raise ConfigError(f"bad setting {key}")
        self.config.update(changes)
        return dict(self.config)

    def reload(self) -> None:
        self.reloads += 1

    def snapshot_jpeg(self, max_bytes: int, annotated: bool = False) -> bytes | None:
        return b"\xff\xd8jpeg\xff\xd9"

    def health_extra(self) -> dict[str, Any]:
        return {}


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.acks: list[tuple[Ack, Route]] = []
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.control = Control()
        self.handler = CommandHandler(
            "dev1", control=self.control, reply=lambda a, r: self.acks.append((a, r)),
            publish=lambda k, b: self.published.append((k, b)), **kw,
        )

    def send(self, name: str, body: Any, **kw: Any) -> Ack:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        before = len(self.acks)
        self.handler.handle(name, payload, **kw)
        assert len(self.acks) == before + 1, "exactly one ack per command"
        return self.acks[-1][0]


def cmd(cmd_id: str = "c1", **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"id": cmd_id, "ts": now, "expires": now + 60, **extra}


def test_ping_succeeds() -> None:
    h = Harness()
    ack = h.send("ping", cmd())
    assert (ack.id, ack.status, ack.reason) == ("c1", "succeeded", "pong")
    assert ack.body("ping")["command"] == "ping"


def test_set_config_applies_and_reports() -> None:
    h = Harness()
    ack = h.send("set_config", cmd(args={"threshold": 0.7}))
    assert ack.status == "succeeded"
    assert h.control.config["threshold"] == 0.7
    assert h.published[-1][0] == "config/reported"
    assert h.published[-1][1]["config"]["threshold"] == 0.7


def test_set_config_invalid_is_rejected() -> None:
    h = Harness()
    ack = h.send("set_config", cmd(args={"shell": "rm -rf /"}))
    assert ack.status == "rejected" and ack.reason.startswith("invalid_args")
    assert h.control.config == {"threshold": 0.5}


def test_reload_and_snapshot() -> None:
    h = Harness()
    assert h.send("reload", cmd("r1")).status == "succeeded"
    assert h.control.reloads == 1
    ack = h.send("snapshot", cmd("s1"))
    assert ack.status == "succeeded"
    kind, body = h.published[-1]
    assert kind == "evt/snapshot" and base64.b64decode(body["data_b64"]).startswith(b"\xff\xd8")
    assert h.send("snapshot", cmd("s2", args={"max_bytes": 10**9})).status == "rejected"
    assert h.send("reload", cmd("r2", args={"x": 1})).status == "rejected"


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("ping", b"\xff\xfe", "not_utf8"),
        ("ping", b"{not json", "invalid_json"),
        ("ping", b"[1]", "bad_schema"),
        ("ping", b'{"id": "a", "id": "b", "expires": 1e12}', "invalid_json"),
        ("ping", b'{"id": "a", "expires": NaN}', "invalid_json"),
        ("ping", b"[" * 5000 + b"]" * 5000, "too_large"),
        ("ping", b'{"args": ' + b"[" * 20 + b"]" * 20 + b', "id": "x", "expires": 1e12}', "too_deep"),
        ("ping", {"expires": 1e12}, "bad_schema"),
        ("ping", {"id": 5, "expires": 1e12}, "bad_schema"),
        ("ping", {"id": "a b", "expires": 1e12}, "bad_schema"),
        ("ping", {"id": "a", "expires": "soon"}, "bad_schema"),
        ("ping", {"id": "a", "expires": True}, "bad_schema"),
        ("ping", {"id": "a", "expires": 1e12, "args": []}, "bad_schema"),
        ("ping", {"id": "a", "expires": 1e12, "sig": 7}, "bad_schema"),
        ("ping", {"id": "a", "expires": 1e12, "ts": "now"}, "bad_schema"),
        ("ping", {"id": "a", "expires": 1e12, "exec": "id"}, "bad_schema"),
        ("shell", cmd("a"), "unknown_command"),
        ("PING", cmd("a"), "unknown_command"),
        ("ping", {"id": "a", "expires": time.time() - 1}, "expired"),
        ("ping", {"id": "a", "expires": time.time() + 10**7}, "expires_too_far"),
        # time-relative bodies are built when the test runs, not at collection time
        ("ping", lambda: {"id": "a", "expires": time.time() + 600, "ts": time.time() + 3600}, "ts_in_future"),
    ],
)
def test_rejections(name: str, body: Any, reason: str) -> None:
    h = Harness()
    ack = h.send(name, body() if callable(body) else body)
    assert ack.status == "rejected"
    assert ack.reason.startswith(reason), ack.reason


def test_oversize_refused_before_parsing(monkeypatch) -> None:
    h = Harness(max_bytes=100)

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("parsed an oversize payload")

    monkeypatch.setattr("edge_agent.remote.guards.json.loads", boom)
    assert h.send("ping", b"{" + b" " * 200 + b"}").reason.startswith("too_large")


def test_retained_and_duplicate_and_rate_limit() -> None:
    h = Harness(rate=0.0001, burst=3)
    assert h.send("ping", cmd("x1"), retained=True).reason.startswith("retained")
    assert h.send("ping", cmd("x2")).status == "succeeded"
    assert h.send("ping", cmd("x2")).reason == "duplicate_id"
    assert h.send("ping", cmd("x3")).status == "succeeded"
    assert h.send("ping", cmd("x4")).reason == "rate_limited"
    assert h.handler.snapshot()["rejected_reasons"]["rate_limited"] == 1


def test_replay_cache_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    assert Harness(replay_path=path).send("ping", cmd("same")).status == "succeeded"
    assert Harness(replay_path=path).send("ping", cmd("same")).reason == "duplicate_id"


def test_response_route_is_kept() -> None:
    h = Harness()
    h.handler.handle("ping", json.dumps(cmd()).encode(), response_topic="reply/here", correlation_data=b"\x01\x02")
    _, route = h.acks[-1]
    assert route == Route("ping", "reply/here", b"\x01\x02")
    h.handler.handle("ping", json.dumps(cmd("c2")).encode(), response_topic="reply/#")
    assert h.acks[-1][1].response_topic is None


@pytest.fixture
def privileged() -> Any:
    calls: list[dict[str, Any]] = []

    def run(ctx: CommandContext) -> Ack:
        calls.append(ctx.args)
        ctx.reply(Ack(ctx.id, "in_progress", "downloading"))
        return Ack(ctx.id, "succeeded", "done")

    return calls, command_registry(builtin_commands(), [command("test_priv", run, privileged=True)])


def test_privileged_needs_valid_signature(privileged: Any) -> None:
    calls, registry = privileged
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    assert Harness(registry=registry).send("test_priv", cmd("p0")).reason.startswith("signature_required")
    h = Harness(public_key=key.public_key(), registry=registry)
    body = cmd("p1", args={"url": "file:///m"})
    assert h.send("test_priv", body).reason == "signature_required"
    body["sig"] = sign_command(other, "dev1", "test_priv", body)
    assert h.send("test_priv", body).reason == "bad_signature"
    body["sig"] = sign_command(key, "dev2", "test_priv", body)  # signed for another device
    assert h.send("test_priv", body).reason == "bad_signature"
    body["sig"] = sign_command(key, "dev1", "test_priv", body)
    body["args"] = {"url": "file:///evil"}  # tampered after signing
    assert h.send("test_priv", body).reason == "bad_signature"
    body["args"] = {"url": "file:///m"}
    h.handler.handle("test_priv", json.dumps(body).encode())
    assert [a.status for a, _ in h.acks[-2:]] == ["in_progress", "succeeded"]
    assert calls == [{"url": "file:///m"}]
    assert h.send("test_priv", body).reason == "duplicate_id"


def test_command_crash_becomes_failed_ack() -> None:
    def crash(ctx: CommandContext) -> Ack:
        raise RuntimeError("bug")

    h = Harness(registry={"crash": CommandSpec("crash", crash)})
    ack = h.send("crash", cmd())
    assert ack.status == "failed" and "internal_error" in ack.reason
    assert h.handler.snapshot()["failed"] == 1


def test_reply_failure_does_not_escape() -> None:
    def bad_reply(ack: Ack, route: Route) -> None:
        raise OSError("broker gone")

    handler = CommandHandler("dev1", reply=bad_reply)
    handler.handle("ping", json.dumps(cmd()).encode())  # must not raise


def test_parse_desired() -> None:
    assert parse_desired(b'{"version": 3, "config": {"threshold": 0.4}}') == (3, {"threshold": 0.4})
    for bad in (b"x", b'{"version": "3", "config": {}}', b'{"version": 1}', b'{"version": 1, "config": {}, "x": 1}'):
        with pytest.raises(CommandError, match=r"desired|version|config|unknown"):
            parse_desired(bad)


def test_reload_with_a_bad_config_file_fails_not_rejected() -> None:
    h = Harness()

    def broken_reload() -> None:
        raise ConfigError("agent.toml: line 3: invalid value")

    h.control.reload = broken_reload  # type: ignore[method-assign]
    ack = h.send("reload", cmd("r1"))
    assert ack.status == "failed" and ack.reason.startswith("reload_failed")
    assert h.handler.stats.failed == 1 and h.handler.stats.rejected == 0


def test_set_config_report_has_version_and_status() -> None:
    h = Harness()
    h.control.config["version"] = 4
    ack = h.send("set_config", cmd("s9", args={"threshold": 0.6}))
    assert ack.status == "succeeded"
    kind, body = h.published[-1]
    assert kind == "config/reported"
    assert (body["version"], body["status"], body["source"], body["cmd_id"]) == (4, "applied", "cmd", "s9")
    assert body["config"]["threshold"] == 0.6


def test_record_counts_acks_made_outside_handle() -> None:
    h = Harness()
    h.handler.record(Ack(None, "rejected", "busy"))
    assert h.handler.stats.rejected == 1 and h.handler.snapshot()["rejected_reasons"] == {"busy": 1}


class Clock:
    """A settable wall clock for the handler's expiry checks."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _at(clock: Clock, cmd_id: str, ttl: float = 60.0) -> dict[str, Any]:
    return {"id": cmd_id, "ts": clock.now, "expires": clock.now + ttl}


def test_live_id_bound_refuses_with_busy_then_prune_frees_room() -> None:
    """Guards ``ReplayCache.full`` (always False: the cache grows without bound and ``busy`` is
    never sent) and ``ReplayCache.prune`` (a no-op: once full, the device refuses commands forever)."""
    clock = Clock()
    h = Harness(clock=clock, max_live_ids=5)
    for n in range(5):  # lives end at +60, +61, ... +64
        assert h.send("ping", _at(clock, f"live{n}", 60 + n)).status == "succeeded"
    ack = h.send("ping", _at(clock, "one-too-many"))
    assert (ack.id, ack.status, ack.reason) == ("one-too-many", "rejected", "busy: too many live command ids")
    assert h.handler.snapshot()["rejected_reasons"] == {"busy": 1}
    # A replay of a live id is still named a replay, not busy.
    assert h.send("ping", _at(clock, "live0")).reason == "duplicate_id"
    # The busy command was not recorded: once there is room it is accepted.
    clock.now += 60.5  # live0 expired (at +60), live1..live4 still live
    assert h.send("ping", _at(clock, "one-too-many")).status == "succeeded"
    assert h.send("ping", _at(clock, "next")).reason.startswith("busy")
    clock.now += 55  # live1..live4 expired; one-too-many (until +120.5) still live
    for n in range(4):
        assert h.send("ping", _at(clock, f"later{n}")).status == "succeeded"
    assert h.send("ping", _at(clock, "later4")).reason.startswith("busy")
    clock.now += 200  # everything expired
    for n in range(5):
        assert h.send("ping", _at(clock, f"later{n}")).status == "succeeded"
    assert h.send("ping", _at(clock, "later5")).reason.startswith("busy")


def test_replay_cache_prunes_by_expiry_only() -> None:
    from edge_agent.remote.guards import ReplayCache

    cache = ReplayCache(max_entries=3)
    cache.add("a", 10.0)
    cache.add("b", 30.0)
    cache.add("c", 20.0)
    assert cache.full()
    cache.prune(9.0)
    assert len(cache) == 3 and cache.full()
    cache.prune(20.0)  # expiry at or before now: forgotten
    assert not cache.seen("a") and not cache.seen("c") and cache.seen("b")
    assert len(cache) == 1 and not cache.full()
    cache.add("b", 50.0)  # the same id again: the later expiry counts
    cache.prune(40.0)
    assert cache.seen("b")
    cache.prune(50.0)
    assert len(cache) == 0


def test_replay_cache_file_keeps_only_live_ids(tmp_path: Path) -> None:
    from edge_agent.remote.guards import ReplayCache

    path = tmp_path / "ids"
    now = time.time()
    first = ReplayCache(path)
    first.add("old", now - 1)
    first.add("live", now + 600)
    again = ReplayCache(path)
    assert again.seen("live") and not again.seen("old")
    assert path.read_text().split() == ["live", str(now + 600)]


@pytest.mark.parametrize("cmd_id", ["a\n", "ok\r", " a", "a" * 65, ""])
def test_ids_must_match_entirely(cmd_id: str) -> None:
    """An id with a trailing newline once passed (``re.match`` with ``$``) and broke the
    one-id-per-line replay file."""
    ack = Harness().send("ping", cmd(cmd_id))
    assert ack.status == "rejected" and ack.reason.startswith("bad_schema") and ack.id is None


def test_command_names_must_match_entirely() -> None:
    with pytest.raises(ValueError, match="invalid command name"):
        command("ping\n", lambda ctx: Ack(ctx.id, "succeeded"))


@pytest.mark.parametrize("field", ["expires", "ts"])
@pytest.mark.parametrize("raw", ["1e999", "-1e999", "1" + "0" * 400])
def test_times_must_be_finite(field: str, raw: str) -> None:
    """1e999 parses as infinity and a 400-digit integer overflows float(): rejected as a bad
    schema, never an internal error."""
    now = time.time()
    body = {"id": "t1", "ts": now, "expires": now + 60}
    text = json.dumps(body).replace(json.dumps(body[field]), raw, 1)
    ack = Harness().send("ping", text.encode())
    assert (ack.id, ack.status) == ("t1", "rejected") and ack.reason.startswith("bad_schema"), ack


def test_token_bucket_refills_at_its_rate() -> None:
    from edge_agent.remote.guards import TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.4  # 0.8 token
    assert not bucket.take()
    now[0] += 0.1  # 1.0 token
    assert bucket.take() and not bucket.take()
    now[0] += 100  # capped at the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("field", ["expires", "ts"])
@pytest.mark.parametrize("digits", [65, 400, 5000])
def test_overlong_numbers_are_refused_with_the_id(field: str, digits: int) -> None:
    """Issue 11: beyond 4300 digits ``int()`` itself refuses and the ack once lost the id
    (``invalid_json``, ``id: null``); every number of more than 64 digits is now a bad schema,
    answered with the command's id."""
    now = time.time()
    body = {"id": "t1", "ts": now, "expires": now + 60}
    text = json.dumps(body).replace(json.dumps(body[field]), "1" + "0" * (digits - 1), 1)
    ack = Harness().send("ping", text.encode())
    assert ack == Ack("t1", "rejected", "bad_schema: a number has more than 64 digits")


def test_numbers_of_up_to_64_digits_reach_the_schema_checks() -> None:
    now = time.time()
    big = int("9" * 64)
    assert Harness().send("ping", {"id": "t2", "ts": now, "expires": now + 60, "args": {"n": big}}) == Ack(
        "t2", "rejected", "invalid_args: ping takes no arguments")
