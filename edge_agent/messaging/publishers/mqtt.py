"""MQTT publisher: results and health through the durable outbox, status/acks direct.

Created by ``create_publisher("mqtt", config=..., envelope=..., control=...)``:

- ``config``: an :class:`~edge_agent.messaging.link.MqttSettings`, the ``[mqtt]`` config
  section (any object or dict with the same field names), plus keyword overrides;
- ``envelope``: the agent's :class:`~edge_agent.messaging.envelope.EnvelopeFactory`;
- ``outbox``: object/dict with ``path``, ``max_bytes``, ``max_age_s`` (and
  optionally ``max_message_bytes``); default ``<state_dir>/outbox.db``;
- ``state_dir``: where the outbox, the command replay cache and the last applied
  desired-config version live;
- ``command_public_key``: path of the pinned Ed25519 key for privileged commands.

Threads: paho's network thread (callbacks only enqueue), one sender thread
(the only caller of ``MqttLink.publish``: birth, acks, then outbox rows, keeping
at most ``max_inflight`` messages in paho) and one command worker (commands run
off the network thread, so a slow ``reload`` never stalls keepalives).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edge_agent.remote.ota  # noqa: F401 - registers the privileged update_model and rollback commands
from edge_agent import __version__
from edge_agent.control import AgentControl
from edge_agent.errors import ConfigError, EdgeError
from edge_agent.messaging.envelope import SCHEMA, TOPIC_ROOT, EnvelopeFactory, topic_root
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings, Will
from edge_agent.messaging.outbox import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGE_BYTES, Outbox
from edge_agent.messaging.publishers import Publisher, register_publisher
from edge_agent.model.keys import load_command_public_key
from edge_agent.remote.handler import Ack, CommandError, CommandHandler, Route, parse_desired

log = logging.getLogger(__name__)

DIRECT_KINDS = {"status": True, "ack": False, "config/reported": True}  # kind -> retained
DIRECT_QUEUE_MAX = 1000
COMMAND_QUEUE_MAX = 64
EXPIRE_EVERY_S = 10.0
OFFLINE_RESERVE_S = 1.5  # of the stop timeout, kept for publishing `offline`


@dataclass(frozen=True)
class _Direct:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True)
class _RowRef:
    row_id: int


def _json_default(value: Any) -> Any:
    for attr in ("item", "tolist"):  # NumPy scalars and arrays
        if hasattr(value, attr):
            return getattr(value, attr)()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=_json_default).encode()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class MqttPublisher(Publisher):
    def __init__(
        self,
        config: Any = None,
        *,
        envelope: EnvelopeFactory,
        control: AgentControl | None = None,
        outbox: Any = None,
        state_dir: Path | str | None = None,
        command_public_key: Path | str | None = None,
        command_rate: float = 5.0,
        command_burst: float = 20.0,
        **overrides: Any,
    ) -> None:
        self.settings = MqttSettings.from_any(config, **overrides)
        self.envelope = envelope
        self.device_id = envelope.device_id
        self.root = topic_root(self.device_id)
        self.control = control
        self.state_dir = Path(state_dir) if state_dir is not None else None
        path = _get(outbox, "path")
        if path is None and self.state_dir is not None:
            path = self.state_dir / "outbox.db"
        if path is None:
            raise ConfigError("the MQTT publisher needs an outbox path or a state directory")
        self.outbox = Outbox(
            Path(path),
            max_bytes=int(_get(outbox, "max_bytes") or DEFAULT_MAX_BYTES),
            max_age_s=float(_get(outbox, "max_age_s") or DEFAULT_MAX_AGE_S),
            max_message_bytes=int(_get(outbox, "max_message_bytes") or self.settings.max_payload_bytes
                                  or DEFAULT_MAX_MESSAGE_BYTES),
        )
        self.window = self.settings.max_inflight
        will = Will(f"{self.root}/status", encode(self._status_body("offline", seq=False)), qos=1, retain=True)
        self.link = MqttLink(
            self.settings,
            self.settings.client_id or self.device_id,
            will=will,
            subscriptions=(f"{self.root}/cmd/+", f"{self.root}/config/desired"),
            max_queued=self.window + 32,
            retain_as_published=True,
        )
        self.link.callbacks.on_connected = self._on_connected
        self.link.callbacks.on_message = self._on_message
        self.link.callbacks.on_published = self._on_published
        key = load_command_public_key(Path(command_public_key)) if command_public_key else None
        self.commands = CommandHandler(
            self.device_id,
            control=control,
            reply=self._send_ack,
            publish=self.publish,
            public_key=key,
            rate=command_rate,
            burst=command_burst,
            replay_path=self.state_dir / "command-ids" if self.state_dir else None,
        )
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._direct: deque[_Direct] = deque()
        self._direct_lock = threading.Lock()
        self._inflight: dict[int, _Direct | _RowRef] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cmd_queue: queue.Queue[InboundMessage | None] = queue.Queue(COMMAND_QUEUE_MAX)
        self._threads: list[threading.Thread] = []
        self._dropped_direct = 0
        self._refused_oversize = 0
        self._dropped_desired = 0
        self._pending_desired: InboundMessage | None = None
        self._offline_mid: int | None = None
        self._offline_done = threading.Event()
        self._desired_version = self._load_desired_version()
        self._rows_paused = False
        self._started = False

    # ---- Publisher API ------------------------------------------------------------------
    def start(self, control: AgentControl | None = None) -> None:
        if control is not None:
            self.control = control
            self.commands.control = control
        if self._started:
            return
        self._started = True
        self._rows_paused = False
        self._offline_done.clear()
        self._stop.clear()
        for target, name in ((self._sender, "mqtt-sender"), (self._command_worker, "mqtt-commands")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.link.start()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue a message: ``health`` and ``evt/*`` via the outbox, the rest direct."""
        if not kind or any(c in kind for c in "+#\x00") or kind.startswith("/"):
            raise ValueError(f"invalid message kind {kind!r}")
        if kind in DIRECT_KINDS:
            body = self.envelope.wrap(payload)
            self._queue_direct(_Direct(f"{self.root}/{kind}", encode(body), DIRECT_KINDS[kind]))
            return
        if kind != "health" and not kind.startswith("evt/"):
            raise ValueError(f"unknown message kind {kind!r}: use status, health, evt/<type>, ack, config/reported")
        body = self.envelope.wrap(payload)
        topic, data = f"{self.root}/{kind}", encode(body)
        if not self.link.fits(topic, len(data)):
            # payload + topic + header over the cap (or the broker's Maximum Packet Size):
            # refused here, counted, never queued (the broker would drop the connection).
            self.outbox.refuse_oversize(topic, len(data), self.link.packet_limit)
            return
        if self.outbox.put(topic, data, "health" if kind == "health" else "result"):
            self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout``, publish ``offline`` (retained), disconnect. Unsent rows stay queued.

        The last :data:`OFFLINE_RESERVE_S` of the timeout (at most half of it) belong to
        ``offline``: flushing the outbox stops then, and ``offline`` goes out ahead of
        anything still queued, so a large backlog cannot crowd it out (on MQTT 3.1.1
        there is no will-with-disconnect fallback to rely on).
        """
        if not self._started:
            return
        start = time.monotonic()
        deadline = start + timeout
        flush_deadline = deadline - min(OFFLINE_RESERVE_S, timeout / 2)
        while time.monotonic() < flush_deadline and self.link.connected and (
            self.outbox.depth or self._inflight or self._direct
        ):
            time.sleep(0.02)
        self._rows_paused = True  # no more outbox rows into paho: `offline` must not wait behind them
        offline_sent = False
        if self.link.connected:
            self._queue_direct(_Direct(f"{self.root}/status", encode(self._status_body("offline")), True),
                               front=True, marker=True)
            offline_sent = self._offline_done.wait(max(0.1, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._cmd_queue.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads.clear()
        # If our own `offline` was not acknowledged, let the broker publish the will instead.
        self.link.stop(send_will=not offline_sent)
        self.outbox.close()
        self._started = False

    def stats(self) -> dict[str, Any]:
        link = self.link.stats
        return {
            "connected": self.link.connected,
            "reconnects": link.reconnects,
            "connects": link.connects,
            "refused": link.refused,
            "outbox": self.outbox.stats(),
            "direct_dropped": self._dropped_direct,
            "direct_refused_oversize": self._refused_oversize,
            "desired_dropped": self._dropped_desired,
            "commands": self.commands.snapshot(),
            "commands_rejected": self.commands.stats.rejected,
        }

    @property
    def connected(self) -> bool:
        return self.link.connected

    def thread_alive(self) -> bool:
        """paho's network thread and our sender and command threads all run.

        :meth:`edge_agent.agent.agent.Agent.is_healthy` (and so the systemd watchdog)
        uses this. A broker outage does not make it false; a dead thread does.
        """
        if not self._started:
            return False
        return self.link.network_thread_alive and all(t.is_alive() for t in self._threads)

    # ---- status and acks ----------------------------------------------------------------
    def _status_body(self, state: str, seq: bool = True) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.control is not None:
            try:
                info = dict(self.control.status_info())
            except Exception:  # status must go out even if the app misbehaves
                log.exception("status_info failed")
        body: dict[str, Any] = {"state": state, "agent_version": __version__, **info}
        if seq:
            return self.envelope.wrap(body)
        # The will is fixed at connect time and may never be sent: it carries no seq,
        # so consumers do not count a gap for it.
        return {"schema": SCHEMA, "device_id": self.device_id, "boot_id": self.envelope.boot_id,
                "session": self.envelope.session, "seq": None, "ts_ms": int(time.time() * 1000),
                "replayed": False, **body}

    def _response_topic_allowed(self, topic: str) -> bool:
        """A command must not make the device write into the fleet's own topic tree, except
        ``…/reply/…`` under this device (the shipped ACL allows exactly that)."""
        if topic.startswith(f"{self.root}/reply/"):
            return True
        return not topic.startswith((f"{TOPIC_ROOT}/", "homeassistant/", "$"))

    def _send_ack(self, ack: Ack, route: Route) -> None:
        payload = encode(self.envelope.wrap(ack.body(route.name)))
        self._queue_direct(_Direct(f"{self.root}/ack", payload, False))
        if route.response_topic and self.link.v5 and self._response_topic_allowed(route.response_topic):
            self._queue_direct(_Direct(route.response_topic, payload, False, route.response_topic,
                                       route.correlation_data))

    def _queue_direct(self, item: _Direct, front: bool = False, marker: bool = False) -> None:
        if not self.link.fits(item.topic, len(item.payload), response_topic=item.response_topic,
                              correlation_data=item.correlation_data):
            self._refuse_direct(item)
            return
        with self._direct_lock:
            if len(self._direct) >= DIRECT_QUEUE_MAX:
                self._dropped_direct += 1
                log.warning("direct queue full: dropped a message for %s", item.topic)
                return
            if marker:
                item = _OfflineMarker(item.topic, item.payload, item.retain)
            if front:
                self._direct.appendleft(item)
            else:
                self._direct.append(item)
        self._wake.set()

    def _refuse_direct(self, item: _Direct) -> None:
        self._refused_oversize += 1
        log.warning("refused %d-byte message for %s: its packet would exceed the %d-byte limit",
                    len(item.payload), item.topic, self.link.packet_limit)

    # ---- paho-thread callbacks (only enqueue) -------------------------------------------
    def _on_connected(self) -> None:
        birth = _Direct(f"{self.root}/status", encode(self._status_body("online")), True)
        self._queue_direct(birth, front=True)
        if self.settings.homeassistant:
            for topic, config in homeassistant_discovery(self.device_id, self.root):
                self._queue_direct(_Direct(topic, encode(config), True))

    def _on_published(self, mid: int, ok: bool, reason: str) -> None:
        self._acks.put((mid, ok, reason))
        self._wake.set()

    def _on_message(self, message: InboundMessage) -> None:
        try:
            self._cmd_queue.put_nowait(message)
        except queue.Full:
            if message.topic.startswith(f"{self.root}/cmd/"):
                ack = Ack(None, "rejected", "busy")
                self.commands.record(ack)
                self._send_ack(ack, Route(message.topic.rsplit("/", 1)[-1], message.response_topic,
                                          message.correlation_data))
            elif message.topic == f"{self.root}/config/desired":
                # Not lost: the newest desired config waits in a slot the worker checks.
                with self._direct_lock:
                    replaced = self._pending_desired is not None
                    self._pending_desired = message
                self._dropped_desired += 1 if replaced else 0
                log.warning("command queue full: desired config deferred%s",
                            " (replacing an older deferred one)" if replaced else "")
                self._wake.set()

    # ---- worker threads -----------------------------------------------------------------
    def _command_worker(self) -> None:
        cmd_prefix = f"{self.root}/cmd/"
        while not self._stop.is_set():
            message = self._cmd_queue.get()
            if message is None:
                return
            self._run_deferred_desired()
            try:
                if message.topic.startswith(cmd_prefix):
                    self.commands.handle(
                        message.topic[len(cmd_prefix):],
                        message.payload,
                        retained=message.retain,
                        response_topic=message.response_topic,
                        correlation_data=message.correlation_data,
                    )
                elif message.topic == f"{self.root}/config/desired":
                    self._apply_desired(message.payload)
            except Exception:  # keep the worker alive whatever happens
                log.exception("handling %s failed", message.topic)

    def _run_deferred_desired(self) -> None:
        with self._direct_lock:
            pending, self._pending_desired = self._pending_desired, None
        if pending is not None:
            try:
                self._apply_desired(pending.payload)
            except Exception:  # keep the worker alive whatever happens
                log.exception("handling deferred desired config failed")

    def _current_config(self) -> dict[str, Any] | None:
        getter = getattr(self.control, "reported_config", None)
        if getter is None:
            return None
        try:
            config = getter()
        except Exception:  # the report must go out even if the app misbehaves
            log.exception("reported_config failed")
            return None
        return dict(config) if isinstance(config, dict) else None

    def _report(self, version: int | None, status: str, reason: str | None = None,
                config: dict[str, Any] | None = None) -> None:
        """Publish ``config/reported`` (retained): ``{version, status, reason?, config, source}``."""
        body: dict[str, Any] = {"version": version, "status": status}
        if reason is not None:
            body["reason"] = reason
        body["config"] = config if config is not None else self._current_config()
        body["source"] = "desired"
        self.publish("config/reported", body)

    def _apply_desired(self, payload: bytes) -> None:
        if not payload:
            return  # retained desired config cleared
        try:
            version, config = parse_desired(payload)
        except CommandError as exc:
            self._report(self._desired_version, "rejected", str(exc))
            return
        if self._desired_version is not None and version <= self._desired_version:
            if version < self._desired_version:
                self._report(version, "rejected", f"stale version {version} <= {self._desired_version}")
            # Equal: already applied (the retained message comes again after every reconnect).
            return
        if self.control is None:
            return
        try:
            # The desired version becomes the agent's config version (status, health, reported).
            reported = self.control.apply_config({**config, "version": version})
        except EdgeError as exc:
            self._report(version, "rejected", str(exc))
            return
        self._desired_version = version
        self._save_desired_version(version)
        self._report(version, "applied", config=reported)

    def _desired_path(self) -> Path | None:
        return self.state_dir / "desired-version" if self.state_dir else None

    def _load_desired_version(self) -> int | None:
        path = self._desired_path()
        try:
            return int(path.read_text()) if path else None
        except (OSError, ValueError):
            return None

    def _save_desired_version(self, version: int) -> None:
        path = self._desired_path()
        if path is None:
            return
        try:
            path.write_text(str(version))
        except OSError as exc:
            log.warning("cannot persist desired config version: %s", exc)

    def _sender(self) -> None:
        last_expire = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._drain_acks()
                if self.link.connected:
                    self._send_direct()
                    self._send_rows()
                now = time.monotonic()
                if now - last_expire > EXPIRE_EVERY_S:
                    last_expire = now
                    self.outbox.expire()
            except Exception:  # the sender must survive anything (e.g. a full disk)
                log.exception("MQTT sender loop error")
                time.sleep(0.5)

    def _drain_acks(self) -> None:
        delivered: list[int] = []
        while True:
            try:
                mid, ok, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            if isinstance(entry, _RowRef):
                if ok:
                    delivered.append(entry.row_id)
                else:
                    log.warning("broker refused outbox row %d: %s", entry.row_id, reason)
                    self.outbox.nack(entry.row_id, reason)
            elif isinstance(entry, _OfflineMarker):
                self._offline_done.set()
            elif not ok:
                log.warning("broker refused %s: %s", entry.topic, reason)
        self.outbox.ack(delivered)

    def _send_direct(self) -> None:
        while len(self._inflight) < self.window + 8:
            with self._direct_lock:
                if not self._direct:
                    return
                item = self._direct.popleft()
            if not self.link.fits(item.topic, len(item.payload), correlation_data=item.correlation_data):
                self._refuse_direct(item)  # e.g. the broker's limit is smaller than when queued
                continue
            mid = self.link.publish(item.topic, item.payload, qos=1, retain=item.retain,
                                    response_topic=None, correlation_data=item.correlation_data)
            if mid is None:
                with self._direct_lock:
                    self._direct.appendleft(item)
                return
            self._inflight[mid] = item

    def _send_rows(self) -> None:
        if self._rows_paused:
            return
        free = self.window - sum(1 for e in self._inflight.values() if isinstance(e, _RowRef))
        if free <= 0:
            return
        for row in self.outbox.take(free):
            if not self.link.fits(row.topic, len(row.payload)):
                # Queued under a larger limit (the broker's is smaller): it can never be sent.
                self.outbox.drop_oversize(row.id, self.link.packet_limit)
                continue
            mid = self.link.publish(row.topic, row.payload, qos=1)
            if mid is None:
                self.outbox.release(row.id)
                return
            self._inflight[mid] = _RowRef(row.id)


HA_SENSORS = (
    # object id, name, template over the health payload, unit
    ("fps", "Inference fps", "{{ value_json.fps_inferred }}", "fps"),
    ("invoke_p95", "Inference p95", "{{ value_json.latency_ms.invoke.p95 }}", "ms"),
    ("cpu_temp", "CPU temperature", "{{ value_json.cpu_temp_c }}", "°C"),
    ("outbox_depth", "Outbox depth", "{{ value_json.outbox.depth }}", None),
)


def homeassistant_discovery(device_id: str, root: str) -> list[tuple[str, dict[str, Any]]]:
    """Retained Home Assistant discovery configs; availability bound to ``…/status``."""
    device = {"identifiers": [f"edge_{device_id}"], "name": device_id, "sw_version": __version__,
              "manufacturer": "edge-infer"}
    availability = {"topic": f"{root}/status", "value_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    out: list[tuple[str, dict[str, Any]]] = []
    for object_id, name, template, unit in HA_SENSORS:
        config: dict[str, Any] = {
            "name": name, "unique_id": f"edge_{device_id}_{object_id}", "state_topic": f"{root}/health",
            "value_template": template, "availability": [availability], "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
        out.append((f"homeassistant/sensor/{device_id}/{object_id}/config", config))
    return out


@dataclass(frozen=True)
class _OfflineMarker(_Direct):
    """The clean-stop ``offline`` message; its PUBACK ends :meth:`MqttPublisher.stop`."""


def create_mqtt_publisher(**options: Any) -> Publisher:
    return MqttPublisher(**options)


register_publisher("mqtt", create_mqtt_publisher)
