"""One small, complete bundle (a fake model, a classify manifest, labels, a report) for the
bundle tests; the fixtures that write it live in tests/unit/conftest.py."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from edge_agent.model.bundle import LABELS, REPORT
from edge_agent.model.manifest import GoldenVector, ImagePreprocess, Manifest, ModelInfo, TensorSpec

MODEL_BYTES = b"TFL3" + bytes(range(256)) * 8


def sample_manifest() -> Manifest:
    spec_in = TensorSpec(shape=[1, 4, 4, 1], dtype="int8", scale=1.0, zero_point=-128, layout="NHWC")
    spec_out = TensorSpec(shape=[1, 3], dtype="int8", scale=1 / 256, zero_point=-128)
    golden = GoldenVector(
        input_b64=GoldenVector.encode(np.zeros((1, 4, 4, 1), np.int8)),
        expected_b64=GoldenVector.encode(np.array([[127, -128, -128]], np.int8)),
        expected_top1=0, atol=3 / 256,
    )
    return Manifest(
        name="unit", version="1", task="classify", model=ModelInfo(sha256="0" * 64, size_bytes=0),
        inputs=[spec_in], outputs=[spec_out],
        preprocess=ImagePreprocess(width=4, height=4, channels=1, color="gray"), golden=[golden],
    )


def sample_extra() -> dict[str, bytes]:
    return {LABELS: b"a\nb\nc\n", REPORT: json.dumps({"size_ratio": 0.25}).encode()}


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
