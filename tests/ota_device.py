"""A device for OTA tests: real model store, real LiteRT inference, real MQTT publisher.

:class:`InferenceHost` runs the store's active model in an inference thread
(like the agent's pipeline, with inputs shaped for the model it started with,
as a camera configured for it would deliver) and implements
:class:`edge_agent.ota.ModelHost`. Run as a process it is an MQTT device
answering ``update_model``/``rollback`` through the real command layer::

    python -m tests.ota_device --broker mqtt://127.0.0.1:PORT --device-id D \
        --state-dir DIR --command-key PUB [--bundle-key PUB]
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

import numpy as np

from edge_agent import modelstore
from edge_agent.bundle import read_bundle
from edge_agent.envelope import EnvelopeFactory
from edge_agent.errors import EdgeError
from edge_agent.ota import OtaUpdater, ProbationPolicy, ProbeSample
from edge_agent.runtimes import Runtime, create_runtime


class InferenceHost:
    def __init__(self, state_dir: Path, bundle_key: Path | None, period_s: float = 0.005) -> None:
        self.state_dir = state_dir
        self.bundle_key = bundle_key
        self.period_s = period_s
        self.inferences = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.reloads = 0
        self.max_gap_s = 0.0  # longest pause between two inferences around a swap
        self._runtime: Runtime = self._load()
        spec = self._runtime.inputs[0]
        self._input = np.zeros(spec.shape, dtype=np.dtype(spec.dtype))
        self._stop = threading.Event()
        self._swap_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    def _load(self) -> Runtime:
        model = modelstore.active_model(self.state_dir)
        if model is None:
            raise EdgeError("no model installed")
        bundle = read_bundle(model.bundle_path, self.bundle_key)
        return create_runtime("litert", bundle.model_bytes)

    def start(self) -> InferenceHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.period_s):
            runtime = self._runtime
            t0 = time.perf_counter()
            try:
                runtime.infer(self._input)
            except (ValueError, RuntimeError):
                self.errors += 1
                continue
            now = time.perf_counter()
            self.latencies = [*self.latencies[-255:], (now - t0) * 1000.0]
            if self._swap_at is not None and now - self._swap_at < 2.0:
                self.max_gap_s = max(self.max_gap_s, now - last - self.period_s)
            last = now
            self.inferences += 1

    def reload_model(self) -> dict[str, str]:
        runtime = self._load()  # load fully, then swap one reference between two inferences
        self._swap_at = time.perf_counter()
        self._runtime = runtime
        self.reloads += 1
        model = modelstore.active_model(self.state_dir)
        return {"sha256": model.sha256 if model else ""}

    def probe(self) -> ProbeSample:
        lat = self.latencies
        p95 = float(np.percentile(lat, 95)) if lat else None
        return ProbeSample(self.inferences, self.errors, p95)


class DeviceControl:
    """The publisher's AgentControl, backed by an InferenceHost and an OtaUpdater."""

    def __init__(self, host: InferenceHost, policy: ProbationPolicy) -> None:
        self.host = host
        self.ota_updater = OtaUpdater(host, policy)

    def status_info(self) -> dict[str, Any]:
        model = modelstore.active_model(self.host.state_dir, deep=False)
        return {"model": model.describe() if model else None}

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        return {}

    def reload(self) -> None:
        self.host.reload_model()

    def snapshot_jpeg(self, max_bytes: int) -> bytes | None:
        return None

    def health_extra(self) -> dict[str, Any]:
        return {"inferences": self.host.inferences, "errors": self.host.errors}


def main() -> int:
    from edge_agent.publishers import create_publisher

    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--command-key", type=Path, required=True)
    parser.add_argument("--bundle-key", type=Path, default=None)
    args = parser.parse_args()

    host = InferenceHost(args.state_dir, args.bundle_key).start()
    control = DeviceControl(host, ProbationPolicy(min_samples=5))
    envelope = EnvelopeFactory(args.device_id, args.state_dir)
    publisher = create_publisher(
        "mqtt", config={"broker": args.broker, "keepalive": 5, "reconnect_min_s": 0.5,
                        "reconnect_max_s": 1},
        envelope=envelope, control=control, state_dir=args.state_dir,
        command_public_key=args.command_key,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    publisher.start(control)
    print(json.dumps({"ready": True}), flush=True)
    while not stop.wait(0.2):
        pass
    host.stop()
    publisher.stop(timeout=5.0)
    print(json.dumps({"stopped": True, "inferences": host.inferences, "errors": host.errors,
                      "max_gap_ms": round(host.max_gap_s * 1000, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
