"""``edge-fleet exporter``: the fleet's MQTT traffic as Prometheus metrics (its own registry).

One exporter subscribes to ``edge/v1/+/{status,health,evt/#,ack,config/reported}``, folds
every message into a :class:`deploy.fleet_state.FleetState` and serves it through a custom
collector (metric names: ``docs/fleet.md``; every per-device metric has the label ``device_id``).

Share group (``--share-group NAME``, MQTT 5 shared subscriptions): members subscribe
``$share/NAME/edge/v1/+/health``, ``…/evt/#`` and ``…/ack``, so the broker deals those messages
among them, and ``edge/v1/+/status`` and ``…/config/reported`` *unshared*, so every member
sees the retained state. As one device's messages are dealt round robin, each member
publishes every ``--digest-s`` (QoS 1, not retained) on ``edgefleet/exporter/NAME/MEMBER`` a
digest per device: per agent session the seq window, its pending holes, the seqs declared
lost and how many messages it received, and the time of the last health it saw. Members
merge the digests they hear: a seq seen by any member is seen, so a hole is a gap only when
no member has it ``--settle-s`` after a higher seq became known; duplicates are everything
received by all members minus the distinct seqs; staleness uses the newest health any
member saw. Every member so exports the same gaps, duplicates and device states (query
them with ``max by (device_id)``); message counts are each member's own (``sum`` them).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from deploy.fleet_state import KINDS, FleetState
from edge_agent.errors import EdgeError
from edge_agent.messaging.envelope import TOPIC_ROOT
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings

log = logging.getLogger(__name__)

DIGEST_ROOT = "edgefleet/exporter"
DIGEST_CHUNK_BYTES = 96 * 1024  # below the link's 128 KiB packet cap
MAX_DIGEST_BYTES = 256 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def subscriptions(group: str | None) -> tuple[str, ...]:
    """Topic filters: the device topics (health, evt, ack shared in a group) and the digests."""
    root = f"{TOPIC_ROOT}/+"
    unshared = (f"{root}/status", f"{root}/config/reported")
    dealt = (f"{root}/health", f"{root}/evt/#", f"{root}/ack")
    if group is None:
        return unshared + dealt
    return unshared + tuple(f"$share/{group}/{t}" for t in dealt) + (f"{DIGEST_ROOT}/{group}/+",)


class Exporter:
    """Subscribes, keeps the fleet state, exchanges digests in a share group, serves metrics.

    Args:
        settings: broker connection (the ``fleet`` identity with the shipped ACL).
        share_group: MQTT 5 share group name, or None for a lone exporter.
        settle_s: how long a missing seq may stay missing before it counts as a gap.
        digest_s: how often a group member publishes its digest.
        member: this member's name in the group (a topic level; default random).
        clock: wall clock (members compare last-health times, so keep hosts in NTP sync).
        client_id: MQTT client id (default ``edge-exporter-MEMBER``).
    """

    def __init__(self, settings: MqttSettings, *, share_group: str | None = None, settle_s: float = 10.0,
                 digest_s: float = 1.0, member: str | None = None, clock: Callable[[], float] = time.time,
                 client_id: str | None = None) -> None:
        if share_group is not None and not NAME_RE.fullmatch(share_group):
            raise EdgeError("--share-group must be 1-64 letters, digits, '.', '_' or '-'")
        self.member = member or uuid.uuid4().hex[:12]
        if not NAME_RE.fullmatch(self.member):
            raise EdgeError("--member must be 1-64 letters, digits, '.', '_' or '-'")
        if share_group is not None and settle_s < 3 * digest_s:
            raise EdgeError(f"--settle-s ({settle_s:g}) must be at least 3 x --digest-s ({digest_s:g}) "
                            "in a share group")
        if share_group is not None and settings.protocol != "5":
            raise EdgeError("--share-group needs MQTT 5 (--protocol 5)")
        self.group = share_group
        self.digest_s = digest_s
        self.state = FleetState(clock=clock, settle_s=settle_s)
        self.peers: dict[str, float] = {}  # member -> when its last digest arrived
        self.digests_sent = 0
        self.digests_received = 0
        self.digests_refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link = MqttLink(settings, client_id or f"edge-exporter-{self.member}",
                             subscriptions=subscriptions(share_group), max_queued=1000)
        self.link.callbacks.on_message = self._on_message
        self.subscribed = threading.Event()  # the broker acknowledged the subscriptions
        self.suback_codes: list[int] = []  # reason codes of the last SUBACK (>= 0x80: refused)
        self.link.callbacks.on_subscribed = self._on_subscribed
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self))

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self._thread = threading.Thread(target=self._tick, name="exporter-tick", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.link.stop()

    def serve(self, host: str, port: int) -> tuple[Any, threading.Thread]:
        """Serve ``/metrics`` on host:port (0: any free port; the server's ``server_port`` tells)."""
        return start_http_server(port, addr=host, registry=self.registry)

    def peer_count(self) -> int:
        """Group members heard from recently, this one included (1 outside a group)."""
        if self.group is None:
            return 1
        horizon = self.state.clock() - max(5.0, 3 * self.digest_s)
        return 1 + sum(1 for t in list(self.peers.values()) if t >= horizon)

    def _on_subscribed(self, mid: int, codes: list[int]) -> None:
        self.suback_codes = list(codes)
        self.subscribed.set()

    # ---- messages --------------------------------------------------------------------------
    def _on_message(self, message: InboundMessage) -> None:
        if self.group is not None and message.topic.startswith(f"{DIGEST_ROOT}/"):
            self._on_digest(message)
            return
        self.state.handle(message.topic, message.payload, message.retain)

    def _on_digest(self, message: InboundMessage) -> None:
        member = message.topic.rsplit("/", 1)[-1]
        if member == self.member:
            return
        if len(message.payload) > MAX_DIGEST_BYTES or not NAME_RE.fullmatch(member):
            self.digests_refused += 1
            return
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):
            body = None
        entries = body.get("devices") if isinstance(body, dict) and body.get("v") == 1 else None
        if not isinstance(entries, list):
            self.digests_refused += 1
            log.warning("digest from %s refused: not a version 1 digest", member)
            return
        self.state.merge(member, entries)
        self.peers[member] = self.state.clock()
        self.digests_received += 1

    def _tick(self) -> None:
        """Settle holes every second; in a group, publish the digest every ``digest_s``."""
        next_digest = time.monotonic()
        step = min(1.0, self.digest_s)
        while not self._stop.wait(step):
            try:
                self.state.settle()
                if self.group is not None and time.monotonic() >= next_digest and self.link.connected:
                    next_digest = time.monotonic() + self.digest_s
                    self.publish_digest()
            except Exception:  # the tick must go on
                log.exception("exporter tick failed")

    def publish_digest(self) -> int:
        """Publish this member's digest, in chunks under the packet cap; returns how many messages."""
        topic = f"{DIGEST_ROOT}/{self.group}/{self.member}"
        sent = 0
        for chunk in _chunks(self.state.digest()):
            payload = json.dumps({"v": 1, "member": self.member, "devices": chunk}, separators=(",", ":")).encode()
            if self.link.publish(topic, payload, qos=1) is not None:
                sent += 1
        self.digests_sent += sent
        return sent


