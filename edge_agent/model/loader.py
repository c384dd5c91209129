"""Open a model for the agent: a bundle file, an installed model directory, or a
plain ``.tflite`` with a sidecar file or TFLite Model Metadata.

Everything is verified before the interpreter sees a byte: bundle and installed
directory go through the same checks in :mod:`edge_agent.model.bundle` (checksums,
member names and sizes, labels and report, signature when a key is pinned). A plain ``.tflite`` has no
checksums to verify; its sidecar (TOML or JSON) gives the manifest fields by
hand and the tensor specs come from the interpreter::

    name = "colours"          # optional, default: the file stem
    version = "1"             # optional
    task = "classify"         # classify | detect | audio_classify
    labels = ["red", "green"] # or labels_file = "labels.txt" (relative to the sidecar)
    [preprocess]
    kind = "image"
    width = 16
    height = 16
    [output]
    score_threshold = 0.3

A plain ``.tflite`` without a sidecar runs from its TFLite Model Metadata when it has
some (:func:`edge_agent.model.tflite.sidecar.metadata_sidecar` derives the same fields);
``edge-agent inspect MODEL --write-sidecar FILE`` writes a starting sidecar for any model.

A running model is identified by :func:`bundle_identity` (``manifest_sha256``), not only by
the sha256 of its weights: a manifest-only update (labels, thresholds, preprocessing) is a
different model to the device and to anyone reading its results.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import BundleError
from edge_agent.model import bundle as bundle_mod
from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, Manifest, TensorSpec, parse_preprocess
from edge_agent.runtimes import Runtime, create_runtime
from edge_agent.schema import ValidationError
from edge_agent.util import strict_json
from edge_agent.util.fs import sha256_bytes

SIDECAR_SUFFIXES = (".toml", ".json")


def bundle_identity(manifest_bytes: bytes) -> str:
    """The identity of a whole model bundle: the sha256 of its ``manifest.json`` bytes.

    The manifest holds the sha256 of the model and of every other member (labels, report) next
    to the labels, thresholds and preprocessing, so any change to what the device would run
    changes this hash; a re-signed or re-zipped bundle keeps it. A plain ``.tflite`` gets the
    hash of its derived manifest in canonical JSON (see :func:`open_model`), which includes the
    model's sha256 and every sidecar field.
    """
    return sha256_bytes(manifest_bytes)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model, its runtime, and what the pipeline needs to decode it."""

    path: Path
    kind: str  # "bundle" | "directory" | "tflite"
    manifest: Manifest
    runtime: Runtime
    labels: list[str]
    manifest_sha256: str  # bundle_identity() of the manifest the agent verified
    signature_verified: bool = False
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """The sha256 of the model weights (``model.tflite``) only."""
        return self.manifest.model.sha256

    def info(self) -> dict[str, str]:
        """Name, version, weights sha256 and bundle identity: status, results, OTA checks."""
        return {"name": self.manifest.name, "version": self.manifest.version, "sha256": self.sha256,
                "manifest_sha256": self.manifest_sha256}


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read a sidecar TOML/JSON file as a dict (BundleError on any failure)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"sidecar {path} not found") from exc
    except OSError as exc:
        raise BundleError(f"cannot read sidecar {path}: {exc.strerror or exc}") from exc
    try:
        data = strict_json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"sidecar {path} is not valid {path.suffix[1:].upper() or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"sidecar {path} must hold a table/object")
    return data


def find_sidecar(model_path: Path) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        candidate = model_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def sidecar_manifest(
    data: dict[str, Any],
    model_bytes: bytes,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    sidecar_path: Path,
    default_name: str,
    source: str | None = None,
) -> Manifest:
    """Build a Manifest from sidecar fields plus the interpreter's tensor specs.

    ``source`` names where the fields came from in error messages (default: the sidecar path).
    """
    source = source or f"sidecar {sidecar_path}"
    data = dict(data)
    labels = data.pop("labels", None)
    labels_file = data.pop("labels_file", None)
    if labels_file is not None:
        try:
            labels = (sidecar_path.parent / str(labels_file)).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"labels file {labels_file} of {sidecar_path} cannot be read: {exc}") from exc
    output = dict(data.pop("output", {}) or {})
    if labels is not None:
        output["labels"] = [str(label) for label in labels]
    manifest_data = {
        "name": data.pop("name", default_name),
        "version": str(data.pop("version", "0")),
        "model": {
            "sha256": sha256_bytes(model_bytes),
            "size_bytes": len(model_bytes),
        },
        "inputs": [spec.model_dump() for spec in inputs],
        "outputs": [spec.model_dump() for spec in outputs],
        "output": output,
        **data,
    }
    try:
        manifest = Manifest.model_validate(manifest_data)
    except ValidationError as exc:
        msg = "unknown field" if exc.first["type"] == "extra_forbidden" else str(exc.first["msg"])
        raise BundleError(f"{source}: invalid '{exc.where('sidecar')}': {msg}") from exc
    bundle_mod.check_runtime_version(manifest, source)
    return manifest


@dataclass(frozen=True)
class ModelFile:
    """A verified model file, before any interpreter exists (see :func:`verify_model`)."""

    path: Path
    kind: str
    model_bytes: bytes
    manifest: Manifest | None  # None for a plain .tflite until the interpreter gives tensor specs
    sidecar: dict[str, Any] | None = None
    sidecar_path: Path | None = None
    labels: list[str] = field(default_factory=list)
    signature_verified: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    sidecar_from_metadata: bool = False  # the sidecar fields come from the model's TFLite metadata
    manifest_sha256: str | None = None  # bundle_identity(); a plain .tflite gets it in open_model

    @property
    def sidecar_source(self) -> str:
        """Where the sidecar fields came from, for error messages."""
        return f"{self.path} (TFLite metadata)" if self.sidecar_from_metadata else f"sidecar {self.sidecar_path}"

    @property
    def preprocess(self) -> ImagePreprocess | AudioPreprocess:
        """The preprocessing spec (validated from the sidecar for a plain model)."""
        if self.manifest is not None:
            return self.manifest.preprocess
        assert self.sidecar is not None
        try:
            return parse_preprocess(self.sidecar.get("preprocess"))
        except ValidationError as exc:
            raise BundleError(f"{self.sidecar_source}: invalid 'preprocess' ({exc.where('preprocess')}): "
                              f"{exc.first['msg']}") from exc


