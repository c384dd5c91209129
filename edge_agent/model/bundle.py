"""Model bundles: one zip file holding a TFLite model and everything needed to run it.

Layout of a bundle (a zip archive, members at the top level only)::

    manifest.json   the typed manifest (edge_agent.model.manifest.Manifest)
    model.tflite    the model; its sha256 and size are in the manifest
    labels.txt      one label per line (sha256 in manifest.files)
    report.json     the converter's validation report (sha256 in manifest.files)
    manifest.sig    optional detached Ed25519 signature over manifest.json's bytes

Because the manifest carries the sha256 of every other member, a signature over
the manifest covers the whole bundle. Reading verifies everything *before*
anything is used or extracted, refuses unsafe member names, and keeps memory bounded
by :class:`BundleLimits` whatever the archive claims (docs/converter.md, "The bundle").
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol

from edge_agent import __version__
from edge_agent.errors import BundleError, SignatureError
from edge_agent.model.compat import version_key
from edge_agent.model.keys import load_public_key
from edge_agent.model.manifest import Manifest
from edge_agent.schema import ValidationError
from edge_agent.util import strict_json
from edge_agent.util.fs import atomic_write, sha256_bytes

if TYPE_CHECKING:  # cryptography costs ~8 MB RSS: imported only where keys are used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.tflite"
LABELS = "labels.txt"
REPORT = "report.json"
ALLOWED_MEMBERS = frozenset({MANIFEST, SIGNATURE, MODEL, LABELS, REPORT})
# Member limits that fit a device: the model up to a configurable size (BundleLimits), the text
# members a few MiB (golden vectors make a detector's manifest the largest of them).
MAX_MODEL_BYTES = 256 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_TEXT_BYTES = 4 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024
_END_RECORD_SIZE = 22
_ZIP64_LOCATOR_SIZE = 20
_BLOCK = 1 << 20
# what zipfile raises for a damaged member (zlib: a damaged deflate stream; RuntimeError: encrypted)
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, struct.error)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its small members, parsed labels and report, and the model bytes
    (empty after :func:`unpack_bundle`, which streams the model to disk)."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    files: Mapping[str, bytes]
    signature: bytes | None
    signature_verified: bool
    labels: list[str] = field(default_factory=list)  # output.labels, else labels.txt
    report: dict[str, object] = field(default_factory=dict)
    model_bytes: bytes = b""


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
    return read_bundle(Path(path)).manifest


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
#
# Reading is streamed and bounded: the zip's end record and central directory are checked before
# zipfile parses them, every member's declared size is checked against its limit before anything
# is inflated, and the limit is enforced again while inflating (a zip can lie about sizes). The
# small members (manifest, signature, labels, report) are read first; the model is only read once
# the manifest and its signature verify, and then streamed: hashed, and written to disk by an
# unpack, held in memory only when the caller asks for the model bytes.


@dataclass(frozen=True)
class BundleLimits:
    """The largest member a device accepts; the model's limit is configurable."""

    model_bytes: int = MAX_MODEL_BYTES
    manifest_bytes: int = MAX_MANIFEST_BYTES
    text_bytes: int = MAX_TEXT_BYTES

    @classmethod
    def with_model_mb(cls, max_model_mb: int | None) -> BundleLimits:
        """The default limits with the model's set in MiB (``[model] max_model_mb``); None: default."""
        return cls() if max_model_mb is None else cls(model_bytes=max_model_mb * 1024 * 1024)

    def of(self, name: str) -> int:
        """The limit of member ``name``."""
        if name == MODEL:
            return self.model_bytes
        if name == MANIFEST:
            return self.manifest_bytes
        return MAX_SIGNATURE_BYTES if name == SIGNATURE else self.text_bytes


class _Members(Protocol):
    """Where a bundle's members come from: a zip archive or an installed model directory."""

    def size(self, name: str) -> int | None:
        """Declared size of ``name``, None when there is no such member."""

    def open(self, name: str) -> IO[bytes]:
        """The member's bytes as a stream."""

    def names(self) -> list[str]:
        """Every member."""


