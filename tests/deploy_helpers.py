"""Helpers for model-store, deploy and OTA tests: tiny real TFLite models and bad bundles.

Tiny models are built with TensorFlow in a child process (tests only; the agent
never imports TensorFlow) and packed with the real ``edge_agent.model.bundle`` code,
golden vectors computed by the real interpreter.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.model.bundle import LABELS, MANIFEST, MODEL, REPORT, SIGNATURE, read_bundle, write_bundle
from edge_agent.model.keys import load_private_key
from edge_agent.model.manifest import GoldenVector, ImagePreprocess, Manifest, ModelInfo, TensorSpec
from edge_agent.preprocess import dequantize
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
    source: Path, target: Path, sign_key: Ed25519PrivateKey | None, *, same_weights: bool = False,
    **manifest_updates: object,
) -> Path:
    """Copy a bundle with manifest fields changed (version, labels, latency budget, ...), re-signed.

    By default the copy is a different model too: its weights are nudged (:func:`perturb_weights`)
    and its golden vectors recomputed by the interpreter, so ``model.sha256`` differs from the
    source's and a test can tell which of the two the agent runs. ``same_weights=True`` keeps
    the model bytes: a manifest-only update (new labels, thresholds or preprocessing).
    """
    bundle = read_bundle(source, require_signature=False)
    manifest = bundle.manifest.model_copy(update=manifest_updates)
    model_bytes = bundle.model_bytes
    if not same_weights:
        model_bytes = perturb_weights(model_bytes)
        if "golden" not in manifest_updates:
            manifest = manifest.model_copy(update={"golden": golden_for(manifest, model_bytes)})
    extra = {k: v for k, v in bundle.files.items() if k in (LABELS, REPORT)}
    write_bundle(target, manifest, model_bytes, extra, sign_key)
    return target


def golden_for(manifest: Manifest, model_bytes: bytes) -> list[GoldenVector]:
    """The manifest's golden inputs with the outputs this model gives for them."""
    runtime = create_runtime("litert", model_bytes)
    golden = []
    for vector in manifest.golden:
        outputs = runtime.infer(vector.input_array(manifest.inputs[0]))
        more = outputs[1:1 + len(vector.more_expected_b64)]
        top1 = int(np.argmax(dequantize(outputs[0], runtime.outputs[0]).reshape(-1)))
        golden.append(vector.model_copy(update={
            "expected_b64": GoldenVector.encode(outputs[0]), "expected_top1": top1,
            "more_expected_b64": [GoldenVector.encode(y) for y in more],
        }))
    return golden


# A minimal FlatBuffer walk over the TFLite schema (Model.subgraphs = slot 2, Model.buffers = 4,
# SubGraph.tensors = 0, Tensor.type = 1, Tensor.buffer = 2, Buffer.data = 0).
_FLOAT32, _INT8 = 0, 9


def _field(data: bytes | bytearray, table: int, slot: int) -> int | None:
    vtable = table - struct.unpack_from("<i", data, table)[0]
    entry = 4 + 2 * slot
    if entry + 2 > struct.unpack_from("<H", data, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", data, vtable + entry)[0]
    return table + offset if offset else None


def _vector(data: bytes | bytearray, table: int, slot: int) -> tuple[int, int]:
    pos = _field(data, table, slot)
    if pos is None:
        return 0, 0
    start = pos + struct.unpack_from("<I", data, pos)[0]
    return start + 4, struct.unpack_from("<I", data, start)[0]


def _tables(data: bytes | bytearray, table: int, slot: int) -> list[int]:
    start, count = _vector(data, table, slot)
    return [start + 4 * i + struct.unpack_from("<I", data, start + 4 * i)[0] for i in range(count)]


def perturb_weights(model_bytes: bytes) -> bytes:
    """The same graph with its largest float32/int8 constant tensor nudged: every 7th weight
    moves by one int8 step or by 5 %. A valid, slightly different model with a new sha256."""
    data = bytearray(model_bytes)
    root = struct.unpack_from("<I", data, 0)[0]
    buffers = _tables(data, root, 4)
    best: tuple[int, int, int] | None = None  # (type, start, length)
    for subgraph in _tables(data, root, 2):
        for tensor in _tables(data, subgraph, 0):
            type_pos, buffer_pos = _field(data, tensor, 1), _field(data, tensor, 2)
            kind = data[type_pos] if type_pos is not None else _FLOAT32
            index = struct.unpack_from("<I", data, buffer_pos)[0] if buffer_pos is not None else 0
            if kind not in (_FLOAT32, _INT8) or not 0 < index < len(buffers):
                continue
            start, length = _vector(data, buffers[index], 0)
            if length and (best is None or length > best[2]):
                best = (kind, start, length)
    if best is None:
        raise ValueError("the model has no float32 or int8 constant tensor to perturb")
    kind, start, length = best
    if kind == _INT8:
        q = np.frombuffer(data, dtype=np.int8, count=length, offset=start)
        q[::7] = np.where(q[::7] < 127, q[::7] + 1, q[::7] - 1)
    else:
        w = np.frombuffer(data, dtype="<f4", count=length // 4, offset=start)
        w[::7] = w[::7] * np.float32(1.05) + np.float32(1e-3)
    return bytes(data)


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


def relabelled(source: Path, target: Path, sign_key: Ed25519PrivateKey | None, prefix: str = "new-") -> Path:
    """A manifest-only update of ``source``: the same model bytes with new labels and a higher version."""
    manifest = read_bundle(source, require_signature=False).manifest
    classes = int(manifest.outputs[0].shape[-1])
    # score_threshold 0: every result names a class, so a test sees the new labels
    output = manifest.output.model_copy(update={"labels": [f"{prefix}{i}" for i in range(classes)],
                                                "score_threshold": 0.0})
    return repack(source, target, sign_key, same_weights=True, version=f"{manifest.version}.9", output=output)
