"""An in-process OTA model host for tests/integration/test_ota.py: real model store, real LiteRT
inference.

:class:`InferenceHost` runs the store's active model in an inference thread
(like the agent's pipeline, with inputs shaped for the model it started with,
as a camera configured for it would deliver) and implements
:class:`edge_agent.control.ModelHost`: ``reload_model`` reports the bundle identity
(``manifest_sha256``) of the bundle it actually loaded, as the agent does.
:class:`StuckHost` is one whose reload silently keeps the old model. The MQTT
end-to-end tests (tests/integration/test_ota_mqtt.py) drive the real
``edge-agent run`` instead.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edge_agent.control import ProbeSample
from edge_agent.errors import EdgeError
from edge_agent.model.bundle import read_bundle
from edge_agent.model.loader import bundle_identity
from edge_agent.runtimes import Runtime, create_runtime
from edge_agent.store import layout as store_layout


class InferenceHost:
    def __init__(self, state_dir: Path, bundle_key: Path | None, period_s: float = 0.005) -> None:
        self.state_dir = state_dir
        self.bundle_key = bundle_key
        self.fixed_model: Path | None = None  # runs the store's model
        self.period_s = period_s
        self.inferences = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.reloads = 0
        self.max_gap_s = 0.0  # longest pause between two inferences around a swap
        self._runtime, self.info = self._load()
        spec = self._runtime.inputs[0]
        self._input = np.zeros(spec.shape, dtype=np.dtype(spec.dtype))
        self._stop = threading.Event()
        self._swap_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    def _load(self) -> tuple[Runtime, dict[str, str]]:
        """The store's active model, verified: its runtime and what the agent's reload reports
        (:meth:`edge_agent.model.loader.LoadedModel.info`: weights sha256 and bundle identity)."""
        model = store_layout.active_model(self.state_dir)
        if model is None:
            raise EdgeError("no model installed")
        bundle = read_bundle(model.bundle_path, self.bundle_key)
        info = {"name": bundle.manifest.name, "version": bundle.manifest.version,
                "sha256": bundle.manifest.model.sha256, "manifest_sha256": bundle_identity(bundle.manifest_bytes)}
        return create_runtime("litert", bundle.model_bytes), info

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
        runtime, info = self._load()  # load fully, then swap one reference between two inferences
        self._swap_at = time.perf_counter()
        self._runtime, self.info = runtime, info
        self.reloads += 1
        return dict(info)

    @property
    def identity(self) -> str:
        """The bundle identity (``manifest_sha256``) of the model running now."""
        return self.info["manifest_sha256"]

    def probe(self) -> ProbeSample:
        lat = self.latencies
        p95 = float(np.percentile(lat, 95)) if lat else None
        return ProbeSample(self.inferences, self.errors, p95)


class StuckHost(InferenceHost):
    """A host whose reload answers without swapping: it keeps running (and reporting) the model
    it started with, like an agent that reloaded some other file than the store's ``current``."""

    def reload_model(self) -> dict[str, str]:
        self.reloads += 1
        return dict(self.info)