class _ZipMembers:
    """The members of a bundle file, checked (names, types, compression, declared sizes) on open."""

    def __init__(self, path: Path, limits: BundleLimits) -> None:
        self._path = path
        try:
            self._file: BinaryIO = path.open("rb")
        except FileNotFoundError as exc:
            raise BundleError(f"bundle {path} not found") from exc
        except IsADirectoryError as exc:
            raise BundleError(f"bundle {path} is a directory, expected a bundle file") from exc
        except OSError as exc:
            raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
        try:
            _check_end_record(self._file, path)
            self._archive = zipfile.ZipFile(self._file)
        except zipfile.BadZipFile as exc:
            self._file.close()
            raise BundleError(f"{path} is not a bundle (not a zip archive); build one with edge-convert") from exc
        except BaseException:
            self._file.close()
            raise
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._archive.infolist():
            if info.filename in self._infos:
                self.close()
                raise BundleError(f"{path} has duplicate members; refusing the bundle")
            self._infos[info.filename] = info
        try:
            for info in self._infos.values():
                _check_member(path, info, limits)
        except BundleError:
            self.close()
            raise

    def size(self, name: str) -> int | None:
        info = self._infos.get(name)
        return info.file_size if info is not None else None

    def open(self, name: str) -> IO[bytes]:
        return self._archive.open(self._infos[name])

    def names(self) -> list[str]:
        return list(self._infos)

    def close(self) -> None:
        self._archive.close()
        self._file.close()


class _DirectoryMembers:
    """The members of an installed model directory (``models/<sha256>/``)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def size(self, name: str) -> int | None:
        try:
            st = (self._directory / name).lstat()
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open(self, name: str) -> IO[bytes]:
        return (self._directory / name).open("rb")

    def names(self) -> list[str]:
        return [name for name in ALLOWED_MEMBERS if self.size(name) is not None]


def _check_end_record(handle: BinaryIO, path: Path) -> None:
    """Refuse a zip whose central directory is too large to parse on a device, or that uses zip64.

    zipfile reads the whole central directory into memory and makes an object per entry before
    any member can be checked: a 500 MB bundle of empty entries would cost gigabytes.
    """
    end = handle.seek(0, os.SEEK_END)
    # The end record, its longest comment, and the zip64 locator that may stand before the record.
    tail_size = min(end, _ZIP64_LOCATOR_SIZE + _END_RECORD_SIZE + 0xFFFF)
    handle.seek(end - tail_size)
    tail = handle.read(tail_size)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < _END_RECORD_SIZE:
        return  # not a zip: zipfile says so
    entries, cd_size = struct.unpack_from("<HI", tail, pos + 10)
    zip64 = pos >= _ZIP64_LOCATOR_SIZE and tail[pos - _ZIP64_LOCATOR_SIZE:pos - 16] == b"PK\x06\x07"
    if zip64 or entries > len(ALLOWED_MEMBERS) or cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise BundleError(f"{path} has {entries} members in a {cd_size}-byte directory"
                          f"{' (zip64)' if zip64 else ''}; a bundle has at most {len(ALLOWED_MEMBERS)}, "
                          "refusing it")


def _check_member(path: Path, info: zipfile.ZipInfo, limits: BundleLimits) -> None:
    name = info.filename
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or "/" in name:
        raise BundleError(f"{path}: bundle member {name!r} has an unsafe path; refusing the bundle")
    mode = info.external_attr >> 16
    if mode and (stat.S_ISLNK(mode) or (not stat.S_ISREG(mode) and stat.S_IFMT(mode))):
        raise BundleError(f"{path}: bundle member {name!r} is not a regular file; refusing the bundle")
    if name not in ALLOWED_MEMBERS:
        raise BundleError(f"{path}: bundle member {name!r} is not expected in a bundle; refusing it")
    if info.flag_bits & 0x1:
        raise BundleError(f"{path}: bundle member {name!r} is encrypted; bundles are signed, not encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"{path}: bundle member {name!r} uses compression method {info.compress_type}; "
                          "bundles use stored or deflate (re-pack it with edge-convert)")
    _check_size(path, name, info.file_size, limits)


def _check_size(path: Path, name: str, size: int, limits: BundleLimits) -> None:
    limit = limits.of(name)
    if size > limit:
        raise BundleError(f"{path}: {name} is {size} bytes, more than the {limit} bytes a device accepts"
                          f"{' (max_model_mb)' if name == MODEL else ''}; refusing the bundle")


def _read_block(src: IO[bytes], name: str, path: Path) -> bytes:
    try:
        return src.read(_BLOCK)
    except _CORRUPT as exc:
        raise BundleError(f"{path}: member {name} is corrupt ({exc})") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {name}: {exc.strerror or exc}") from exc


def _stream(
    members: _Members, name: str, path: Path, limits: BundleLimits,
    out: BinaryIO | None = None, keep: bool = True,
) -> tuple[str, bytes]:
    """Read member ``name`` in blocks: its sha256, and its bytes when ``keep``; copied to ``out``.

    Raises:
        BundleError: larger than its limit (whatever the zip declared), or corrupt.
    """
    limit = limits.of(name)
    digest = hashlib.sha256()
    kept: list[bytes] = []
    total = 0
    try:
        src = members.open(name)
    except _CORRUPT as exc:
        raise BundleError(f"{path}: member {name} is corrupt ({exc})") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {name}: {exc.strerror or exc}") from exc
    with src:
        while block := _read_block(src, name, path):
            total += len(block)
            if total > limit:
                raise BundleError(f"{path}: {name} inflates to more than {limit} bytes; refusing the bundle")
            digest.update(block)
            if out is not None:
                out.write(block)  # an OSError here is the caller's disk, not the bundle
            if keep:
                kept.append(block)
    return digest.hexdigest(), b"".join(kept)


@dataclass(frozen=True)
class _Verified:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None
    signature_verified: bool
    files: dict[str, bytes]


def _verify_small_members(
    members: _Members, path: Path, key: Ed25519PublicKey | None, require_signature: bool | None,
    limits: BundleLimits,
) -> _Verified:
    """Manifest and signature, then the manifest's checks, then labels and report (all small)."""
    names = members.names()
    for required in (MANIFEST, MODEL):
        if required not in names:
            raise BundleError(f"{path} has no {required}; it is not a complete bundle")
    _check_size(path, MANIFEST, members.size(MANIFEST) or 0, limits)
    _, manifest_bytes = _stream(members, MANIFEST, path, limits)
    signature = _stream(members, SIGNATURE, path, limits)[1] if SIGNATURE in names else None
    verified = verify_signature(path, manifest_bytes, signature, key, require_signature)
    manifest = parse_manifest(manifest_bytes, path)
    model_size = members.size(MODEL)
    if model_size != manifest.model.size_bytes:
        raise BundleError(f"{path}: model.tflite does not match the manifest sha256 (altered or corrupt)")
    _check_size(path, MODEL, manifest.model.size_bytes, limits)
    for name in names:
        if name not in (MANIFEST, MODEL, SIGNATURE) and name not in manifest.files:
            raise BundleError(f"{path}: {name} is not covered by the manifest checksums")
    files: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        if name not in names:
            raise BundleError(f"{path}: {name} is listed in the manifest but missing")
        got, data = _stream(members, name, path, limits)
        if got != digest:
            raise BundleError(f"{path}: {name} does not match the manifest sha256 (altered or corrupt)")
        files[name] = data
    return _Verified(manifest, manifest_bytes, signature, verified, files)


