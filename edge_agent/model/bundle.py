"""Model bundles: one zip file holding a TFLite model and everything needed to run it.

Layout of a bundle (a zip archive, members at the top level only)::

    manifest.json   the typed manifest (edge_agent.model.manifest.Manifest)
    model.tflite    the model; its sha256 and size are in the manifest
    labels.txt      one label per line (sha256 in manifest.files)
    report.json     the converter's validation report (sha256 in manifest.files)
    manifest.sig    optional detached Ed25519 signature over manifest.json's bytes

Because the manifest carries the sha256 of every other member, a signature over
the manifest covers the whole bundle. Reading verifies everything *before*
anything is used or extracted, and refuses unsafe member names.
"""

from __future__ import annotations

import io
import json
import stat
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import BundleError, SignatureError
from edge_agent.model.keys import load_public_key
from edge_agent.model.manifest import Manifest
from edge_agent.schema import ValidationError
from edge_agent.util.fs import atomic_write, sha256_bytes

if TYPE_CHECKING:  # cryptography costs ~8 MB RSS: imported only where keys are used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.tflite"
LABELS = "labels.txt"
REPORT = "report.json"
ALLOWED_MEMBERS = frozenset({MANIFEST, SIGNATURE, MODEL, LABELS, REPORT})
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024




@dataclass(frozen=True)
class Bundle:
    """A verified bundle held in memory."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    model_bytes: bytes
    files: Mapping[str, bytes]
    signature: bytes | None
    signature_verified: bool

    @property
    def labels(self) -> list[str]:
        if self.manifest.output.labels:
            return list(self.manifest.output.labels)
        raw = self.files.get(LABELS)
        return raw.decode("utf-8").splitlines() if raw else []

    @property
    def report(self) -> dict[str, object]:
        raw = self.files.get(REPORT)
        if not raw:
            return {}
        data = json.loads(raw)
        return data if isinstance(data, dict) else {}


def pack_bundle(
    manifest: Manifest,
    model_bytes: bytes,
    extra_files: Mapping[str, bytes],
    sign_key: Ed25519PrivateKey | None = None,
) -> bytes:
    """Build bundle bytes; fills in model/file checksums so the manifest is consistent."""
    for name in extra_files:
        if name not in (LABELS, REPORT):
            raise BundleError(f"bundle member {name!r} is not allowed")
    files = {name: sha256_bytes(data) for name, data in sorted(extra_files.items())}
    model_info = manifest.model.model_copy(
        update={"sha256": sha256_bytes(model_bytes), "size_bytes": len(model_bytes)}
    )
    manifest = manifest.model_copy(update={"model": model_info, "files": files})
    manifest_bytes = manifest_to_bytes(manifest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, manifest_bytes)
        archive.writestr(MODEL, model_bytes)
        for name, data in sorted(extra_files.items()):
            archive.writestr(name, data)
        if sign_key is not None:
            archive.writestr(SIGNATURE, sign_key.sign(manifest_bytes))
    return buffer.getvalue()


def manifest_to_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def write_bundle(
    path: Path,
    manifest: Manifest,
    model_bytes: bytes,
    extra_files: Mapping[str, bytes],
    sign_key: Ed25519PrivateKey | None = None,
) -> Manifest:
    """Pack and atomically write a bundle; returns the manifest as written."""
    data = pack_bundle(manifest, model_bytes, extra_files, sign_key)
    try:
        atomic_write(Path(path), data)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {path}: {exc.strerror or exc}") from exc
    return read_bundle_bytes(data, Path(path)).manifest


def sign_bundle(path: Path, key: Ed25519PrivateKey, output: Path | None = None) -> Path:
    """Add (or replace) the detached signature of an existing, intact bundle."""
    bundle = read_bundle(path)
    extra = {name: data for name, data in bundle.files.items() if name in (LABELS, REPORT)}
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, bundle.manifest_bytes)
        archive.writestr(MODEL, bundle.model_bytes)
        for name, content in sorted(extra.items()):
            archive.writestr(name, content)
        archive.writestr(SIGNATURE, key.sign(bundle.manifest_bytes))
    target = Path(output or path)
    try:
        atomic_write(target, data.getvalue())
    except OSError as exc:
        raise BundleError(f"cannot write bundle {target}: {exc.strerror or exc}") from exc
    return target


# --------------------------------------------------------------------------- reading


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or "/" in name:
        raise BundleError(f"bundle member {name!r} has an unsafe path; refusing the bundle")
    mode = info.external_attr >> 16
    if mode and (stat.S_ISLNK(mode) or (not stat.S_ISREG(mode) and stat.S_IFMT(mode))):
        raise BundleError(f"bundle member {name!r} is not a regular file; refusing the bundle")
    if name not in ALLOWED_MEMBERS:
        raise BundleError(f"bundle member {name!r} is not expected in a bundle; refusing it")
    if info.file_size > MAX_MEMBER_BYTES:
        raise BundleError(f"bundle member {name!r} is larger than {MAX_MEMBER_BYTES} bytes")


def read_bundle(
    path: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    require_signature: bool | None = None,
) -> Bundle:
    """Read and verify a bundle file.

    Args:
        path: the bundle file.
        public_key: a pinned key (or PEM path). When given, a valid signature is
            required unless ``require_signature`` is explicitly False.
        require_signature: force (True) or waive (False) the signature check.

    Raises:
        BundleError: missing, malformed, altered or unsafe bundle.
        SignatureError: signature missing where required, or invalid.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path} not found") from exc
    except IsADirectoryError as exc:
        raise BundleError(f"bundle {path} is a directory, expected a bundle file") from exc
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
    return read_bundle_bytes(data, path, public_key, require_signature)


