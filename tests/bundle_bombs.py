"""Hostile but well-formed bundles for the memory and one-line-error tests: members that inflate
to hundreds of MiB (streamed, never held in memory here either), sizes a zip lies about,
unsupported compression, the encryption flag, and manifests changed by hand then re-signed."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.model.bundle import LABELS, MANIFEST, MODEL, REPORT, SIGNATURE

_CHUNK = b"x\n" * (1 << 19)  # 1 MiB of one-letter labels: deflates about 1000:1


def _members(source: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(source) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _manifest_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def inflating(source: Path, target: Path, member: str, mib: int, sign_key: Ed25519PrivateKey | None) -> Path:
    """``source`` with ``member`` (labels.txt, report.json or model.tflite) replaced by ``mib`` MiB that
    deflate to a small file; the manifest names the new sha256 (and size) and is re-signed, so the
    bundle is *correctly signed* and only its size is wrong."""
    members = _members(source)
    digest = hashlib.sha256()
    for _ in range(mib):
        digest.update(_CHUNK)
    manifest = json.loads(members[MANIFEST])
    if member == MODEL:
        manifest["model"].update(sha256=digest.hexdigest(), size_bytes=mib * len(_CHUNK))
    else:
        manifest["files"][member] = digest.hexdigest()
    members[MANIFEST] = _manifest_bytes(manifest)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            if name == member:
                with archive.open(name, "w", force_zip64=False) as out:
                    for _ in range(mib):
                        out.write(_CHUNK)
            elif name == SIGNATURE:
                continue
            else:
                archive.writestr(name, data)
        if sign_key is not None:
            archive.writestr(SIGNATURE, sign_key.sign(members[MANIFEST]))
    return target


# (signature, offset of the name length, offset of the name, shift of the fields after it) of a
# local and a central zip header
_HEADERS = ((b"PK\x03\x04", 26, 30, 0), (b"PK\x01\x02", 28, 46, 2))


def _member_headers(data: bytearray, member: str) -> list[tuple[int, int]]:
    """(offset, shift) of ``member``'s local and central headers in ``data``; ``shift`` is 2 for the
    central header, whose fields after "version made by" sit two bytes further on."""
    name = member.encode()
    found = []
    for signature, name_len_at, name_at, shift in _HEADERS:
        pos = 0
        while (pos := data.find(signature, pos)) >= 0:
            length = struct.unpack_from("<H", data, pos + name_len_at)[0]
            if data[pos + name_at:pos + name_at + length] == name:
                found.append((pos, shift))
            pos += 4
    return found


def declaring(source: Path, target: Path, member: str, size: int) -> Path:
    """``source`` with the local and central headers of ``member`` declaring ``size`` bytes (a zip lying)."""
    data = bytearray(source.read_bytes())
    for pos, shift in _member_headers(data, member):
        struct.pack_into("<I", data, pos + 22 + shift, size)
    target.write_bytes(bytes(data))
    return target


def header_patched(source: Path, target: Path, member: str, *, method: int | None = None,
                   flags: int | None = None) -> Path:
    """``source`` with ``member``'s compression method or general-purpose flags set in both headers."""
    data = bytearray(source.read_bytes())
    for pos, shift in _member_headers(data, member):
        if flags is not None:
            struct.pack_into("<H", data, pos + 6 + shift, flags)
        if method is not None:
            struct.pack_into("<H", data, pos + 8 + shift, method)
    target.write_bytes(bytes(data))
    return target


def with_files(source: Path, target: Path, sign_key: Ed25519PrivateKey | None, *,
               manifest: Callable[[dict[str, Any]], None] | None = None,
               raw_manifest: bytes | None = None, **files: bytes) -> Path:
    """``source`` with members replaced (``labels_txt=...``, ``report_json=...``), the manifest's
    checksums updated, edited by ``manifest`` or replaced by ``raw_manifest``, and re-signed."""
    members = _members(source)
    data = json.loads(members[MANIFEST])
    for key, content in files.items():
        name = {"labels_txt": LABELS, "report_json": REPORT}[key]
        members[name] = content
        data["files"][name] = hashlib.sha256(content).hexdigest()
    if manifest is not None:
        manifest(data)
    members[MANIFEST] = raw_manifest if raw_manifest is not None else _manifest_bytes(data)
    members.pop(SIGNATURE, None)
    if sign_key is not None:
        members[SIGNATURE] = sign_key.sign(members[MANIFEST])
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target
