"""The operator's command client over MQTT: ``edge-fleet send`` and the tools that drive devices.

A command is published on ``edge/v1/<device>/cmd/<name>`` (QoS 1) with its own id, the time, an
expiry and, with the operator's key, a signature; the device answers on ``edge/v1/<device>/ack``
(``accepted``/``rejected`` then ``succeeded``/``failed``). :func:`send_command` waits for one
device's final ack (and, for ``snapshot``, the picture it publishes), :func:`send_many` sends one
command to many devices over one connection, and :func:`online_devices` reads which devices'
retained status says ``online`` (``send --all``). The command line is :mod:`deploy.fleet`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.snapshots import snapshot_id
from edge_agent.errors import EdgeError
from edge_agent.messaging.envelope import TOPIC_ROOT
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings
from edge_agent.remote.protocol import sign_command

TERMINAL = {"accepted", "rejected", "succeeded", "failed"}
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # one topic level (AgentConfig.device_id)
MAX_STATUS_BYTES = 64 * 1024  # a retained status larger than this is not read


@dataclass
class CommandOutput:
    """A message a command publishes besides its ack (``snapshot``: ``evt/snapshot``), matched by
    the ``cmd_id`` in its body; messages on that topic for other commands are counted in ``ignored``."""

    kind: str
    payload: bytes | None = None
    ignored: int = 0


def send_command(
    settings: MqttSettings,
    device: str,
    command: str,
    args: dict[str, Any],
    *,
    timeout: float = 10.0,
    sign_key: Path | None = None,
    expires_in: float | None = None,
    on_ack: Any = None,
    output: CommandOutput | None = None,
) -> dict[str, Any] | None:
    """Publish one command and wait for its terminal ack; returns it, or None on timeout.

    With ``output``, a ``succeeded`` ack also waits (within ``timeout``) for the message the
    command publishes on ``output.kind`` for this command id, kept in ``output.payload``.
    """
    body = _command_body(device, command, args, timeout, _signing_key(sign_key), expires_in)
    cmd_id: str = body["id"]
    done = threading.Event()
    result: dict[str, Any] = {}
    ack_topic = f"{TOPIC_ROOT}/{device}/ack"
    topics = (ack_topic,) if output is None else (ack_topic, f"{TOPIC_ROOT}/{device}/{output.kind}")
    link = MqttLink(settings, f"fleet-send-{cmd_id[:8]}", subscriptions=topics)

    def finished() -> bool:
        return "status" in result and result["status"] in TERMINAL and (
            output is None or result["status"] != "succeeded" or output.payload is not None)

    def on_message(message: InboundMessage) -> None:
        if message.topic != ack_topic:
            if output is not None and output.payload is None:
                if snapshot_id(message.payload) == cmd_id:
                    output.payload = message.payload
                else:
                    output.ignored += 1
            if finished():
                done.set()
            return
        try:
            ack = json.loads(message.payload)
        except ValueError:
            return
        final = "status" in result and result["status"] in TERMINAL
        if isinstance(ack, dict) and ack.get("id") == cmd_id and not final:  # a final ack stays final
            if on_ack is not None:
                on_ack(ack)
            result.clear()
            result.update(ack)
            if finished():
                done.set()

    _exchange(link, on_message, command, {device: body}, timeout, done.wait)
    if output is None:
        return dict(result) if done.is_set() else None
    return dict(result) if "status" in result and result["status"] in TERMINAL else None




def _signing_key(path: Path | None) -> Any:
    """The operator's private command key, or None for unsigned commands."""
    if path is None:
        return None
    from edge_agent.model.keys import load_private_key

    return load_private_key(path)


def _command_body(device: str, command: str, args: dict[str, Any], timeout: float, sign_key: Any,
                  expires_in: float | None = None) -> dict[str, Any]:
    """A command's body: its own id, the time, when it expires (by default the wait plus 30 s), the
    arguments and, with ``sign_key``, the signature."""
    now = time.time()
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "ts": round(now, 3),
                            "expires": round(now + (expires_in or max(timeout, 1.0) + 30.0), 3), "args": args}
    if sign_key is not None:
        body["sig"] = sign_command(sign_key, device, command, body)
    return body