def read_bundle_bytes(
    data: bytes,
    path: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    require_signature: bool | None = None,
) -> Bundle:
    """Verify bundle bytes already in memory (see :func:`read_bundle`)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{path} is not a bundle (not a zip archive); build one with edge-convert") from exc
    members: dict[str, bytes] = {}
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(names) != len(set(names)):
            raise BundleError(f"{path} has duplicate members; refusing the bundle")
        for info in infos:
            _check_member(info)
        for info in infos:
            try:
                members[info.filename] = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # zlib: a damaged deflate stream
                raise BundleError(f"{path}: member {info.filename} is corrupt ({exc})") from exc
    for required in (MANIFEST, MODEL):
        if required not in members:
            raise BundleError(f"{path} has no {required}; it is not a complete bundle")
    manifest_bytes = members[MANIFEST]
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: manifest is larger than {MAX_MANIFEST_BYTES} bytes")

    signature = members.get(SIGNATURE)
    key = load_public_key(public_key) if isinstance(public_key, Path | str) else public_key
    must_sign = require_signature if require_signature is not None else key is not None
    verified = False
    if must_sign and signature is None:
        raise SignatureError(f"{path} is not signed but a signature is required; sign it with `edge-deploy sign`")
    if key is not None and signature is not None:
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature as exc:
            raise SignatureError(f"{path}: signature does not verify with the pinned public key") from exc
        verified = True
    elif must_sign:
        raise SignatureError(f"{path}: a signature is required but no public key is configured")

    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest at {exc.where('manifest')}: {exc.first['msg']}") from exc

    model = members[MODEL]
    if len(model) != manifest.model.size_bytes or sha256_bytes(model) != manifest.model.sha256:
        raise BundleError(f"{path}: model.tflite does not match the manifest sha256 (altered or corrupt)")
    for name, digest in manifest.files.items():
        if name not in members:
            raise BundleError(f"{path}: {name} is listed in the manifest but missing")
        if sha256_bytes(members[name]) != digest:
            raise BundleError(f"{path}: {name} does not match the manifest sha256 (altered or corrupt)")
    for name in members:
        if name not in (MANIFEST, MODEL, SIGNATURE) and name not in manifest.files:
            raise BundleError(f"{path}: {name} is not covered by the manifest checksums")
    return Bundle(
        path=path,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        model_bytes=model,
        files={k: v for k, v in members.items() if k in (LABELS, REPORT)},
        signature=signature,
        signature_verified=verified,
    )


def extract_bundle(bundle: Bundle, directory: Path) -> None:
    """Write a verified bundle's members into ``directory`` (which must exist), fsynced."""
    for name, data in (
        (MANIFEST, bundle.manifest_bytes),
        (MODEL, bundle.model_bytes),
        *bundle.files.items(),
        *(((SIGNATURE, bundle.signature),) if bundle.signature else ()),
    ):
        atomic_write(directory / name, data)
