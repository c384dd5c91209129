"""``edge-fleet exporter`` and ``edge-fleet simulate`` against a real Mosquitto, scraped over HTTP.

Exporters run in this process (with an injected clock, so the settle window and staleness are
stepped, never waited for) or as the real CLI in a child process; ``simulate`` always runs as
the real CLI. Every wait is for an event, bounded only to turn a hang into a failure.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.exporter import Exporter
from edge_agent.messaging.link import MqttLink, MqttSettings
from tests.integration.mqtt_helpers import fleet_cli, fleet_cli_bg, wait_until

pytestmark = pytest.mark.integration

HANG = 120.0


class StepClock:
    """Wall time plus an offset the test moves; frozen when ``frozen`` is set."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.offset


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def per_device(samples: Samples, name: str, prefix: str) -> dict[str, float]:
    return {dict(labels)["device_id"]: value for (n, labels), value in samples.items()
            if n == name and dict(labels).get("device_id", "").startswith(prefix)}


def fleet_kind(samples: Samples, kind: str) -> float:
    return samples.get(("edge_fleet_messages_total", (("kind", kind),)), 0.0)


@pytest.fixture
def exporters(mqtt_broker_fn: Any) -> Iterator[Callable[..., tuple[Exporter, int]]]:
    made: list[tuple[Exporter, Any]] = []

    def make(**kw: Any) -> tuple[Exporter, int]:
        exporter = Exporter(MqttSettings(broker=mqtt_broker_fn.url, keepalive=10), **kw)
        server, _ = exporter.serve("127.0.0.1", 0)
        made.append((exporter, server))
        exporter.start()
        assert exporter.subscribed.wait(HANG), "exporter never subscribed"
        return exporter, int(server.server_port)

    yield make
    for exporter, server in made:
        exporter.stop()
        server.shutdown()


def simulate(url: str, *args: str) -> dict[str, Any]:
    out = fleet_cli("simulate", "--broker", url, *args, timeout=HANG)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["refused"] == 0 and report["acked"] == sum(report["published"].values())
    return report