def online_devices(settings: MqttSettings, wait: float, quiet: float = 0.5) -> list[str]:
    """Device ids whose retained ``status`` says ``online``, read within ``wait`` seconds.

    The broker sends the retained statuses right after the SUBACK; the read ends once none has
    arrived for ``quiet`` seconds (or at ``wait``).

    Raises:
        EdgeError: the broker cannot be reached within ``wait`` + 5 s.
    """
    states: dict[str, str] = {}
    lock = threading.Lock()
    last = [time.monotonic()]
    subscribed = threading.Event()

    def on_message(message: InboundMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 4 or not DEVICE_ID_RE.fullmatch(parts[2]) or len(message.payload) > MAX_STATUS_BYTES:
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        state = body.get("state") if isinstance(body, dict) else None
        with lock:
            states[parts[2]] = state if isinstance(state, str) else "unknown"
            last[0] = time.monotonic()

    link = MqttLink(settings, f"fleet-all-{uuid.uuid4().hex[:8]}", subscriptions=(f"{TOPIC_ROOT}/+/status",))
    link.callbacks.on_message = on_message
    link.callbacks.on_subscribed = lambda mid, codes: subscribed.set()
    link.start()
    try:
        if not link.wait_connected(wait + 5):
            raise EdgeError(f"cannot connect to {settings.broker} within {wait + 5:g} s")
        deadline = time.monotonic() + wait
        if subscribed.wait(wait):
            with lock:
                last[0] = time.monotonic()
            while time.monotonic() < deadline:
                with lock:
                    if time.monotonic() - last[0] >= quiet:
                        break
                time.sleep(0.05)
    finally:
        link.stop()
    return sorted(device for device, state in states.items() if state == "online")


def send_many(
    settings: MqttSettings,
    devices: Sequence[str],
    command: str,
    args: dict[str, Any],
    *,
    timeout: float = 10.0,
    sign_key: Path | None = None,
    on_ack: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Send one command (its own id per device) over one connection and wait, within ``timeout``,
    for each device's final ack; returns device → final ack, or None where none came in time."""
    key = _signing_key(sign_key)
    bodies = {device: _command_body(device, command, args, timeout, key) for device in devices}
    waiting = {body["id"]: device for device, body in bodies.items()}
    results: dict[str, dict[str, Any] | None] = dict.fromkeys(devices)
    cond = threading.Condition()
    # one wildcard subscription for many devices, one exact one per device for a few
    filters = tuple(f"{TOPIC_ROOT}/{d}/ack" for d in devices) if len(devices) <= 16 else (f"{TOPIC_ROOT}/+/ack",)
    link = MqttLink(settings, f"fleet-send-{uuid.uuid4().hex[:8]}", subscriptions=filters)

    def on_message(message: InboundMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 4 or parts[3] != "ack" or len(message.payload) > MAX_STATUS_BYTES:
            return
        try:
            ack = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(ack, dict):
            return
        with cond:
            device = waiting.get(str(ack.get("id")))
            if device is None or device != parts[2]:
                return  # another command's ack, or an ack on the wrong device's topic
            if on_ack is not None:
                on_ack(device, ack)
            if ack.get("status") in TERMINAL:
                results[device] = ack
                del waiting[ack["id"]]
                cond.notify_all()

    def all_answered(seconds: float) -> None:
        with cond:
            cond.wait_for(lambda: not waiting, seconds)

    _exchange(link, on_message, command, bodies, timeout, all_answered)
    return results


def _exchange(link: MqttLink, on_message: Callable[[InboundMessage], None], command: str,
              bodies: dict[str, dict[str, Any]], timeout: float, wait: Callable[[float], object]) -> None:
    """Connect ``link``, subscribe, publish each device's command body (QoS 1), then ``wait`` for
    the answers with the seconds left; all within ``timeout``.

    Raises:
        EdgeError: the broker cannot be reached within ``timeout``.
    """
    subscribed = threading.Event()
    link.callbacks.on_message = on_message
    link.callbacks.on_subscribed = lambda mid, codes: subscribed.set()  # one SUBSCRIBE for every filter
    deadline = time.monotonic() + timeout
    link.start()
    try:
        if not link.wait_connected(max(0.1, deadline - time.monotonic())):
            raise EdgeError(f"cannot connect to {link.settings.broker} within {timeout:g} s")
        subscribed.wait(max(0.1, deadline - time.monotonic()))
        for device, body in bodies.items():
            link.publish(f"{TOPIC_ROOT}/{device}/cmd/{command}", json.dumps(body).encode(), qos=1)
        wait(max(0.0, deadline - time.monotonic()))
    finally:
        link.stop()