def verify_model(
    path: Path, sidecar: Path | None = None, public_key: Path | None = None,
    limits: bundle_mod.BundleLimits | None = None,
) -> ModelFile:
    """Read and verify a model without creating an interpreter (``limits``: largest members accepted).

    Raises:
        BundleError: missing, altered or malformed model or sidecar.
        SignatureError: signature required by ``public_key`` missing or invalid.
    """
    path = Path(path)
    if not path.exists():
        hint = " (install one with `edge-agent install-model`)" if path.name == "current" else ""
        raise BundleError(f"model {path} not found{hint}")
    if path.is_file() and (path.suffix == ".tflite" or sidecar is not None):
        if public_key is not None:
            raise BundleError(
                f"{path} is a plain .tflite and cannot be signature-checked; a public key is "
                "configured, so use a signed bundle"
            )
        sidecar = sidecar or find_sidecar(path)
        data = read_sidecar(Path(sidecar)) if sidecar is not None else None
        model_bytes = _read_plain_model(path, (limits or bundle_mod.BundleLimits()).model_bytes)
        if sidecar is None:
            return _metadata_model(path, model_bytes)
        return ModelFile(path, "tflite", model_bytes, None, data, Path(sidecar))
    if path.is_dir():
        if not (path / bundle_mod.MANIFEST).is_file():
            raise BundleError(f"{path} is a directory without manifest.json; not an installed model")
        verified = bundle_mod.read_bundle_dir(path, public_key, limits=limits)
        kind = "directory"
    else:
        verified = bundle_mod.read_bundle(path, public_key, limits=limits)
        kind = "bundle"
    return ModelFile(
        path, kind, verified.model_bytes, verified.manifest, labels=verified.labels,
        signature_verified=verified.signature_verified, report=dict(verified.report),
        manifest_sha256=bundle_identity(verified.manifest_bytes),
    )


def _read_plain_model(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise BundleError(f"{path} is larger than the {limit} bytes a device accepts (see max_model_mb)")
    return data


def _metadata_model(path: Path, model_bytes: bytes) -> ModelFile:
    """A plain .tflite without a sidecar, described by its TFLite Model Metadata.

    Tensor specs are read from the file here (the pipeline needs the preprocessing before
    the interpreter exists); the manifest is still built from the interpreter's own specs
    in :func:`open_model`.
    """
    from edge_agent.model.tflite.metadata import METADATA_NAME
    from edge_agent.model.tflite.model import read_model
    from edge_agent.model.tflite.sidecar import metadata_sidecar

    model = read_model(model_bytes, str(path))
    data = None
    if METADATA_NAME in model.metadata:
        data = metadata_sidecar(model_bytes, model.input_specs(), model.output_specs(), str(path))
    if data is None:
        raise BundleError(
            f"{path} is a plain .tflite without TFLite metadata: give a sidecar (--sidecar FILE.toml) with "
            f"task, preprocess and output; `edge-agent inspect {path} --write-sidecar "
            f"{path.with_suffix('.toml')}` writes a starting one that is then found automatically"
        )
    return ModelFile(path, "tflite", model_bytes, None, data, path, sidecar_from_metadata=True)


def open_model(
    model: ModelFile,
    threads: int = 1,
    delegate: str | None = None,
    delegate_options: dict[str, str] | None = None,
    runtime_kind: str = "litert",
) -> LoadedModel:
    """Create the runtime for a verified model (tensor specs of a plain model come from it).

    Raises:
        RuntimeLoadError: the interpreter or delegate cannot load it.
        BundleError: the sidecar does not describe this model.
    """
    runtime = create_runtime(
        runtime_kind, model.model_bytes, threads=threads, delegate=delegate, delegate_options=delegate_options
    )
    if model.manifest is None:
        assert model.sidecar is not None and model.sidecar_path is not None
        manifest = sidecar_manifest(
            model.sidecar, model.model_bytes, runtime.inputs, runtime.outputs, model.sidecar_path, model.path.stem,
            source=model.sidecar_source,
        )
        return LoadedModel(model.path, model.kind, manifest, runtime, list(manifest.output.labels),
                           bundle_identity(bundle_mod.manifest_to_bytes(manifest)))
    assert model.manifest_sha256 is not None  # set by verify_model for bundles and directories
    return LoadedModel(
        path=model.path, kind=model.kind, manifest=model.manifest, runtime=runtime, labels=model.labels,
        manifest_sha256=model.manifest_sha256, signature_verified=model.signature_verified,
        report=model.report,
    )


def load_model(
    path: Path,
    sidecar: Path | None = None,
    public_key: Path | None = None,
    threads: int = 1,
    delegate: str | None = None,
    delegate_options: dict[str, str] | None = None,
    runtime_kind: str = "litert",
) -> LoadedModel:
    """Verify and open a model (see the module docstring for the accepted forms).

    Raises:
        BundleError: missing, altered or malformed model or sidecar.
        SignatureError: signature required by ``public_key`` missing or invalid.
        RuntimeLoadError: the interpreter or delegate cannot load it.
    """
    return open_model(verify_model(path, sidecar, public_key), threads, delegate, delegate_options, runtime_kind)
