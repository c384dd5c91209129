"""The built-in commands every device accepts: ``ping``, ``reload``, ``set_config``, ``snapshot``."""

from __future__ import annotations

import base64
import time

from edge_agent.errors import ConfigError
from edge_agent.remote.guards import SET_CONFIG_MAX_KEYS
from edge_agent.remote.protocol import Ack, CommandContext, CommandError, CommandSpec, command

SNAPSHOT_MAX_BYTES = 96 * 1024


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
    annotated = ctx.args.get("annotated", False)
    if set(ctx.args) - {"max_bytes", "annotated"} or not isinstance(max_bytes, int) or isinstance(max_bytes, bool) \
            or not 1024 <= max_bytes <= SNAPSHOT_MAX_BYTES or not isinstance(annotated, bool):
        raise CommandError(f"snapshot takes only max_bytes (1024..{SNAPSHOT_MAX_BYTES}) and annotated (true/false)")
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no frame available")
    jpeg = ctx.control.snapshot_jpeg(max_bytes, annotated=annotated)
    if not jpeg:
        return Ack(ctx.id, "failed", "no frame available")
    ctx.publish("evt/snapshot", {"cmd_id": ctx.id, "format": "jpeg", "bytes": len(jpeg), "annotated": annotated,
                                 "data_b64": base64.b64encode(jpeg).decode()})
    return Ack(ctx.id, "succeeded", "published on evt/snapshot", {"bytes": len(jpeg)})


def builtin_commands() -> tuple[CommandSpec, ...]:
    """``ping``, ``reload``, ``set_config`` and ``snapshot`` (none privileged)."""
    return (
        command("ping", _ping, description="answer with pong"),
        command("reload", _reload, description="re-read the configuration"),
        command("set_config", _set_config, description="change runtime settings (validated, persisted)"),
        command("snapshot", _snapshot,
                description="publish the latest frame as JPEG on evt/snapshot (annotated: with results drawn)"),
    )
