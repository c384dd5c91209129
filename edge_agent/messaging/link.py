"""One broker connection for the agent, the fleet tools and the tests (settings: :mod:`.settings`).

:class:`MqttLink` owns one paho client (built and adapted by :mod:`.paho_client`, the one
module that imports paho) running its own network thread (``connect_async`` +
``loop_start``), so the agent starts and infers while the broker is down. It

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
- notices another client connecting with the same client id (:mod:`.duplicate`): logs
  ``duplicate_device_id`` as an error, counts it and reconnects only after a long jittered wait;
- never lets a callback raise into paho: every callback is wrapped and logs.

Callers see plain values (:class:`InboundMessage`, mids, booleans), never paho objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.messaging import paho_client
from edge_agent.messaging.duplicate import DuplicateGuard
from edge_agent.messaging.paho_client import InboundMessage, PahoCallbacks, Will
from edge_agent.messaging.settings import BrokerAddress, MqttError, MqttSettings, parse_broker_url, read_password
from edge_agent.util.backoff import Backoff

log = logging.getLogger(__name__)

# Conservative bound on a PUBLISH packet's bytes besides payload and topic: fixed header
# (1 + up to 4 length bytes), topic length (2), packet id (2), MQTT 5 property length and
# small properties. Response topic / correlation data are added explicitly.
PACKET_OVERHEAD = 64


def packet_size(topic: str, payload_size: int, response_topic: str | None, correlation_data: bytes | None) -> int:
    """Upper bound on the bytes of a PUBLISH packet with this topic, payload and properties."""
    size = payload_size + len(topic.encode()) + PACKET_OVERHEAD
    if response_topic:
        size += len(response_topic.encode()) + 3
    if correlation_data:
        size += len(correlation_data) + 3
    return size


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
        self._clean_first = clean_first
        self.settings = settings
        self.client_id = client_id
        self.address = parse_broker_url(settings.broker)
        self.v5 = settings.protocol == "5"
        self.callbacks = _Callbacks()
        self.stats = LinkStats()
        self._subscriptions = list(subscriptions)
        self._sub_options = paho_client.subscription_options(self.v5 and retain_as_published)
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self.duplicates = DuplicateGuard(client_id, settings.duplicate_backoff_s)
        self._broker_max_packet: int | None = None
        self._started = False
        self._stopping = False
        self._session_expiry = session_expiry_s if session_expiry_s is not None else settings.will_delay
        self._client = paho_client.build_client(settings, client_id, self.address, will, max_queued)
        PahoCallbacks(self._client, self, v5=self.v5)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; never raises on network failure."""
        if self._started:
            return
        self._started = True
        paho_client.connect_in_background(
            self._client, self.address, keepalive=self.settings.keepalive, v5=self.v5,
            session_expiry=self._session_expiry, clean_first=self._clean_first,
        )

    def stop(self, send_will: bool = False) -> None:
        """Disconnect and stop the network thread.

        A clean disconnect suppresses the will; with ``send_will`` (MQTT 5 reason code
        0x04) the broker still publishes it, e.g. when our own ``offline`` did not get through.
        """
        if not self._started:
            return
        self._stopping = True
        paho_client.disconnect(self._client, v5=self.v5, send_will=send_will)
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
        return self._started and paho_client.network_thread_alive(self._client)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def add_subscription(self, topic_filter: str) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        with self._lock:
            if topic_filter not in self._subscriptions:
                self._subscriptions.append(topic_filter)
        if self.connected:
            paho_client.subscribe(self._client, [topic_filter], self._sub_options)

    def subscribe_now(self, topic_filter: str, qos: int = 1) -> int | None:
        """Subscribe once (not restored after reconnect); returns the mid."""
        return paho_client.subscribe_once(self._client, topic_filter, qos)

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
        return packet_size(topic, payload_size, response_topic, correlation_data) <= self.packet_limit

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
        return paho_client.publish(self._client, topic, payload, qos=qos, retain=retain, v5=self.v5,
                                   response_topic=response_topic, correlation_data=correlation_data)

    # ---- events from paho's thread (via PahoCallbacks, which guards each one) -----------
    def handle_connect(self, refusal: str | None, broker_max_packet: int | None) -> None:
        if refusal is not None:
            # A refused connection is never treated as connected.
            self._connected.clear()
            self.stats.refused += 1
            self.stats.last_refusal = refusal
            log.warning("broker %s:%s refused the connection: %s", self.address.host, self.address.port, refusal)
            self._schedule_backoff()
            return
        first = self.stats.connects == 0
        self.stats.connects += 1
        if not first:
            self.stats.reconnects += 1
        self._backoff.reset()
        self._broker_max_packet = broker_max_packet
        paho_client.set_reconnect_delay(self._client, self.settings.reconnect_min_s)
        with self._lock:
            topics = list(self._subscriptions)
        if topics:
            paho_client.subscribe(self._client, topics, self._sub_options)
        self.duplicates.connected()
        self._connected.set()
        log.info("connected to %s:%s as %s", self.address.host, self.address.port, self.client_id)
        if self.callbacks.on_connected:
            self.callbacks.on_connected()

    def handle_connect_fail(self) -> None:
        self._connected.clear()
        log.debug("connection to %s:%s failed", self.address.host, self.address.port)
        self._schedule_backoff()

    def handle_disconnect(self, reason: str, code: int | None = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping:
            self.stats.disconnects += 1
            log.warning("disconnected from broker: %s", reason)
        delay = self.duplicates.disconnected(code, by_us=self._stopping) if was else None
        if delay is not None:
            paho_client.set_reconnect_delay(self._client, delay)
        else:
            self._schedule_backoff()
        if self.callbacks.on_disconnected:
            self.callbacks.on_disconnected(reason)

    def _schedule_backoff(self) -> None:
        """Decorrelated jitter (see :func:`edge_agent.util.backoff.jittered_delay`), as a float."""
        paho_client.set_reconnect_delay(self._client, self._backoff.next_delay())

    def handle_message(self, message: InboundMessage) -> None:
        if self.callbacks.on_message:
            self.callbacks.on_message(message)

    def handle_publish(self, mid: int, ok: bool, reason: str) -> None:
        if self.callbacks.on_published:
            self.callbacks.on_published(mid, ok, reason)

    def handle_subscribe(self, mid: int, codes: list[int]) -> None:
        bad = [c for c in codes if c >= 0x80]
        if bad:
            log.warning("broker refused subscription (mid %s): reason codes %s", mid, bad)
        if self.callbacks.on_subscribed:
            self.callbacks.on_subscribed(mid, codes)

    def handle_callback_error(self) -> None:
        self.stats.callback_errors += 1


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
