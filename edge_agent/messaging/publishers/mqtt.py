"""MQTT publisher: results and health through the durable outbox, status/acks direct.

It owns delivery and is the only code that wraps bodies in the envelope. What arrives
on the device's subscriptions goes to the :class:`~edge_agent.messaging.publishers.Inbound`
given to :meth:`MqttPublisher.attach` (the agent attaches its command inbox,
:class:`edge_agent.remote.inbox.Inbox`; messaging never imports ``remote``).
Created by ``create_publisher("mqtt", config=..., envelope=..., control=...)``:

- ``config``: an :class:`~edge_agent.messaging.link.MqttSettings`, the ``[mqtt]`` config
  section (any object or dict with the same field names), plus keyword overrides;
- ``envelope``: the agent's :class:`~edge_agent.messaging.envelope.EnvelopeFactory`;
- ``outbox``: object/dict with ``path``, ``max_bytes``, ``max_age_s`` (and
  optionally ``max_message_bytes``); default ``<state_dir>/outbox.db``;
- ``state_dir``: where the outbox lives (default ``<state_dir>/outbox.db``);
- ``control``: the running agent, for the status (birth) message.

Threads: paho's network thread (callbacks only enqueue), the sender thread
(:mod:`edge_agent.messaging.sender`: birth, acks, then outbox rows, keeping at
most ``max_inflight`` messages in paho) and the attached inbox's worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.control import AgentControl
from edge_agent.errors import ConfigError
from edge_agent.messaging.envelope import EnvelopeFactory, topic_root
from edge_agent.messaging.homeassistant import DEFAULT_HEALTH_INTERVAL_S, DiscoveryModel, homeassistant_discovery
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings, Will
from edge_agent.messaging.outbox import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGE_BYTES, Outbox
from edge_agent.messaging.publishers import Inbound, Publisher, register_publisher
from edge_agent.messaging.sender import Direct, Sender
from edge_agent.util.fs import atomic_write

log = logging.getLogger(__name__)

DIRECT_KINDS = {"status": True, "ack": False, "config/reported": True}  # kind -> retained
OFFLINE_RESERVE_S = 1.5  # of the stop timeout, kept for publishing `offline`
HA_TOPICS_FILE = "homeassistant-topics.json"  # discovery topics last published (to remove stale ones)
MAX_STATUS_BYTES = 64 * 1024  # a status message read back (duplicate check) larger than this is ignored


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
        **overrides: Any,
    ) -> None:
        self.settings = MqttSettings.from_any(config, **overrides)
        self.envelope = envelope
        # health (its own thread) and results (the inference thread) take a seq and queue a row
        # under one lock, so the outbox holds them in seq order (a consumer's gap detection)
        self._queue_lock = threading.Lock()
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
        # The will is fixed at connect time and may never be sent: it carries no seq.
        will = Will(f"{self.root}/status", encode(self.envelope.will_body(self._status_body("offline"))),
                    qos=1, retain=True)
        self._started_ms = int(time.time() * 1000)
        # Our own status, read back: a birth of another agent session there means a second agent
        # uses this device id (edge_agent.messaging.duplicate).
        self._status_topic = f"{self.root}/status"
        self.link = MqttLink(
            self.settings,
            self.settings.client_id or self.device_id,
            will=will,
            subscriptions=(self._status_topic,),
            max_queued=self.window + 32,
            retain_as_published=True,
        )
        self.sender = Sender(self.link, self.outbox, self.window)
        self.inbox: Inbound | None = None
        self.link.callbacks.on_connected = self._on_connected
        self.link.callbacks.on_message = self._on_message
        self.link.callbacks.on_published = self.sender.on_published
        self._started = False
        self._ha_lock = threading.Lock()
        self._ha_model: DiscoveryModel | None = None  # what the published discovery describes
        self._ha_topics: set[str] | None = None  # topics published (None: not read from disk yet)

    # ---- Publisher API ------------------------------------------------------------------
    def attach(self, inbound: Inbound) -> None:
        """Subscribe to ``inbound``'s topic filters (now and after every reconnect) and hand it
        every message that arrives on them."""
        self.inbox = inbound
        for topic_filter in inbound.filters():
            self.link.add_subscription(topic_filter)
        if self._started:
            inbound.start()

    def start(self, control: AgentControl | None = None) -> None:
        if control is not None:
            self.control = control
            if self.inbox is not None:
                self.inbox.set_control(control)
        if self._started:
            return
        self._started = True
        self.sender.start()
        if self.inbox is not None:
            self.inbox.start()
        self.link.start()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue a message: ``health`` and ``evt/*`` via the outbox, the rest direct."""
        if not kind or any(c in kind for c in "+#\x00") or kind.startswith("/"):
            raise ValueError(f"invalid message kind {kind!r}")
        if kind in DIRECT_KINDS:
            self.publish_reply(kind, payload, None, None)
            if kind == "status":  # a new model may have new labels
                self._refresh_discovery(force=False)
            return
        if kind != "health" and not kind.startswith("evt/"):
            raise ValueError(f"unknown message kind {kind!r}: use status, health, evt/<type>, ack, config/reported")
        topic = f"{self.root}/{kind}"
        with self._queue_lock:
            data = encode(self.envelope.wrap(payload))
            if not self.link.fits(topic, len(data)):
                # payload + topic + header over the cap (or the broker's Maximum Packet Size):
                # refused here, counted, never queued (the broker would drop the connection).
                self.outbox.refuse_oversize(topic, len(data), self.link.packet_limit)
                return
            stored = self.outbox.put(topic, data, "health" if kind == "health" else "result",
                                     live=lambda: self._send_live(topic, data))
        if stored:
            self.sender.wake()
        if kind == "health":  # the health interval (expire_after) may have changed
            self._refresh_discovery(force=False)

    def _send_live(self, topic: str, data: bytes) -> bool:
        """A message the outbox could not store (full disk): sent directly while connected."""
        return self.link.connected and self.sender.queue_direct(Direct(topic, data, False))

    def publish_reply(self, kind: str, payload: dict[str, Any], response_topic: str | None,
                      correlation_data: bytes | None) -> None:
        """Queue a direct message (``status``, ``ack``, ``config/reported``) and, on MQTT 5, the
        same bytes on ``response_topic`` with ``correlation_data`` (request/response)."""
        if kind not in DIRECT_KINDS:
            raise ValueError(f"{kind!r} is not sent directly: use one of {sorted(DIRECT_KINDS)}")
        data = encode(self.envelope.wrap(self._mark_duplicate(kind, payload)))
        self.sender.queue_direct(Direct(f"{self.root}/{kind}", data, DIRECT_KINDS[kind]))
        if response_topic and self.link.v5:
            self.sender.queue_direct(Direct(response_topic, data, False, response_topic, correlation_data))

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
        while time.monotonic() < flush_deadline and self.link.connected and self.sender.pending:
            time.sleep(0.02)
        self.sender.pause_rows()  # no more outbox rows into paho: `offline` must not wait behind them
        offline_sent = False
        if self.link.connected:
            offline = encode(self.envelope.wrap(self._status_body("offline")))
            self.sender.queue_offline(Direct(f"{self.root}/status", offline, True))
            offline_sent = self.sender.wait_offline(max(0.1, deadline - time.monotonic()))
        self.sender.stop(timeout=2.0)
        if self.inbox is not None:
            self.inbox.stop(timeout=2.0)
        # If our own `offline` was not acknowledged, let the broker publish the will instead.
        self.link.stop(send_will=not offline_sent)
        self.outbox.close()
        self._started = False

    def stats(self) -> dict[str, Any]:
        link = self.link.stats
        self.link.duplicates.still_connected()
        return {
            "publisher": "mqtt",
            **self.link.duplicates.stats(),
            "connected": self.link.connected,
            "reconnects": link.reconnects,
            "connects": link.connects,
            "refused": link.refused,
            "outbox": self.outbox.stats(),
            "direct_dropped": self.sender.dropped_direct,
            "direct_refused_oversize": self.sender.refused_oversize,
            **(self.inbox.stats() if self.inbox is not None else {}),
        }

    def problems(self) -> list[str]:
        dup = self.link.duplicates
        if not dup.count:
            return []
        return [f"duplicate_device_id: another client connected as {self.link.client_id} "
                f"({dup.count} time(s), last seen by {dup.how or 'short_sessions'})"]

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
        inbox_alive = self.inbox is None or self.inbox.alive
        return self.link.network_thread_alive and self.sender.alive and inbox_alive

    # ---- status -------------------------------------------------------------------------
    def _status_body(self, state: str) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.control is not None:
            try:
                info = dict(self.control.status_info())
            except Exception:  # status must go out even if the app misbehaves
                log.exception("status_info failed")
        return {"state": state, "agent_version": __version__, **info}

    def _mark_duplicate(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A birth while another agent uses our device id says so (``duplicate_device_id: true``)."""
        if kind == "status" and payload.get("state") == "online" and self.link.duplicates.flagged:
            return {**payload, "duplicate_device_id": True}
        return payload

    # ---- paho-thread callbacks (only enqueue) -------------------------------------------
    def _on_connected(self) -> None:
        body = self._mark_duplicate("status", self._status_body("online"))
        birth = Direct(f"{self.root}/status", encode(self.envelope.wrap(body)), True)
        self.sender.queue_direct(birth, front=True)
        self._refresh_discovery(force=True)

    # ---- Home Assistant discovery ---------------------------------------------------------
    def _discovery_model(self) -> DiscoveryModel:
        """The running model and settings the discovery configs describe."""
        if self.control is None:
            return DiscoveryModel()
        try:
            info = self.control.status_info()
            reported = self.control.reported_config()
            labels = self.control.model_labels()
        except Exception:  # discovery must not break the connection callbacks
            log.exception("cannot read the model for Home Assistant discovery")
            return DiscoveryModel()
        model = info.get("model")
        interval = reported.get("health_interval_s")
        return DiscoveryModel(
            task=info.get("task") if isinstance(info.get("task"), str) else None,
            labels=tuple(labels),
            health_interval_s=float(interval) if isinstance(interval, int | float) else DEFAULT_HEALTH_INTERVAL_S,
            events=str(reported.get("events") or "change"),
            model_name=str(model.get("name")) if isinstance(model, dict) and model.get("name") else None,
        )

    def _refresh_discovery(self, *, force: bool) -> None:
        """Publish the discovery configs (retained) when asked to or when what they describe changed;
        configs published before (also by an earlier run) and no longer wanted get an empty retained
        message, which deletes the entity in Home Assistant."""
        if not self.settings.homeassistant:
            return
        model = self._discovery_model()
        with self._ha_lock:
            if not force and (self._ha_model is None or model == self._ha_model):
                return  # before the first connect, or nothing changed
            self._ha_model = model
            configs = homeassistant_discovery(self.device_id, self.root, model)
            wanted = {topic for topic, _ in configs}
            previous = self._ha_topics if self._ha_topics is not None else self._read_ha_topics()
            for topic in sorted(previous - wanted):
                self.sender.queue_direct(Direct(topic, b"", True))
            for topic, config in configs:
                self.sender.queue_direct(Direct(topic, encode(config), True))
            self._ha_topics = wanted
            if wanted != previous:
                self._write_ha_topics(wanted)

    def _ha_topics_path(self) -> Path | None:
        return self.state_dir / HA_TOPICS_FILE if self.state_dir is not None else None

    def _read_ha_topics(self) -> set[str]:
        path = self._ha_topics_path()
        prefix = "homeassistant/"
        try:
            data = json.loads(path.read_bytes()) if path is not None else []
        except (OSError, ValueError):
            return set()
        if not isinstance(data, list):
            return set()
        # only configs of this device: a damaged file must not make us delete anything else
        return {t for t in data if isinstance(t, str) and t.startswith(prefix) and f"/{self.device_id}/" in t
                and t.count("/") == 4 and not any(c in t for c in "+#")}

    def _write_ha_topics(self, topics: set[str]) -> None:
        path = self._ha_topics_path()
        if path is None:
            return
        try:
            atomic_write(path, json.dumps(sorted(topics)).encode())
        except OSError as exc:
            log.warning("cannot record the Home Assistant discovery topics in %s: %s", path, exc.strerror or exc)

    def _on_message(self, message: InboundMessage) -> None:
        """What arrives on the subscriptions: our own status is checked for another agent's birth,
        the rest handed to the attached inbox (it only enqueues)."""
        if message.topic == self._status_topic:
            self._check_status(message.payload)
            return
        if self.inbox is not None:
            self.inbox.offer(message)

    def _check_status(self, payload: bytes) -> None:
        """A birth (``online``) of another agent session on our own status topic, made after this
        agent started and found after a reconnect: another agent connected with our device id.
        Anything else is ignored: our own birth, the will, a birth of an earlier run of this device
        (on the first connect it may look newer than our start: a board without a real-time clock
        boots with an old time until NTP sets it)."""
        if len(payload) > MAX_STATUS_BYTES or self.link.stats.connects < 2:
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("state") != "online":
            return
        session, ts_ms = body.get("session"), body.get("ts_ms")
        if not isinstance(session, str) or session == self.envelope.session or len(session) > 64:
            return
        if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) and ts_ms >= self._started_ms:
            self.link.duplicates.foreign_birth(session)


def create_mqtt_publisher(**options: Any) -> Publisher:
    return MqttPublisher(**options)


register_publisher("mqtt", create_mqtt_publisher)
