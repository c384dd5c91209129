"""The one module that imports paho-mqtt: builds the configured client and adapts it.

:func:`build_client` turns :class:`~.settings.MqttSettings` into a paho client (TLS, auth,
will, MQTT 5 properties); :class:`PahoCallbacks` turns paho's callbacks into plain values
for :class:`~.link.MqttLink`, guarded so that nothing ever raises into paho.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.messaging.settings import BrokerAddress, MqttError, MqttSettings, read_password

log = logging.getLogger(__name__)


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


def _max_packet_size(properties: Any) -> int | None:
    value = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
    return int(value) if isinstance(value, int) and value > 0 else None


# ---- building and driving the client -------------------------------------------------------
def build_client(
    settings: MqttSettings, client_id: str, address: BrokerAddress, will: Will | None, max_queued: int | None,
) -> paho.Client:
    """A paho client configured from ``settings``; callbacks are attached by :class:`PahoCallbacks`.

    Raises:
        MqttError: TLS cannot be set up, or a CA file was given for a plain ``mqtt://`` URL.
    """
    s = settings
    v5 = s.protocol == "5"
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if v5 else True,
    )
    client.suppress_exceptions = True
    client.max_inflight_messages_set(s.max_inflight)
    client.max_queued_messages_set(max_queued if max_queued is not None else s.max_inflight * 4)
    if address.tls:
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
        if v5 and s.will_delay > 0:
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.WillDelayInterval = s.will_delay
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain, properties=props)
    set_reconnect_delay(client, s.reconnect_min_s)
    return client


def set_reconnect_delay(client: paho.Client, delay: float) -> None:
    """Make paho wait exactly ``delay`` seconds (a float) before its next attempt.

    paho 2.x annotates the delays as int but only uses them in ``time.sleep`` and
    ``min``/``*2`` arithmetic (``Client._reconnect_wait``), so floats work; min == max
    pins the wait to our own jittered value.
    """
    value: Any = float(delay)
    client.reconnect_delay_set(value, value)


def connect_in_background(
    client: paho.Client, address: BrokerAddress, *, keepalive: int, v5: bool, session_expiry: int, clean_first: bool,
) -> None:
    """``connect_async`` + ``loop_start``: never raises on network failure."""
    props: Properties | None = None
    if v5 and session_expiry > 0:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
    # MQTT 5: a clean start on the first connection only (or never, to resume a session
    # kept from an earlier run); every reconnect resumes the session, so messages queued
    # for us while we were away are not thrown away.
    clean: Any = paho.MQTT_CLEAN_START_FIRST_ONLY if clean_first or not v5 else False
    client.connect_async(address.host, address.port, keepalive=keepalive, clean_start=clean, properties=props)
    client.loop_start()


def disconnect(client: paho.Client, *, v5: bool, send_will: bool) -> None:
    """Disconnect and stop the network thread; with ``send_will`` the broker still publishes the will."""
    try:
        if send_will and v5:
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        elif send_will:
            # MQTT 3.1.1 has no "disconnect with will": stop the network thread and drop
            # the TCP connection without a DISCONNECT, so the broker publishes the will.
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        else:
            client.disconnect()
    except (OSError, ValueError) as exc:  # pragma: no cover - defensive
        log.debug("disconnect: %s", exc)
    client.loop_stop()


def network_thread_alive(client: paho.Client) -> bool:
    """paho's network thread (started by ``loop_start``) is running."""
    if not hasattr(client, "_thread"):  # a paho without it: trust our own bookkeeping
        return True
    thread: threading.Thread | None = client._thread  # paho 2.x: set by loop_start()
    return thread is not None and thread.is_alive()


def subscription_options(retain_as_published: bool) -> Any:
    """QoS 1; with ``retain_as_published`` (MQTT 5 only) also "retain as published", so a
    retained command is recognisable even when it arrives on a live subscription."""
    if retain_as_published:
        return SubscribeOptions(qos=1, retainAsPublished=True)  # type: ignore[no-untyped-call]
    return 1


def subscribe(client: paho.Client, topic_filters: list[str], options: Any) -> None:
    client.subscribe([(t, options) for t in topic_filters])


def subscribe_once(client: paho.Client, topic_filter: str, qos: int) -> int | None:
    rc, mid = client.subscribe(topic_filter, qos=qos)
    return int(mid) if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None else None


def publish(
    client: paho.Client, topic: str, payload: bytes, *, qos: int, retain: bool, v5: bool,
    response_topic: str | None, correlation_data: bytes | None,
) -> int | None:
    """Hand one message to paho; its mid, or None when paho refused it (queue full, bad topic)."""
    props: Properties | None = None
    if v5 and (response_topic or correlation_data):
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation_data:
            props.CorrelationData = correlation_data
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
    except ValueError as exc:
        log.warning("publish to %s refused: %s", topic, exc)
        return None
    if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
        # NO_CONN: paho keeps QoS>0 messages and sends them after reconnecting.
        return int(info.mid)
    log.debug("paho refused publish to %s: %s", topic, paho.error_string(info.rc))
    return None


# ---- callbacks -----------------------------------------------------------------------------
class LinkEvents(Protocol):
    """What :class:`PahoCallbacks` reports, in plain values (implemented by ``MqttLink``)."""

    def handle_connect(self, refusal: str | None, broker_max_packet: int | None) -> None: ...
    def handle_connect_fail(self) -> None: ...
    def handle_disconnect(self, reason: str, code: int | None = None) -> None: ...
    def handle_message(self, message: InboundMessage) -> None: ...
    def handle_publish(self, mid: int, ok: bool, reason: str) -> None: ...
    def handle_subscribe(self, mid: int, codes: list[int]) -> None: ...
    def handle_callback_error(self) -> None: ...


class PahoCallbacks:
    """paho's callbacks, each translated to plain values and guarded: nothing may raise into paho."""

    def __init__(self, client: paho.Client, events: LinkEvents, *, v5: bool) -> None:
        self._events = events
        self._v5 = v5
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open

    def _guard(self, name: str, func: Callable[[], None]) -> None:
        try:
            func()
        except Exception:  # a callback must never raise into paho
            with contextlib.suppress(Exception):
                self._events.handle_callback_error()
            log.exception("MQTT %s callback failed", name)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        def run() -> None:
            refusal = str(reason_code) if reason_code.is_failure else None
            self._events.handle_connect(refusal, _max_packet_size(properties) if self._v5 else None)

        self._guard("on_connect", run)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def run() -> None:
            # paho leaves Nagle on: a small PUBLISH right after a PUBACK would then wait
            # for the peer's delayed ACK (~40 ms per message).
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self._guard("on_socket_open", run)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._guard("on_connect_fail", self._events.handle_connect_fail)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        code = getattr(reason_code, "value", None)
        self._guard("on_disconnect", lambda: self._events.handle_disconnect(
            str(reason_code), code if isinstance(code, int) else None))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        def run() -> None:
            response_topic: str | None = None
            correlation: bytes | None = None
            props = getattr(message, "properties", None)
            if props is not None:
                response_topic = getattr(props, "ResponseTopic", None)
                correlation = getattr(props, "CorrelationData", None)
            self._events.handle_message(InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=int(message.qos),
                retain=bool(message.retain),
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            ))

        self._guard("on_message", run)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        # MQTT 5: a PUBACK reason code >= 0x80 is a failure, not a delivery.
        self._guard("on_publish", lambda: self._events.handle_publish(mid, not reason_code.is_failure,
                                                                      str(reason_code)))

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        self._guard("on_subscribe", lambda: self._events.handle_subscribe(mid, [int(rc.value) for rc in reason_codes]))