def verify_signature(
    path: Path, manifest_bytes: bytes, signature: bytes | None, key: Ed25519PublicKey | None,
    require_signature: bool | None,
) -> bool:
    """Whether the signature verified; raises SignatureError when one is required and missing or bad."""
    must_sign = require_signature if require_signature is not None else key is not None
    if must_sign and signature is None:
        raise SignatureError(f"{path} is not signed but a signature is required; sign it with `edge-deploy sign`")
    if key is not None and signature is not None:
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature as exc:
            raise SignatureError(f"{path}: signature does not verify with the pinned public key") from exc
        return True
    if must_sign:
        raise SignatureError(f"{path}: a signature is required but no public key is configured")
    return False


def parse_manifest(manifest_bytes: bytes, path: Path | str) -> Manifest:
    """The typed manifest from strict JSON, refused when this agent is older than it needs.

    Raises:
        BundleError: invalid JSON (duplicate keys, NaN/Infinity, deep nesting), an invalid
            field, or a ``min_runtime_version`` above this agent's version.
    """
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest at {exc.where('manifest')}: {exc.first['msg']}") from exc
    check_runtime_version(manifest, path)
    return manifest


def check_runtime_version(manifest: Manifest, path: Path | str) -> None:
    """Refuse a model that needs a newer agent (``min_runtime_version``)."""
    if version_key(manifest.min_runtime_version) > version_key(__version__):
        raise BundleError(f"{path}: the model needs edge-agent {manifest.min_runtime_version} or newer, this is "
                          f"{__version__}; upgrade the agent or re-convert the model")


def parse_labels(raw: bytes, path: Path | str) -> list[str]:
    """One label per line of ``labels.txt`` (UTF-8)."""
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: {LABELS} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def parse_report(raw: bytes, path: Path | str) -> dict[str, object]:
    """``report.json`` as an object (an empty file is an empty report)."""
    if not raw:
        return {}
    try:
        data = strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise BundleError(f"{path}: {REPORT} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: {REPORT} must hold a JSON object, not {type(data).__name__}")
    return data


