"""The one module that imports paho-mqtt: a small client wrapper (settings: :mod:`.settings`).

:class:`MqttLink` owns one paho client running its own network thread
(``connect_async`` + ``loop_start``), so the agent starts and infers while the
broker is down. It

- speaks MQTT 5 by default and 3.1.1 on request, with client id = device id;
- uses TLS with CA verification and hostname checking (there is deliberately no
  way to switch verification off), optional client certificates (mutual TLS) and
  username/password, the password read from a file or ``$CREDENTIALS_DIRECTORY``;
- sets a will (with an MQTT 5 will delay, so a short blip does not flap the status);
- refuses (before paho sees it) a message whose PUBLISH packet would exceed the
  size cap or the broker's MQTT 5 Maximum Packet Size from the CONNACK: paho
  ignores that property, and an oversize packet makes the broker drop the
  connection, after which paho would resend it forever;
- reconnects with jittered exponential backoff (float delays, decorrelated
  jitter, so a fleet does not reconnect in whole-second waves) and restores its subscriptions
  after every reconnect, then calls ``on_connected`` (where the birth is sent);
- treats a refused CONNACK as *not* connected;
- never lets a callback raise into paho: every callback is wrapped and logs.

Callers see plain values (:class:`InboundMessage`, mids, booleans), never paho objects.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.messaging.settings import BrokerAddress, MqttError, MqttSettings, parse_broker_url, read_password
from edge_agent.util.backoff import Backoff

log = logging.getLogger(__name__)

# Conservative bound on a PUBLISH packet's bytes besides payload and topic: fixed header
# (1 + up to 4 length bytes), topic length (2), packet id (2), MQTT 5 property length and
# small properties. Response topic / correlation data are added explicitly.
PACKET_OVERHEAD = 64


def _max_packet_size(properties: Any) -> int | None:
    value = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
    return int(value) if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class InboundMessage:
    """A received message, free of paho types."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class LinkStats:
    connects: int = 0
    reconnects: int = 0
    refused: int = 0
    disconnects: int = 0
    last_refusal: str | None = None
    callback_errors: int = 0


@dataclass
class _Callbacks:
    on_connected: Callable[[], None] | None = None
    on_disconnected: Callable[[str], None] | None = None
    on_message: Callable[[InboundMessage], None] | None = None
    on_published: Callable[[int, bool, str], None] | None = None
    on_subscribed: Callable[[int, list[int]], None] | None = None