def _chunks(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Entries in lists of under DIGEST_CHUNK_BYTES; one empty list when there are none (the
    digest is also the members' heartbeat)."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        n = len(json.dumps(entry, separators=(",", ":")))
        if chunk and size + n > DIGEST_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += n + 1
    if chunk or not entries:
        yield chunk


class FleetCollector(Collector):
    """The fleet state as metric families, built at each scrape."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        state = self.exporter.state
        now = state.clock()
        d = ["device_id"]
        up = GaugeMetricFamily("edge_device_up", "1 online, 0 offline or stale", labels=d)
        stale = GaugeMetricFamily("edge_device_stale", "1 when online but no health for 2.5 x its interval", labels=d)
        info = GaugeMetricFamily("edge_device_info", "agent and model of the device (from its status)",
                                 labels=[*d, "agent_version", "model", "model_version", "model_sha256"])
        msgs = CounterMetricFamily("edge_device_messages", "messages with a seq received by this exporter", labels=d)
        gaps = CounterMetricFamily("edge_device_seq_gaps", "seq numbers declared lost (missing after the settle "
                                   "window; in a share group, from the union of all members)", labels=d)
        missing = GaugeMetricFamily("edge_device_seq_missing", "seq numbers missing now (not yet settled)", labels=d)
        dups = CounterMetricFamily("edge_device_duplicates", "messages received more than once", labels=d)
        last_seen = GaugeMetricFamily("edge_device_last_seen_timestamp_seconds", "last message (unix time)", labels=d)
        interval = GaugeMetricFamily("edge_device_health_interval_seconds", "health interval in force", labels=d)
        results = CounterMetricFamily("edge_device_results", "results received, by label", labels=[*d, "label"])
        figures: list[tuple[GaugeMetricFamily | CounterMetricFamily, str, float]] = [
            (GaugeMetricFamily("edge_device_fps_inferred", "inferences per second", labels=d), "fps", 1.0),
            (GaugeMetricFamily("edge_device_inference_p95_seconds", "invoke latency p95", labels=d),
             "inference_p95_ms", 0.001),
            (GaugeMetricFamily("edge_device_cpu_temperature_celsius", "CPU temperature", labels=d), "cpu_temp_c", 1.0),
            (GaugeMetricFamily("edge_device_throttled", "1 when a throttle/undervoltage flag is set now", labels=d),
             "throttled", 1.0),
            (GaugeMetricFamily("edge_device_duplicate_id",
                               "1 when the device reports another agent connected with its device id", labels=d),
             "duplicate_id", 1.0),
            (GaugeMetricFamily("edge_device_outbox_depth_messages", "messages waiting in the outbox", labels=d),
             "outbox_depth", 1.0),
            (CounterMetricFamily("edge_device_outbox_evicted", "outbox rows evicted", labels=d), "outbox_evicted", 1.0),
            (CounterMetricFamily("edge_device_reconnects", "MQTT reconnects", labels=d), "reconnects", 1.0),
            (GaugeMetricFamily("edge_device_memory_rss_bytes", "agent resident memory", labels=d), "rss_bytes", 1.0),
            (GaugeMetricFamily("edge_device_cpu_ratio", "CPU use 0..1", labels=d), "cpu_ratio", 1.0),
        ]
        with state.lock:
            kinds = dict(state.kind_counts)
            count = len(state.devices)
            for view in state.devices.values():
                label = [view.device_id]
                st = view.state_at(now)
                up.add_metric(label, 1.0 if st == "online" else 0.0)
                stale.add_metric(label, 1.0 if st == "stale" else 0.0)
                if view.agent_version is not None or view.model_name is not None:
                    info.add_metric([view.device_id, view.agent_version or "", view.model_name or "",
                                     view.model_version or "", view.model_sha256 or ""], 1.0)
                msgs.add_metric(label, float(view.messages))
                gaps.add_metric(label, float(view.gaps))
                missing.add_metric(label, float(view.missing))
                dups.add_metric(label, float(view.duplicates))
                seen = max([t for t in (view.last_seen, view.last_health) if t is not None], default=None)
                if seen is not None:
                    last_seen.add_metric(label, seen)
                if view.health_interval_s is not None:
                    interval.add_metric(label, view.health_interval_s)
                for name, n in view.results.items():
                    results.add_metric([view.device_id, name], float(n))
                for family, attr, scale in figures:
                    value = getattr(view, attr)
                    if value is not None:
                        family.add_metric(label, float(value) * scale)
        fleet = CounterMetricFamily("edge_fleet_messages", "messages received by this exporter, by kind",
                                    labels=["kind"])
        for kind in KINDS:
            fleet.add_metric([kind], float(kinds[kind]))
        yield from (up, stale, info, msgs, gaps, missing, dups, last_seen, interval, results)
        yield from (family for family, _, _ in figures)
        yield fleet
        yield GaugeMetricFamily("edge_exporter_devices", "devices known", value=float(count))
        yield GaugeMetricFamily("edge_exporter_peers", "share-group members heard from, this one included",
                                value=float(self.exporter.peer_count()))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgeError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(settings: MqttSettings, args: argparse.Namespace, stop: threading.Event) -> int:
    """``edge-fleet exporter``: serve until ``stop`` is set."""
    host, port = parse_listen(args.listen)
    exporter = Exporter(settings, share_group=args.share_group, settle_s=args.settle_s, digest_s=args.digest_s,
                        member=args.member, client_id=args.client_id)
    try:
        server, _ = exporter.serve(host, port)
    except OSError as exc:
        raise EdgeError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from exc
    exporter.start()
    if not exporter.subscribed.wait(30):
        log.warning("not subscribed yet (broker %s unreachable?): serving what arrives once it is", settings.broker)
    group = f", share group {args.share_group} as {exporter.member}" if args.share_group else ""
    print(f"edge-fleet exporter: serving http://{host}:{server.server_port}/metrics for {settings.broker}{group}",
          file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        exporter.stop()
        server.shutdown()
    return 0