def _finish(
    checked: _Verified, path: Path, model_bytes: bytes | None,
) -> Bundle:
    manifest = checked.manifest
    labels_raw = checked.files.get(LABELS, b"")
    file_labels = parse_labels(labels_raw, path) if LABELS in checked.files else []
    return Bundle(
        path=path, manifest=manifest, manifest_bytes=checked.manifest_bytes,
        files={k: v for k, v in checked.files.items() if k in (LABELS, REPORT)},
        signature=checked.signature, signature_verified=checked.signature_verified,
        labels=list(manifest.output.labels) or file_labels,
        report=parse_report(checked.files.get(REPORT, b""), path),
        model_bytes=model_bytes if model_bytes is not None else b"",
    )


def _read(
    members: _Members, path: Path, public_key: Ed25519PublicKey | Path | None,
    require_signature: bool | None, limits: BundleLimits, model_out: BinaryIO | None, keep_model: bool,
) -> Bundle:
    key = load_public_key(public_key) if isinstance(public_key, Path | str) else public_key
    checked = _verify_small_members(members, path, key, require_signature, limits)
    bundle = _finish(checked, path, None)  # labels and report parse before the model is read
    digest, model = _stream(members, MODEL, path, limits, out=model_out, keep=keep_model)
    if digest != checked.manifest.model.sha256:
        raise BundleError(f"{path}: model.tflite does not match the manifest sha256 (altered or corrupt)")
    return dataclasses.replace(bundle, model_bytes=model) if keep_model else bundle


def read_bundle(
    path: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    require_signature: bool | None = None,
    limits: BundleLimits | None = None,
) -> Bundle:
    """Read and verify a bundle file (memory: its small members and the model, each within ``limits``).

    Args:
        path: the bundle file.
        public_key: a pinned key (or PEM path). When given, a valid signature is
            required unless ``require_signature`` is explicitly False.
        require_signature: force (True) or waive (False) the signature check.
        limits: the largest members accepted (default :class:`BundleLimits`).

    Raises:
        BundleError: missing, malformed, altered, unsafe or too large bundle.
        SignatureError: signature missing where required, or invalid.
    """
    path = Path(path)
    members = _ZipMembers(path, limits or BundleLimits())
    try:
        return _read(members, path, public_key, require_signature, limits or BundleLimits(), None, True)
    finally:
        members.close()


def read_bundle_dir(
    directory: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    require_signature: bool | None = None,
    limits: BundleLimits | None = None,
) -> Bundle:
    """Read and verify an installed model directory with the checks of :func:`read_bundle`."""
    directory = Path(directory)
    return _read(_DirectoryMembers(directory), directory, public_key, require_signature,
                 limits or BundleLimits(), None, True)


def read_manifest_bytes(path: Path, limits: BundleLimits | None = None) -> bytes:
    """Only the ``manifest.json`` bytes of a bundle file (nothing verified but the archive's shape)."""
    limits = limits or BundleLimits()
    members = _ZipMembers(Path(path), limits)
    try:
        if members.size(MANIFEST) is None:
            raise BundleError(f"{path} has no {MANIFEST}; it is not a complete bundle")
        return _stream(members, MANIFEST, Path(path), limits)[1]
    finally:
        members.close()


def unpack_bundle(
    path: Path,
    directory: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    require_signature: bool | None = None,
    limits: BundleLimits | None = None,
) -> Bundle:
    """Verify a bundle file while writing its members into ``directory`` (which must exist), fsynced.

    The model is streamed to disk, never held in memory (``model_bytes`` of the result is empty);
    on any error the files written so far are left for the caller to remove with the directory.

    Raises:
        BundleError, SignatureError: as :func:`read_bundle`.
        OSError: ``directory`` cannot be written (a full disk).
    """
    path, directory = Path(path), Path(directory)
    limits = limits or BundleLimits()
    members = _ZipMembers(path, limits)
    try:
        with (directory / MODEL).open("wb") as out:
            bundle = _read(members, path, public_key, require_signature, limits, out, False)
            out.flush()
            os.fsync(out.fileno())
    finally:
        members.close()
    _write_small_members(bundle, directory)
    return bundle


def _write_small_members(bundle: Bundle, directory: Path) -> None:
    for name, data in (
        (MANIFEST, bundle.manifest_bytes),
        *bundle.files.items(),
        *(((SIGNATURE, bundle.signature),) if bundle.signature else ()),
    ):
        atomic_write(directory / name, data)


def extract_bundle(bundle: Bundle, directory: Path) -> None:
    """Write a verified bundle held in memory into ``directory`` (which must exist), fsynced."""
    atomic_write(directory / MODEL, bundle.model_bytes)
    _write_small_members(bundle, directory)