class MqttLink:
    """One broker connection with its own network thread.

    Args:
        settings: connection settings.
        client_id: MQTT client id (the device id for agents).
        will: message the broker publishes when the link dies uncleanly.
        subscriptions: topic filters (QoS 1) subscribed after every (re)connect.
        session_expiry_s: MQTT 5 session expiry; defaults to the will delay so the
            delay is honoured (a will is sent at the latest when the session ends).
        max_queued: bound of paho's own message queue.
        retain_as_published: MQTT 5 subscription option; the agent sets it so a
            retained command is recognised (and refused) on a live subscription too.
        clean_first: start the first connection clean; False resumes a session kept by
            the broker from an earlier run (with ``session_expiry_s``). Reconnects always resume.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: Will | None = None,
        subscriptions: tuple[str, ...] = (),
        session_expiry_s: int | None = None,
        max_queued: int | None = None,
        retain_as_published: bool = False,
        clean_first: bool = True,
    ) -> None:
        settings.validate()
        self._retain_as_published = retain_as_published
        self._clean_first = clean_first
        self.settings = settings
        self.client_id = client_id
        self.address = parse_broker_url(settings.broker)
        self.v5 = settings.protocol == "5"
        self.callbacks = _Callbacks()
        self.stats = LinkStats()
        self._subscriptions = list(subscriptions)
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._broker_max_packet: int | None = None
        self._started = False
        self._stopping = False
        self._session_expiry = session_expiry_s if session_expiry_s is not None else settings.will_delay
        self._client = self._build_client(will, max_queued)

    # ---- construction -------------------------------------------------------------------
    def _build_client(self, will: Will | None, max_queued: int | None) -> paho.Client:
        s = self.settings
        protocol = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if self.v5 else True,
        )
        client.suppress_exceptions = True
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(max_queued if max_queued is not None else s.max_inflight * 4)
        if self.address.tls:
            try:
                client.tls_set(
                    ca_certs=str(s.ca_file) if s.ca_file else None,
                    certfile=str(s.cert_file) if s.cert_file else None,
                    keyfile=str(s.key_file) if s.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MqttError(f"cannot set up TLS (CA {s.ca_file}, cert {s.cert_file}): {exc}") from exc
            # Hostname checking stays on: paho's tls_insecure_set is never called.
        elif s.ca_file is not None:
            raise MqttError("a CA file was given but the broker URL is not mqtts://")
        password = read_password(s.password_file)
        if s.username is not None or password is not None:
            client.username_pw_set(s.username or "", password)
        if will is not None:
            props: Properties | None = None
            if self.v5 and s.will_delay > 0:
                props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
                props.WillDelayInterval = s.will_delay
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain, properties=props)
        self._set_paho_delay(s.reconnect_min_s, client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        return client

    def _set_paho_delay(self, delay: float, client: paho.Client | None = None) -> None:
        """Make paho wait exactly ``delay`` seconds (a float) before its next attempt.

        paho 2.x annotates the delays as int but only uses them in ``time.sleep`` and
        ``min``/``*2`` arithmetic (``Client._reconnect_wait``), so floats work; min == max
        pins the wait to our own jittered value.
        """
        value: Any = float(delay)
        (client or self._client).reconnect_delay_set(value, value)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; never raises on network failure."""
        if self._started:
            return
        self._started = True
        props: Properties | None = None
        if self.v5 and self._session_expiry > 0:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._session_expiry
        # MQTT 5: a clean start on the first connection only (or never, to resume a session
        # kept from an earlier run); every reconnect resumes the session, so messages queued
        # for us while we were away are not thrown away.
        clean: Any = paho.MQTT_CLEAN_START_FIRST_ONLY if self._clean_first or not self.v5 else False
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=self.settings.keepalive, clean_start=clean,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, send_will: bool = False) -> None:
        """Disconnect and stop the network thread.

        A clean disconnect suppresses the will; with ``send_will`` (MQTT 5 reason code
        0x04) the broker still publishes it, e.g. when our own ``offline`` did not get through.
        """
        if not self._started:
            return
        self._stopping = True
        try:
            if send_will and self.v5:
                self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            elif send_will:
                # MQTT 3.1.1 has no "disconnect with will": stop the network thread and drop
                # the TCP connection without a DISCONNECT, so the broker publishes the will.
                self._client.loop_stop()
                sock = self._client.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            else:
                self._client.disconnect()
        except (OSError, ValueError) as exc:  # pragma: no cover - defensive
            log.debug("disconnect: %s", exc)
        self._client.loop_stop()
        self._connected.clear()
        self._started = False
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def network_thread_alive(self) -> bool:
        """paho's network thread (``loop_start``) is running.

        It survives broker outages (it reconnects); it ends on ``stop()``, or when an
        exception escapes into paho, after which nothing would ever be sent or
        received again. The systemd watchdog is gated on this.
        """
        if not self._started:
            return False
        if not hasattr(self._client, "_thread"):  # a paho without it: trust our own bookkeeping
            return True
        thread: threading.Thread | None = self._client._thread  # paho 2.x: set by loop_start()
        return thread is not None and thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def add_subscription(self, topic_filter: str) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        with self._lock:
            if topic_filter not in self._subscriptions:
                self._subscriptions.append(topic_filter)
        if self.connected:
            self._client.subscribe([(topic_filter, self._sub_options())])

    def _sub_options(self) -> Any:
        """QoS 1; on MQTT 5 also "retain as published", so a retained command is
        recognisable even when it arrives on a live subscription."""
        if self.v5 and self._retain_as_published:
            return SubscribeOptions(qos=1, retainAsPublished=True)  # type: ignore[no-untyped-call]
        return 1

    # ---- publishing ---------------------------------------------------------------------
    @property
    def packet_limit(self) -> int:
        """Largest PUBLISH packet we send: the size cap, or the broker's (v5) Maximum
        Packet Size from the last CONNACK when that is smaller."""
        cap = self.settings.max_payload_bytes
        broker = self._broker_max_packet
        return min(cap, broker) if broker else cap

    def fits(self, topic: str, payload_size: int, *, response_topic: str | None = None,
             correlation_data: bytes | None = None) -> bool:
        """Whether a PUBLISH of this topic and payload size stays within :attr:`packet_limit`."""
        size = payload_size + len(topic.encode()) + PACKET_OVERHEAD
        if response_topic:
            size += len(response_topic.encode()) + 3
        if correlation_data:
            size += len(correlation_data) + 3
        return size <= self.packet_limit

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> int | None:
        """Hand one message to paho; returns its mid, or None when paho refused it (queue full).

        Callers check :meth:`fits` first: an oversize message is refused here too
        (None), so a caller that retries on None must not retry an oversize one.
        """
        if not self.fits(topic, len(payload), response_topic=response_topic, correlation_data=correlation_data):
            log.warning("publish to %s refused: packet over the %d-byte limit", topic, self.packet_limit)
            return None
        props: Properties | None = None
        if self.v5 and (response_topic or correlation_data):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as exc:
            log.warning("publish to %s refused: %s", topic, exc)
            return None
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps QoS>0 messages and sends them after reconnecting.
            return int(info.mid)
        log.debug("paho refused publish to %s: %s", topic, paho.error_string(info.rc))
        return None

    # ---- paho callbacks (each one guarded: nothing may raise into paho) ------------------
    def _guard(self, name: str, func: Callable[[], None]) -> None:
        try:
            func()
        except Exception:  # a callback must never raise into paho
            self.stats.callback_errors += 1
            log.exception("MQTT %s callback failed", name)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        def run() -> None:
            if reason_code.is_failure:
                # A refused connection is never treated as connected.
                self._connected.clear()
                self.stats.refused += 1
                self.stats.last_refusal = str(reason_code)
                log.warning("broker %s:%s refused the connection: %s", self.address.host, self.address.port,
                            reason_code)
                self._schedule_backoff()
                return
            first = self.stats.connects == 0
            self.stats.connects += 1
            if not first:
                self.stats.reconnects += 1
            self._backoff.reset()
            self._broker_max_packet = _max_packet_size(properties) if self.v5 else None
            self._set_paho_delay(self.settings.reconnect_min_s)
            with self._lock:
                topics = list(self._subscriptions)
            if topics:
                client.subscribe([(t, self._sub_options()) for t in topics])
            self._connected.set()
            log.info("connected to %s:%s as %s", self.address.host, self.address.port, self.client_id)
            if self.callbacks.on_connected:
                self.callbacks.on_connected()

        self._guard("on_connect", run)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def run() -> None:
            # paho leaves Nagle on: a small PUBLISH right after a PUBACK would then wait
            # for the peer's delayed ACK (~40 ms per message).
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self._guard("on_socket_open", run)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        def run() -> None:
            self._connected.clear()
            log.debug("connection to %s:%s failed", self.address.host, self.address.port)
            self._schedule_backoff()

        self._guard("on_connect_fail", run)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        def run() -> None:
            was = self._connected.is_set()
            self._connected.clear()
            if was and not self._stopping:
                self.stats.disconnects += 1
                log.warning("disconnected from broker: %s", reason_code)
            self._schedule_backoff()
            if self.callbacks.on_disconnected:
                self.callbacks.on_disconnected(str(reason_code))

        self._guard("on_disconnect", run)

    def _schedule_backoff(self) -> None:
        """Decorrelated jitter (see :func:`edge_agent.util.backoff.jittered_delay`), as a float."""
        self._set_paho_delay(self._backoff.next_delay())

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        def run() -> None:
            response_topic: str | None = None
            correlation: bytes | None = None
            props = getattr(message, "properties", None)
            if props is not None:
                response_topic = getattr(props, "ResponseTopic", None)
                correlation = getattr(props, "CorrelationData", None)
            inbound = InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=int(message.qos),
                retain=bool(message.retain),
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            )
            if self.callbacks.on_message:
                self.callbacks.on_message(inbound)

        self._guard("on_message", run)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        def run() -> None:
            # MQTT 5: a PUBACK reason code >= 0x80 is a failure, not a delivery.
            failed = bool(reason_code.is_failure)
            if self.callbacks.on_published:
                self.callbacks.on_published(mid, not failed, str(reason_code))

        self._guard("on_publish", run)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        def run() -> None:
            codes = [int(rc.value) for rc in reason_codes]
            bad = [c for c in codes if c >= 0x80]
            if bad:
                log.warning("broker refused subscription (mid %s): reason codes %s", mid, bad)
            if self.callbacks.on_subscribed:
                self.callbacks.on_subscribed(mid, codes)

        self._guard("on_subscribe", run)

    def subscribe_now(self, topic_filter: str, qos: int = 1) -> int | None:
        """Subscribe once (not restored after reconnect); returns the mid."""
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        return int(mid) if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None else None


__all__ = [
    "BrokerAddress",
    "InboundMessage",
    "LinkStats",
    "MqttError",
    "MqttLink",
    "MqttSettings",
    "Will",
    "parse_broker_url",
    "read_password",
]
