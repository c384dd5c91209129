"""Small signed bundles of a real TFLite model, built in-process in milliseconds (no TensorFlow).

For fast model-store and OTA unit tests (and the mutation run, which repeats them for every
mutant): the model is :func:`tests.tflite_builders.colours_model`, its golden vectors come
from the real interpreter, and the bundle is written by the real ``edge_agent.model.bundle`` code.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.model.bundle import LABELS, REPORT, write_bundle
from edge_agent.model.manifest import GoldenVector, ImagePreprocess, Manifest, ModelInfo, TensorSpec
from edge_agent.runtimes import create_runtime
from tests.tflite_builders import colours_model

T = TypeVar("T")


def make_bundle(
    path: Path,
    *,
    name: str = "colours",
    version: str = "1.0",
    size: int = 16,
    sign_key: Ed25519PrivateKey | None = None,
    latency_budget_ms: float = 0.0,
    wrong_golden: bool = False,
    labels: tuple[str, str, str] = ("red", "green", "blue"),
) -> Path:
    """A classifier bundle ``[1, size, size, 3]`` → 3 colours; ``wrong_golden`` fails its smoke test."""
    model = colours_model(size=size)
    runtime = create_runtime("litert", model)
    in_spec, out_spec = runtime.inputs[0], runtime.outputs[0]
    rng = np.random.default_rng(size)
    golden = []
    for _ in range(2):
        x = rng.random(in_spec.shape, dtype=np.float32)
        y = runtime.infer(x)[0]
        if wrong_golden:
            y = y[:, ::-1].copy()
        golden.append(GoldenVector(input_b64=GoldenVector.encode(x), expected_b64=GoldenVector.encode(y),
                                   expected_top1=int(np.argmax(y)), atol=1e-4))
    runtime.close()
    manifest = Manifest(
        name=name, version=version, task="classify", model=ModelInfo(sha256="0" * 64, size_bytes=0),
        inputs=[in_spec.model_copy(update={"layout": "NHWC"})], outputs=[TensorSpec(**out_spec.model_dump())],
        preprocess=ImagePreprocess(width=size, height=size, channels=3, color="rgb", std=[255.0]),
        golden=golden, latency_budget_ms=latency_budget_ms,
    )
    write_bundle(path, manifest, model, {LABELS: "".join(f"{label}\n" for label in labels).encode(), REPORT: b"{}"},
                 sign_key)
    return path


_SHARED: dict[str, Any] = {}


def shared(key: str, build: Callable[[Path], T]) -> T:
    """``build(directory)`` once per process, in a directory of its own kept until the process exits.

    For read-only artefacts (bundles, an installed store that tests copy) that several test modules
    or sessions would otherwise rebuild: ``make mutate`` runs every mutant in a fork of a process
    that ran the tests once, and the forks inherit what was built instead of paying for it again.
    """
    if key not in _SHARED:
        directory = Path(tempfile.mkdtemp(prefix=f"tiny-store-{key}-"))
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(directory, ignore_errors=True))
        _SHARED[key] = build(directory)
    result: T = _SHARED[key]
    return result
