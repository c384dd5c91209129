"""The identity of a running model is the whole bundle (``manifest_sha256``), not its weights only.

Real models (built without TensorFlow by tests/tflite_builders.py), real bundles and the
agent's own loader (:func:`edge_agent.model.loader.load_model`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.model.bundle import LABELS, MANIFEST, extract_bundle, read_bundle, sign_bundle, write_bundle
from edge_agent.model.loader import LoadedModel, bundle_identity, load_model
from tests import tflite_builders as tb

SIDECAR = """name = "colours"
version = "1"
task = "classify"
labels_file = "labels.txt"
[preprocess]
kind = "image"
width = 16
height = 16
color = "rgb"
std = [255.0]
[output]
top_k = 3
"""


def _plain(tmp_path: Path, labels: str = "red\ngreen\nblue\n", sidecar: str = SIDECAR) -> LoadedModel:
    tmp_path.mkdir(exist_ok=True)
    model = tmp_path / "colours.tflite"
    model.write_bytes(tb.colours_model())
    (tmp_path / "colours.toml").write_text(sidecar)
    (tmp_path / "labels.txt").write_text(labels)
    return load_model(model)


def _manifest_json(bundle: Path) -> bytes:
    with zipfile.ZipFile(bundle) as archive:
        return archive.read(MANIFEST)


def test_plain_tflite_identity_covers_weights_sidecar_and_labels_file(tmp_path: Path) -> None:
    """Guards against identifying a plain model by its weights, or by the sidecar's text only
    (a ``labels_file`` edit changes what the device reports, not the sidecar)."""
    first = _plain(tmp_path)
    assert first.manifest_sha256 == _plain(tmp_path).manifest_sha256  # stable across loads
    relabelled = _plain(tmp_path, labels="rot\ngruen\nblau\n")
    rethresholded = _plain(tmp_path, sidecar=SIDECAR.replace("top_k = 3", "top_k = 3\nscore_threshold = 0.5"))
    assert first.sha256 == relabelled.sha256 == rethresholded.sha256
    assert len({first.manifest_sha256, relabelled.manifest_sha256, rethresholded.manifest_sha256}) == 3
    assert first.info() == {"name": "colours", "version": "1", "sha256": first.sha256,
                            "manifest_sha256": first.manifest_sha256}


def test_bundle_identity_is_the_manifest_hash_in_every_form(tmp_path: Path) -> None:
    """A bundle file, its installed directory and a re-signed copy are one identity; the same
    weights with other labels (a manifest-only update) are another."""
    plain = _plain(tmp_path / "plain")
    model_bytes = (tmp_path / "plain" / "colours.tflite").read_bytes()
    bundle = tmp_path / "colours.bundle"
    write_bundle(bundle, plain.manifest, model_bytes, {LABELS: b"red\ngreen\nblue\n"})
    loaded = load_model(bundle)
    assert loaded.manifest_sha256 == hashlib.sha256(_manifest_json(bundle)).hexdigest()
    assert loaded.manifest_sha256 == bundle_identity(read_bundle(bundle).manifest_bytes)

    installed = tmp_path / "installed"
    installed.mkdir()
    extract_bundle(read_bundle(bundle), installed)
    assert load_model(installed).manifest_sha256 == loaded.manifest_sha256

    signed = sign_bundle(bundle, Ed25519PrivateKey.generate(), output=tmp_path / "signed.bundle")
    assert signed.read_bytes() != bundle.read_bytes()
    assert load_model(signed).manifest_sha256 == loaded.manifest_sha256

    other = tmp_path / "other.bundle"
    output = plain.manifest.output.model_copy(update={"labels": ["rot", "gruen", "blau"]})
    write_bundle(other, plain.manifest.model_copy(update={"output": output}), model_bytes,
                 {LABELS: b"red\ngreen\nblue\n"})
    relabelled = load_model(other)
    assert relabelled.sha256 == loaded.sha256
    assert relabelled.manifest_sha256 != loaded.manifest_sha256
