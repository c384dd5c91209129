"""Helpers for model-store, deploy and OTA tests: tiny real TFLite models and bad bundles.

Tiny models are built with TensorFlow in a child process (tests only; the agent
never imports TensorFlow) and packed with the real ``edge_agent.bundle`` code,
golden vectors computed by the real interpreter.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import (
    LABELS,
    MANIFEST,
    MODEL,
    REPORT,
    SIGNATURE,
    load_private_key,
    read_bundle,
    write_bundle,
)
from edge_agent.manifest import GoldenVector, ImagePreprocess, Manifest, ModelInfo, TensorSpec
from edge_agent.runtimes import create_runtime

_BUILD_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
for spec in json.loads(sys.argv[1]):
    shape, seed, out, classes = spec["shape"], spec["seed"], spec["out"], spec["classes"]
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape[1:]))
    w = tf.constant(rng.normal(size=(n, classes)).astype(np.float32) / np.float32(np.sqrt(n)))
    b = tf.constant(rng.normal(size=(classes,)).astype(np.float32))
    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def f(x):
        return tf.nn.softmax(tf.matmul(tf.reshape(x, [shape[0], n]), w) + b)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    open(out, "wb").write(conv.convert())
"""


def build_tiny_models(specs: list[dict[str, object]]) -> None:
    """Build float32 dense+softmax TFLite models: each spec has shape, seed, out, classes."""
    subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, json.dumps(specs)],
        check=True, capture_output=True, timeout=300,
    )


def bundle_from_model(
    path: Path,
    model_bytes: bytes,
    *,
    name: str,
    version: str,
    sign_key: Ed25519PrivateKey | None,
    latency_budget_ms: float = 0.0,
) -> Path:
    """Pack a float image classifier into a bundle with golden vectors from the interpreter."""
    runtime = create_runtime("litert", model_bytes)
    in_spec, out_spec = runtime.inputs[0], runtime.outputs[0]
    _, height, width, channels = in_spec.shape
    rng = np.random.default_rng(0)
    golden = []
    for _ in range(3):
        x = rng.random(in_spec.shape, dtype=np.float32)
        y = runtime.infer(x)[0]
        golden.append(GoldenVector(
            input_b64=GoldenVector.encode(x), expected_b64=GoldenVector.encode(y),
            expected_top1=int(np.argmax(y)), atol=1e-4,
        ))
    classes = int(out_spec.shape[-1])
    manifest = Manifest(
        name=name, version=version, task="classify",
        model=ModelInfo(sha256="0" * 64, size_bytes=0),
        inputs=[in_spec.model_copy(update={"layout": "NHWC"})],
        outputs=[TensorSpec(**out_spec.model_dump())],
        preprocess=ImagePreprocess(
            width=width, height=height, channels=channels, color="gray" if channels == 1 else "rgb",
            std=[255.0],
        ),
        output={"labels": [f"c{i}" for i in range(classes)]},  # type: ignore[arg-type]
        golden=golden,
        latency_budget_ms=latency_budget_ms,
    )
    labels = "\n".join(f"c{i}" for i in range(classes)).encode() + b"\n"
    write_bundle(path, manifest, model_bytes, {LABELS: labels, REPORT: b"{}"}, sign_key)
    return path


def repack(
    source: Path, target: Path, sign_key: Ed25519PrivateKey | None, **manifest_updates: object
) -> Path:
    """Copy a bundle with manifest fields changed (version, latency budget, ...), re-signed."""
    bundle = read_bundle(source, require_signature=False)
    manifest = bundle.manifest.model_copy(update=manifest_updates)
    extra = {k: v for k, v in bundle.files.items() if k in (LABELS, REPORT)}
    write_bundle(target, manifest, bundle.model_bytes, extra, sign_key)
    return target


def _members(source: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(source) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_members(target: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    target.write_bytes(buffer.getvalue())
    return target


def tampered(source: Path, target: Path) -> Path:
    """Same manifest and signature, one byte of the model flipped."""
    members = _members(source)
    model = bytearray(members[MODEL])
    model[len(model) // 2] ^= 0xFF
    members[MODEL] = bytes(model)
    return _write_members(target, members)


def truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3])
    return target


def unsigned(source: Path, target: Path) -> Path:
    members = _members(source)
    members.pop(SIGNATURE, None)
    return _write_members(target, members)


def wrongly_signed(source: Path, target: Path) -> Path:
    """Signed, but by a key the device does not trust."""
    members = _members(source)
    members[SIGNATURE] = Ed25519PrivateKey.generate().sign(members[MANIFEST])
    return _write_members(target, members)


def private_key(path: Path) -> Ed25519PrivateKey:
    return load_private_key(path)
