"""MQTT delivery figures: outbox throughput, drain time after an outage, RSS during an outage.

- Throughput: results published as fast as possible through :class:`MqttPublisher`
  (SQLite outbox, QoS 1, window of 10 in flight) to a local Mosquitto, until the
  broker acknowledged all of them; against bare QoS 1 publishing through the same
  client wrapper with the same window (the ratio is the outbox's cost).
- Drain: 10,000 results queued while the broker is down, then the broker started;
  time until the outbox is empty.
- RSS: an agent-like child process publishing 50 results/s while the broker is
  down for 60 s (``EDGE_BENCH_OUTAGE_S`` to change); RSS sampled every second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import BenchResult
from edge_agent.envelope import EnvelopeFactory
from edge_agent.mqtt import MqttLink, MqttSettings
from edge_agent.publishers.mqtt import MqttPublisher

N_THROUGHPUT = 5000
N_DRAIN = 10_000
WINDOW = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Broker:
    def __init__(self, work: Path) -> None:
        self.port = _free_port()
        self.conf = work / "mosquitto.conf"
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {user}\n"
                             "set_tcp_nodelay true\nmax_queued_messages 100000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _publisher(url: str, state: Path) -> MqttPublisher:
    return MqttPublisher({"broker": url, "keepalive": 10, "reconnect_min_s": 1, "reconnect_max_s": 1,
                          "max_inflight": WINDOW}, envelope=EnvelopeFactory("bench", state), state_dir=state)


def _wait_delivered(pub: MqttPublisher, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while pub.outbox.counters.delivered < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {pub.outbox.counters.delivered} of {n} delivered")
        time.sleep(0.002)


def _body(i: int) -> dict[str, Any]:
    return {"frame": i, "classes": [{"label": "7", "score": 0.93}, {"label": "1", "score": 0.04}],
            "latency_ms": 3.2, "model_sha256": "ab" * 32}


def outbox_throughput(broker: _Broker, work: Path) -> dict[str, float]:
    pub = _publisher(broker.url, work / "tp")
    pub.start()
    assert pub.link.wait_connected(10)
    t0 = time.perf_counter()
    for i in range(N_THROUGHPUT):
        pub.publish("evt/classification", _body(i))
    queued_s = time.perf_counter() - t0
    _wait_delivered(pub, N_THROUGHPUT)
    total_s = time.perf_counter() - t0
    pub.stop(2)

    # Baseline: the same wrapper, QoS 1, same window, no outbox.
    link = MqttLink(MqttSettings(broker=broker.url, max_inflight=WINDOW), "bench-raw", max_queued=WINDOW + 32)
    free = threading.Semaphore(WINDOW)  # released by each PUBACK
    link.callbacks.on_published = lambda mid, ok, reason: free.release()
    link.start()
    assert link.wait_connected(10)
    env = EnvelopeFactory("bench-raw", None)
    t1 = time.perf_counter()
    for i in range(N_THROUGHPUT):
        free.acquire()
        payload = json.dumps(env.wrap(_body(i)), separators=(",", ":")).encode()
        link.publish("edge/v1/bench-raw/evt/classification", payload)
    for _ in range(WINDOW):
        free.acquire(timeout=10)
    raw_s = time.perf_counter() - t1
    link.stop()
    return {
        "outbox_msgs_per_s": round(N_THROUGHPUT / total_s, 0),
        "enqueue_msgs_per_s": round(N_THROUGHPUT / queued_s, 0),
        "raw_qos1_msgs_per_s": round(N_THROUGHPUT / raw_s, 0),
        "outbox_over_raw": round((N_THROUGHPUT / total_s) / (N_THROUGHPUT / raw_s), 2),
    }


def drain_time(broker: _Broker, work: Path) -> dict[str, float]:
    broker.stop()
    pub = _publisher(broker.url, work / "drain")
    pub.start()
    t0 = time.perf_counter()
    for i in range(N_DRAIN):
        pub.publish("evt/classification", _body(i))
    enqueue_s = time.perf_counter() - t0
    db = work / "drain" / "outbox.db"
    size_mb = sum(p.stat().st_size for p in db.parent.glob("outbox.db*")) / 1e6
    broker.start()
    t1 = time.perf_counter()
    _wait_delivered(pub, N_DRAIN)
    drain_s = time.perf_counter() - t1  # includes the reconnect delay (≤ 1 s)
    pub.stop(2)
    return {"drain_10k_s": round(drain_s, 2), "enqueue_10k_s": round(enqueue_s, 2), "outbox_mb_10k": round(size_mb, 1)}


def _child(url: str, state: str, rate: float) -> None:
    pub = _publisher(url, Path(state))
    pub.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    i = 0
    next_t = time.monotonic()
    while not stop.is_set():
        pub.publish("evt/classification", _body(i))
        i += 1
        next_t += 1.0 / rate
        stop.wait(max(0.0, next_t - time.monotonic()))
    pub.stop(1)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def outage_rss(broker: _Broker, work: Path) -> dict[str, Any]:
    outage_s = float(os.environ.get("EDGE_BENCH_OUTAGE_S", "60"))
    broker.stop()
    proc = subprocess.Popen([sys.executable, "-m", "bench.mqtt_outbox", "--child", broker.url,
                             str(work / "rss"), "50"])
    time.sleep(3.0)  # imports done, steady state
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < outage_s:
        samples.append(_rss_mb(proc.pid))
        time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    first = sum(samples[:5]) / 5
    last = sum(samples[-5:]) / 5
    return {"outage_s": outage_s, "rss_start_mb": round(first, 1), "rss_end_mb": round(last, 1),
            "rss_growth_mb": round(last - first, 1), "rss_max_mb": round(max(samples), 1)}


def main() -> BenchResult:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = _Broker(work)
        broker.start()
        try:
            figures = outbox_throughput(broker, work)
            figures.update(drain_time(broker, work))
            figures.update(outage_rss(broker, work))
        finally:
            broker.stop()
    f = figures
    markdown = f"""
Local Mosquitto 2 on loopback, QoS 1, {WINDOW} messages in flight, one ~300-byte result each.

| figure | value |
|---|---|
| results/s through the SQLite outbox, enqueue → broker PUBACK → row deleted | {f['outbox_msgs_per_s']:.0f} |
| bare QoS 1 publishing, same client and window, no outbox | {f['raw_qos1_msgs_per_s']:.0f} |
| outbox ÷ bare | {f['outbox_over_raw']} |
| enqueue rate into the outbox (caller side) | {f['enqueue_msgs_per_s']:.0f}/s |
| time to drain 10,000 results queued during an outage (from broker start) | {f['drain_10k_s']} s |
| outbox size on disk for 10,000 results | {f['outbox_mb_10k']} MB |
| agent-like process RSS during a {f['outage_s']:.0f} s outage at 50 results/s: start → end (max) | \
{f['rss_start_mb']} → {f['rss_end_mb']} MB ({f['rss_max_mb']} MB) |

Queued messages live in SQLite, not in memory, so RSS stays flat while the broker is away
(growth {f['rss_growth_mb']} MB over the outage).
"""
    result = BenchResult("mqtt_outbox", "MQTT delivery through the durable outbox", figures, markdown,
                         targets={"rss": "flat during a 60 s outage at 50 results/s"})
    result.save()
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        print(main().markdown)
