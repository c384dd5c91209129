"""Test driver: the MQTT publisher in its own process, publishing results at a rate.

Stands in for ``edge-agent run --broker`` so tests can ``kill -9`` a real process.
Prints one JSON line per published result (``{"seq": n}``) and ``{"ready": true}``
once started; on SIGTERM it stops cleanly (flush, ``offline``).

    python -m tests.mqtt_driver --broker mqtt://127.0.0.1:PORT --device-id dev1 \
        --state-dir DIR --rate 20 --count 200 [--then-wait]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.envelope import EnvelopeFactory
from edge_agent.publishers import create_publisher


class FakeControl:
    def __init__(self) -> None:
        self.config: dict[str, Any] = {"threshold": 0.5}

    def status_info(self) -> dict[str, Any]:
        return {"model": {"name": "digits", "version": "1.0", "sha256": "ab" * 32}, "config_version": 1}

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        from edge_agent.errors import ConfigError

        for key, value in changes.items():
            if key != "threshold" or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"invalid setting {key}={value!r}")
        self.config.update(changes)
        return dict(self.config)

    def reload(self) -> None:
        pass

    def snapshot_jpeg(self, max_bytes: int) -> bytes | None:
        return b"\xff\xd8\xff\xe0fakejpeg\xff\xd9"

    def health_extra(self) -> dict[str, Any]:
        return {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--count", type=int, default=0, help="0 = until killed")
    parser.add_argument("--keepalive", type=int, default=2)
    parser.add_argument("--will-delay", type=int, default=1)
    parser.add_argument("--health-every", type=int, default=0, help="a health message every N results")
    parser.add_argument("--then-wait", action="store_true", help="after --count, stay alive until killed")
    parser.add_argument("--command-rate", type=float, default=5.0)
    parser.add_argument("--protocol", default="5", choices=["5", "3.1.1"])
    parser.add_argument("--ca-file")
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    args = parser.parse_args()

    envelope = EnvelopeFactory(args.device_id, args.state_dir)
    control = FakeControl()
    publisher = create_publisher(
        "mqtt",
        config={"broker": args.broker, "keepalive": args.keepalive, "will_delay": args.will_delay,
                "reconnect_min_s": 1, "reconnect_max_s": 2, "ca_file": args.ca_file, "protocol": args.protocol,
                "cert_file": args.cert_file, "key_file": args.key_file},
        envelope=envelope,
        control=control,
        state_dir=args.state_dir,
        command_rate=args.command_rate,
        command_burst=max(20.0, args.command_rate),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    publisher.start(control)
    print(json.dumps({"ready": True}), flush=True)
    n = 0
    next_t = time.monotonic()
    while not stop.is_set() and (args.count == 0 or n < args.count):
        body = envelope.wrap({"n": n, "classes": [{"label": "7", "score": 0.9}]})
        publisher.publish("evt/classification", body)
        print(json.dumps({"seq": body["seq"]}), flush=True)
        n += 1
        if args.health_every and n % args.health_every == 0:
            publisher.publish("health", envelope.wrap({"fps_inferred": args.rate, "cpu_temp_c": 48.5,
                                                       "latency_ms": {"total": {"p95": 12.5}},
                                                       "outbox": publisher.stats()["outbox"]}))
        next_t += 1.0 / args.rate
        stop.wait(max(0.0, next_t - time.monotonic()))
    print(json.dumps({"done": n}), flush=True)
    if args.then_wait:
        stop.wait()
    publisher.stop(timeout=5.0)
    print(json.dumps({"stopped": True, "stats": publisher.stats()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