def serving_port(proc: Any) -> int:
    """The port from the CLI exporter's ``serving http://host:port/metrics`` line."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stderr.readline()), daemon=True)
    reader.start()
    reader.join(HANG)
    found = re.search(r"serving http://[^:]+:(\d+)/metrics", line[0] if line else "")
    assert found, f"no serving line: {line}"
    return int(found.group(1))


def test_one_exporter_counts_every_message_of_a_simulated_fleet(mqtt_broker_fn, exporters, unique_id: str) -> None:
    clock = StepClock()
    exporter, port = exporters(clock=clock)
    cli = fleet_cli_bg("exporter", "--broker", mqtt_broker_fn.url, "--listen", "127.0.0.1:0")
    try:
        cli_port = serving_port(cli)
        prefix = f"{unique_id}-"
        report = simulate(mqtt_broker_fn.url, "--devices", "50", "--rate", "2", "--duration", "4", "--prefix", prefix,
                          "--duplicate-every", "3", "--leave-online")
        health, status = report["published"]["health"], report["published"]["status"]
        assert status == 50 and health > 50 and report["duplicated"] > 0
        for p in (port, cli_port):
            assert wait_until(lambda p=p: fleet_kind(scrape(p), "health") == health, HANG), scrape(p)
        for p in (port, cli_port):
            samples = scrape(p)
            assert fleet_kind(samples, "status") == status
            assert sum(per_device(samples, "edge_device_messages_total", prefix).values()) == health + status
            assert len(per_device(samples, "edge_device_messages_total", prefix)) == 50
            assert sum(per_device(samples, "edge_device_duplicates_total", prefix).values()) == report["duplicated"]
            assert set(per_device(samples, "edge_device_seq_gaps_total", prefix).values()) == {0.0}
            assert set(per_device(samples, "edge_device_seq_missing", prefix).values()) == {0.0}
            assert samples[("edge_exporter_devices", ())] == 50
            assert set(per_device(samples, "edge_device_health_interval_seconds", prefix).values()) == {0.5}
        # Every device up at the time the last health arrived; stale 2.5 intervals later.
        with exporter.state.lock:
            clock.frozen = max(v.last_health or 0.0 for v in exporter.state.devices.values())
        samples = scrape(port)
        assert set(per_device(samples, "edge_device_up", prefix).values()) == {1.0}
        assert set(per_device(samples, "edge_device_fps_inferred", prefix).values()) >= {10.0}
        info = [dict(k[1]) for k in samples if k[0] == "edge_device_info"]
        assert len(info) == 50 and {i["model"] for i in info} == {"sim"}
        clock.frozen += 2.5 * 0.5 + 1.0
        samples = scrape(port)
        assert set(per_device(samples, "edge_device_up", prefix).values()) == {0.0}
        assert set(per_device(samples, "edge_device_stale", prefix).values()) == {1.0}
    finally:
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(HANG) == 0, cli.stderr.read() if cli.stderr else ""


def test_share_group_splits_the_load_without_false_gaps(mqtt_broker_fn, exporters, unique_id: str) -> None:
    clock = StepClock()
    clock.frozen = t0 = time.time()  # nothing settles until the test moves the clock
    a, port_a = exporters(clock=clock, share_group=unique_id, settle_s=10.0, digest_s=0.5, member="a")
    b, port_b = exporters(clock=clock, share_group=unique_id, settle_s=10.0, digest_s=0.5, member="b")
    prefix = f"{unique_id}-"
    report = simulate(mqtt_broker_fn.url, "--devices", "50", "--rate", "2", "--duration", "4", "--prefix", prefix,
                      "--duplicate-every", "3", "--drop-every", "4", "--leave-online")
    health, status, dropped = report["published"]["health"], report["published"]["status"], report["dropped_seqs"]
    assert dropped > 0

    def health_sum() -> float:
        return fleet_kind(scrape(port_a), "health") + fleet_kind(scrape(port_b), "health")

    assert wait_until(lambda: health_sum() == health, HANG), (health_sum(), health)
    # The broker dealt the health between the two; each saw every status.
    got = [fleet_kind(scrape(p), "health") for p in (port_a, port_b)]
    assert all(n > 0 for n in got), got
    assert [fleet_kind(scrape(p), "status") for p in (port_a, port_b)] == [status, status]
    # Two digests from each after everything arrived: both views are the union now.
    marks = (a.digests_received, b.digests_received)
    assert wait_until(lambda: a.digests_received >= marks[0] + 2 and b.digests_received >= marks[1] + 2, HANG)
    for p in (port_a, port_b):
        samples = scrape(p)
        assert sum(per_device(samples, "edge_device_seq_missing", prefix).values()) == dropped
        assert set(per_device(samples, "edge_device_seq_gaps_total", prefix).values()) == {0.0}
        assert sum(per_device(samples, "edge_device_duplicates_total", prefix).values()) == report["duplicated"]
        assert samples[("edge_exporter_peers", ())] == 2
    # Past the settle window only the seqs nobody received are gaps, the same at both members.
    clock.frozen = t0 + 11.0
    for exporter in (a, b):
        exporter.state.settle()
    for p in (port_a, port_b):
        samples = scrape(p)
        assert sum(per_device(samples, "edge_device_seq_gaps_total", prefix).values()) == dropped
        assert sum(per_device(samples, "edge_device_seq_missing", prefix).values()) == 0
    messages = sum(sum(per_device(scrape(p), "edge_device_messages_total", prefix).values()) for p in (port_a, port_b))
    assert messages == health + 2 * status  # status reaches both members
    for p in (port_a, port_b):
        assert set(per_device(scrape(p), "edge_device_stale", prefix).values()) == {1.0}
    clock.frozen = t0  # when every health arrived: up at both members
    for p in (port_a, port_b):
        assert set(per_device(scrape(p), "edge_device_up", prefix).values()) == {1.0}


def test_share_group_with_the_shipped_acl(tls_broker, pki, unique_id: str) -> None:
    """Over TLS with the shipped ACL, as the ``fleet`` identity: the shared subscriptions and the
    digest topic are allowed, the members hear each other, a device's health reaches one of them."""
    settings = pki.client(pki.fleet, tls_broker.url, keepalive=10)
    made = []
    try:
        for member in ("a", "b"):
            exporter = Exporter(settings, share_group=unique_id, digest_s=0.5, settle_s=5.0, member=member)
            made.append(exporter)
            exporter.start()
            assert exporter.subscribed.wait(HANG), "exporter never subscribed"
            assert exporter.suback_codes and max(exporter.suback_codes) < 0x80, exporter.suback_codes
        assert wait_until(lambda: all(e.peer_count() == 2 for e in made), HANG), [e.peer_count() for e in made]
        device = MqttLink(pki.client(pki.dev_a, tls_broker.url), f"dev-a-{unique_id}")
        device.start()
        try:
            assert device.wait_connected(HANG)
            body = {"schema": "edge/v1", "device_id": "dev-a", "boot_id": "b", "session": unique_id, "seq": 1,
                    "ts_ms": 1, "replayed": False, "health_interval_s": 1.0}
            device.publish("edge/v1/dev-a/health", json.dumps(body).encode(), qos=1)
            assert wait_until(lambda: sum(e.state.kind_counts["health"] for e in made) == 1, HANG)
        finally:
            device.stop()
        assert all(e.digests_refused == 0 for e in made)
    finally:
        for exporter in made:
            exporter.stop()
