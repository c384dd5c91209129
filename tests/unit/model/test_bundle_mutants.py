"""Bundle rules the mutation run (``make mutate``) found untested: the one-line errors name the
file and the problem, member checks at their exact bounds, file modes, extraction."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import BundleError, SignatureError
from edge_agent.model import bundle
from edge_agent.model.bundle import (
    LABELS,
    MANIFEST,
    MODEL,
    REPORT,
    SIGNATURE,
    BundleLimits,
    extract_bundle,
    pack_bundle,
    read_bundle,
    read_bundle_dir,
    read_manifest_bytes,
    sign_bundle,
    unpack_bundle,
    write_bundle,
)
from edge_agent.model.keys import load_private_key, load_public_key
from edge_agent.util import strict_json
from edge_agent.util.fs import atomic_write, sha256_file
from tests import bundle_bombs
from tests.bundle_samples import MODEL_BYTES
from tests.bundle_samples import sample_extra as _extra
from tests.bundle_samples import sample_manifest as _manifest
from tests.bundle_samples import zip_members as _members


def _rezip(path: Path, members: dict[str, bytes], mode: int | None = None) -> None:
    """Write ``members`` as a zip; ``mode`` sets every member's Unix mode (file type included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    path.write_bytes(buffer.getvalue())


def _error(exc_type: type[Exception], call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(exc_type) as info:
        call()
    return str(info.value)


# --------------------------------------------------------------------------- keys and files


def test_key_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    assert _error(SignatureError, lambda: load_private_key(missing)) == (
        f"signing key {missing} not found; create one with `edge-deploy keygen`")
    assert _error(SignatureError, lambda: load_public_key(missing)) == f"public key {missing} not found"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    assert _error(SignatureError, lambda: load_private_key(junk)).startswith(
        f"{junk} is not an unencrypted PEM private key: ")
    assert _error(SignatureError, lambda: load_public_key(junk)).startswith(f"{junk} is not an Ed25519 public key: ")
    other = ec.generate_private_key(ec.SECP256R1())
    ec_private, ec_public = tmp_path / "ec.pem", tmp_path / "ec.pub"
    ec_private.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    ec_public.write_bytes(other.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    assert _error(SignatureError, lambda: load_private_key(ec_private)) == f"{ec_private} is not an Ed25519 private key"
    assert _error(SignatureError, lambda: load_public_key(ec_public)) == f"{ec_public} is not an Ed25519 public key"
    # a path that exists but cannot be read as a file (an OSError other than "not found")
    assert _error(SignatureError, lambda: load_public_key(tmp_path)) == (
        f"cannot read public key {tmp_path}: Is a directory")


def test_key_pair_modes(keys: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(keys[1].stat().st_mode) == 0o644


def test_atomic_write_default_mode_and_content(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_atomic_write_keeps_its_temp_file_beside_the_target(tmp_path: Path, monkeypatch) -> None:
    """Neither the working directory nor the system temp dir is used: the rename must stay on the
    target's filesystem. Both are made unusable here (a directory that no longer exists)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    monkeypatch.setattr(tempfile, "tempdir", str(gone))
    target = tmp_path / "out" / "file.bin"
    target.parent.mkdir()
    atomic_write(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_atomic_write_leaves_no_temp_file_and_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    assert target.read_bytes() == b"old"


def test_failed_atomic_write_raises_the_first_error_when_its_temp_file_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync fails (EIO, what a dying SD card answers) and the temp file has already vanished:
    the clean-up's own error must not hide the write error (guards the suppress(OSError))."""
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        os.unlink(os.readlink(f"/proc/self/fd/{fd}"))
        raise OSError(5, "Input/output error")

    target = tmp_path / "file.bin"
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as info:
        atomic_write(target, b"new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert info.value.errno == 5
    assert list(tmp_path.iterdir()) == []


def test_sha256_file_reads_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41  # not a multiple of the chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest() == sha256_file(path)


# --------------------------------------------------------------------------- writing


def test_pack_refuses_unknown_members_by_name() -> None:
    assert _error(BundleError, lambda: pack_bundle(_manifest(), MODEL_BYTES, {"notes.txt": b"x"})) == (
        "bundle member 'notes.txt' is not allowed")


def test_written_and_signed_bundles_are_deflated(tmp_path: Path, bundle_path: Path, keys: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(bundle_path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    signed = sign_bundle(bundle_path, load_private_key(keys[0]), tmp_path / "signed.bundle")
    with zipfile.ZipFile(signed) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert set(archive.namelist()) == {MANIFEST, MODEL, LABELS, REPORT, SIGNATURE}


def test_manifest_bytes_are_canonical_json(bundle_path: Path) -> None:
    """Sorted keys, two-space indent, a final newline: the bytes a signature covers are reproducible."""
    raw = _members(bundle_path)[MANIFEST]
    data = json.loads(raw)
    assert raw == (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    assert list(data) == sorted(data)
    assert raw.startswith(b'{\n  "')


def test_write_errors_name_the_file_and_the_os_reason(tmp_path: Path, bundle_path: Path,
                                                       keys: tuple[Path, Path]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "out.bundle"
    assert _error(BundleError, lambda: write_bundle(target, _manifest(), MODEL_BYTES, _extra())) == (
        f"cannot write bundle {target}: Not a directory")
    key = load_private_key(keys[0])
    assert _error(BundleError, lambda: sign_bundle(bundle_path, key, target)) == (
        f"cannot write bundle {target}: Not a directory")


# --------------------------------------------------------------------------- reading


def test_read_errors_name_the_file(tmp_path: Path, bundle_path: Path) -> None:
    assert _error(BundleError, lambda: read_bundle(tmp_path)) == (
        f"bundle {tmp_path} is a directory, expected a bundle file")
    through_file = bundle_path / "x.bundle"
    assert _error(BundleError, lambda: read_bundle(through_file)) == (
        f"cannot read bundle {through_file}: Not a directory")
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a zip")
    assert _error(BundleError, lambda: read_bundle(junk)).startswith(f"{junk} is not a bundle")
    assert read_bundle(bundle_path).path == bundle_path


def test_dot_dot_member_is_an_unsafe_path(bundle_path: Path) -> None:
    members = _members(bundle_path)
    members[".."] = b"evil"
    _rezip(bundle_path, members)
    assert "has an unsafe path" in _error(BundleError, lambda: read_bundle(bundle_path))


def test_members_with_regular_file_modes_are_accepted(bundle_path: Path) -> None:
    """Archives made by ``zip`` or ``ZipFile.write`` carry S_IFREG and permission bits."""
    _rezip(bundle_path, _members(bundle_path), mode=stat.S_IFREG | 0o644)
    assert read_bundle(bundle_path).model_bytes == MODEL_BYTES


@pytest.mark.parametrize("kind", [stat.S_IFDIR, stat.S_IFIFO, stat.S_IFLNK])
def test_members_that_are_not_regular_files_are_refused(bundle_path: Path, kind: int) -> None:
    _rezip(bundle_path, _members(bundle_path), mode=kind | 0o755)
    assert "is not a regular file" in _error(BundleError, lambda: read_bundle(bundle_path))


def test_member_size_bound_is_inclusive(bundle_path: Path) -> None:
    size = len(MODEL_BYTES)
    assert read_bundle(bundle_path, limits=BundleLimits(model_bytes=size)).model_bytes == MODEL_BYTES
    assert _error(BundleError, lambda: read_bundle(bundle_path, limits=BundleLimits(model_bytes=size - 1))) == (
        f"{bundle_path}: {MODEL} is {size} bytes, more than the {size - 1} bytes a device accepts "
        "(max_model_mb); refusing the bundle")


def test_manifest_size_bound_is_inclusive(bundle_path: Path) -> None:
    size = len(_members(bundle_path)[MANIFEST])
    assert read_bundle(bundle_path, limits=BundleLimits(manifest_bytes=size)).manifest.name == "unit"
    assert _error(BundleError, lambda: read_bundle(bundle_path, limits=BundleLimits(manifest_bytes=size - 1))) == (
        f"{bundle_path}: {MANIFEST} is {size} bytes, more than the {size - 1} bytes a device accepts; "
        "refusing the bundle")


def test_corrupt_member_is_named(bundle_path: Path) -> None:
    """A damaged deflate stream (zlib.error, not a BadZipFile) is a BundleError like any other damage."""
    data = bytearray(bundle_path.read_bytes())
    start = data.index(b"PK\x03\x04")  # the first local header: the manifest, deflated
    name_len, extra_len = int.from_bytes(data[start + 26:start + 28], "little"), int.from_bytes(
        data[start + 28:start + 30], "little")
    body = start + 30 + name_len + extra_len
    data[body + 5] ^= 0xFF
    bundle_path.write_bytes(bytes(data))
    message = _error(BundleError, lambda: read_bundle(bundle_path))
    assert message.startswith(f"{bundle_path}: member {MANIFEST} is corrupt (")


def test_signature_can_be_forced_or_waived(bundle_path: Path, keys: tuple[Path, Path]) -> None:
    unsigned = read_bundle(bundle_path)
    assert unsigned.signature_verified is False and unsigned.signature is None
    # a pinned key but the check explicitly waived
    assert read_bundle(bundle_path, keys[1], require_signature=False).signature_verified is False
    # no key but a signature forced: refused, saying why
    assert "is not signed but a signature is required" in _error(
        SignatureError, lambda: read_bundle(bundle_path, None, require_signature=True))
    sign_bundle(bundle_path, load_private_key(keys[0]))
    assert _error(SignatureError, lambda: read_bundle(bundle_path, None, require_signature=True)) == (
        f"{bundle_path}: a signature is required but no public key is configured")
    assert read_bundle(bundle_path, keys[1]).signature_verified is True


def test_invalid_manifest_names_the_field(bundle_path: Path) -> None:
    members = _members(bundle_path)
    manifest = json.loads(members[MANIFEST])
    manifest["name"] = 5
    members[MANIFEST] = json.dumps(manifest).encode()
    _rezip(bundle_path, members)
    message = _error(BundleError, lambda: read_bundle(bundle_path))
    assert message.startswith(f"{bundle_path}: invalid manifest at name: ")
    members[MANIFEST] = b"[1, 2]"
    _rezip(bundle_path, members)
    assert _error(BundleError, lambda: read_bundle(bundle_path)).startswith(
        f"{bundle_path}: invalid manifest at manifest: ")


def test_listed_but_missing_and_uncovered_members_are_named(bundle_path: Path) -> None:
    original = _members(bundle_path)
    members = dict(original)
    del members[LABELS]
    _rezip(bundle_path, members)
    assert _error(BundleError, lambda: read_bundle(bundle_path)) == (
        f"{bundle_path}: {LABELS} is listed in the manifest but missing")
    members = dict(original)
    manifest = json.loads(members[MANIFEST])
    del manifest["files"][REPORT]
    members[MANIFEST] = json.dumps(manifest).encode()
    _rezip(bundle_path, members)
    assert _error(BundleError, lambda: read_bundle(bundle_path)) == (
        f"{bundle_path}: {REPORT} is not covered by the manifest checksums")


def test_extract_writes_every_member_and_the_signature_only_when_there_is_one(
    tmp_path: Path, bundle_path: Path, keys: tuple[Path, Path]
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    extract_bundle(read_bundle(bundle_path), plain)
    assert sorted(p.name for p in plain.iterdir()) == sorted([MANIFEST, MODEL, LABELS, REPORT])
    assert (plain / MODEL).read_bytes() == MODEL_BYTES
    assert (plain / MANIFEST).read_bytes() == _members(bundle_path)[MANIFEST]
    sign_bundle(bundle_path, load_private_key(keys[0]))
    signed = tmp_path / "signed"
    signed.mkdir()
    extract_bundle(read_bundle(bundle_path, keys[1]), signed)
    assert (signed / SIGNATURE).read_bytes() == _members(bundle_path)[SIGNATURE]
    assert sorted(p.name for p in signed.iterdir()) == sorted([MANIFEST, MODEL, LABELS, REPORT, SIGNATURE])


# --------------------------------------------------------------------------- installed model directories


def _installed(bundle_path: Path, directory: Path, public_key: Path | None = None) -> Path:
    """``bundle_path`` extracted into ``directory`` as the store installs it (``models/<sha256>/``)."""
    directory.mkdir()
    extract_bundle(read_bundle(bundle_path, public_key), directory)
    return directory


def test_read_bundle_dir_reads_every_member_of_an_installed_model(tmp_path: Path, bundle_path: Path) -> None:
    directory = _installed(bundle_path, tmp_path / "model")
    bundle = read_bundle_dir(str(directory))  # type: ignore[arg-type]  # a str is taken as a path
    assert bundle.path == directory
    assert bundle.model_bytes == MODEL_BYTES  # kept (keep_model=True), not streamed away
    assert bundle.manifest_bytes == _members(bundle_path)[MANIFEST]
    assert dict(bundle.files) == {LABELS: _extra()[LABELS], REPORT: _extra()[REPORT]}
    assert bundle.labels == ["a", "b", "c"] and bundle.report == {"size_ratio": 0.25}
    assert (bundle.signature, bundle.signature_verified) == (None, False)


def test_read_bundle_dir_applies_the_limits_given(tmp_path: Path, bundle_path: Path) -> None:
    directory = _installed(bundle_path, tmp_path / "model")
    size = len(MODEL_BYTES)
    assert read_bundle_dir(directory, limits=BundleLimits(model_bytes=size)).model_bytes == MODEL_BYTES
    assert _error(BundleError, lambda: read_bundle_dir(directory, limits=BundleLimits(model_bytes=size - 1))) == (
        f"{directory}: {MODEL} is {size} bytes, more than the {size - 1} bytes a device accepts (max_model_mb); "
        "refusing the bundle")


def test_read_bundle_dir_checks_the_signature_with_the_key_given(tmp_path: Path, bundle_path: Path,
                                                                  keys: tuple[Path, Path]) -> None:
    unsigned = _installed(bundle_path, tmp_path / "unsigned")
    assert _error(SignatureError, lambda: read_bundle_dir(unsigned, keys[1])) == (
        f"{unsigned} is not signed but a signature is required; sign it with `edge-deploy sign`")
    assert not read_bundle_dir(unsigned, keys[1], require_signature=False).signature_verified  # waived
    sign_bundle(bundle_path, load_private_key(keys[0]))
    signed = _installed(bundle_path, tmp_path / "signed", keys[1])
    assert read_bundle_dir(signed, keys[1]).signature_verified


def test_read_bundle_dir_names_the_directory_in_its_errors(tmp_path: Path, bundle_path: Path) -> None:
    directory = _installed(bundle_path, tmp_path / "model")
    weights = directory / MODEL
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(data))
    assert _error(BundleError, lambda: read_bundle_dir(directory)) == (
        f"{directory}: {MODEL} does not match the manifest sha256 (altered or corrupt)")


def test_read_bundle_dir_takes_only_regular_files_as_members(tmp_path: Path, bundle_path: Path) -> None:
    """A symlink (or a directory) under a member's name is no member, even when it leads to the right
    bytes: an installed model is plain files (guards S_ISREG of _DirectoryMembers.size)."""
    directory = _installed(bundle_path, tmp_path / "model")
    elsewhere = tmp_path / "labels-elsewhere.txt"
    (directory / LABELS).rename(elsewhere)
    (directory / LABELS).symlink_to(elsewhere)
    assert _error(BundleError, lambda: read_bundle_dir(directory)) == (
        f"{directory}: {LABELS} is listed in the manifest but missing")
    (directory / LABELS).unlink()
    (directory / LABELS).mkdir()
    assert _error(BundleError, lambda: read_bundle_dir(directory)) == (
        f"{directory}: {LABELS} is listed in the manifest but missing")


def test_read_manifest_bytes_names_the_bundle_in_its_errors(tmp_path: Path, bundle_path: Path) -> None:
    members = _members(bundle_path)
    del members[MANIFEST]
    incomplete = tmp_path / "incomplete.bundle"
    _rezip(incomplete, members)
    assert _error(BundleError, lambda: read_manifest_bytes(incomplete)) == (
        f"{incomplete} has no {MANIFEST}; it is not a complete bundle")
    data = bytearray(bundle_path.read_bytes())
    start = data.index(b"PK\x03\x04")  # the first local header: the manifest, deflated
    name_len, extra_len = int.from_bytes(data[start + 26:start + 28], "little"), int.from_bytes(
        data[start + 28:start + 30], "little")
    data[start + 30 + name_len + extra_len + 5] ^= 0xFF
    bundle_path.write_bytes(bytes(data))
    assert _error(BundleError, lambda: read_manifest_bytes(bundle_path)).startswith(
        f"{bundle_path}: member {MANIFEST} is corrupt (")


# --------------------------------------------------------------------------- unpacking (the store's path)


def test_unpack_streams_the_model_to_disk_and_keeps_no_copy(tmp_path: Path, bundle_path: Path) -> None:
    # The store unpacks a bundle without holding the model in memory: the result's model_bytes is empty.
    # Kills bundle._finish mutants 24, 47, 48 (model_bytes None), 49 (b"XXXX") and
    # unpack_bundle mutant 30 (keep_model=True: the whole model kept in memory).
    directory = tmp_path / "model"
    directory.mkdir()
    bundle = unpack_bundle(bundle_path, directory)
    assert bundle.model_bytes == b""
    assert (directory / MODEL).read_bytes() == MODEL_BYTES
    assert sorted(p.name for p in directory.iterdir()) == sorted([MANIFEST, MODEL, LABELS, REPORT])
    assert bundle.labels == ["a", "b", "c"] and bundle.report == {"size_ratio": 0.25}


def test_unpack_passes_the_signature_choice_on(tmp_path: Path, bundle_path: Path, keys: tuple[Path, Path]) -> None:
    # Kills unpack_bundle mutant 19 (require_signature=None: a pinned key would then demand a signature
    # the caller waived, and a signature the caller forced would be waived without a key).
    waived = tmp_path / "waived"
    waived.mkdir()
    assert unpack_bundle(bundle_path, waived, keys[1], require_signature=False).signature_verified is False
    forced = tmp_path / "forced"
    forced.mkdir()
    assert _error(SignatureError, lambda: unpack_bundle(bundle_path, forced, None, require_signature=True)) == (
        f"{bundle_path} is not signed but a signature is required; sign it with `edge-deploy sign`")


def test_a_bundle_without_labels_or_report_reads_with_empty_ones(tmp_path: Path) -> None:
    # labels.txt and report.json are optional members. Kills bundle._finish mutant 45 (a missing
    # report.json read as b"XXXX", refused as "not valid JSON").
    path = tmp_path / "bare.bundle"
    write_bundle(path, _manifest(), MODEL_BYTES, {})
    bundle = read_bundle(path)
    assert (bundle.labels, bundle.report, dict(bundle.files)) == ([], {}, {})
    directory = tmp_path / "bare"
    directory.mkdir()
    unpacked = unpack_bundle(path, directory)
    assert (unpacked.labels, unpacked.report, dict(unpacked.files)) == ([], {}, {})
    assert sorted(p.name for p in directory.iterdir()) == sorted([MANIFEST, MODEL])


# --------------------------------------------------------------------------- strict JSON (manifest, report)
# edge_agent.util.strict_json parses every manifest and report.json; its exact rules, at their bounds.


def test_strict_json_depth_counts_lists_and_objects_only() -> None:
    assert strict_json.depth(1, 5) == 0
    assert strict_json.depth([], 5) == 1
    assert strict_json.depth({"a": [1, {"b": {}}], "c": []}, 5) == 4
    assert strict_json.depth([[], [[[]]], []], 10) == 4  # the deepest branch, whichever comes first


def test_strict_json_depth_follows_object_values_not_keys() -> None:
    nested: object = {}
    for _ in range(3):
        nested = {"k": nested}
    assert strict_json.depth(nested, 10) == 4


def test_strict_json_depth_stops_past_the_limit_only() -> None:
    assert strict_json.depth([[[[]]]], 4) == 4  # at the limit: the whole value is counted
    assert strict_json.depth([[[[[]]]]], 3) == 4  # past it: counting stops at limit + 1
    assert strict_json.depth([[[]], [[[[[]]]]]], 3) == 4


def test_strict_json_nesting_bound_is_inclusive() -> None:
    at_limit = "[" * strict_json.MAX_DEPTH + "]" * strict_json.MAX_DEPTH
    assert strict_json.depth(strict_json.loads(at_limit), 100) == strict_json.MAX_DEPTH
    deeper = "[" * (strict_json.MAX_DEPTH + 1) + "]" * (strict_json.MAX_DEPTH + 1)
    assert _error(strict_json.StrictJSONError, lambda: strict_json.loads(deeper)) == "nested deeper than 64 levels"
    objects = '{"a": ' * 3 + "1" + "}" * 3
    assert strict_json.loads(objects, max_depth=3) == {"a": {"a": {"a": 1}}}
    assert _error(strict_json.StrictJSONError, lambda: strict_json.loads(objects, max_depth=2)) == (
        "nested deeper than 2 levels")


def test_strict_json_reads_values_and_floats_as_written() -> None:
    assert strict_json.loads(b'{"a": 1.5, "b": [true, null, "x"], "c": {"d": -2e3}}') == {
        "a": 1.5, "b": [True, None, "x"], "c": {"d": -2000.0}}


def test_strict_json_errors_name_the_problem_in_one_line() -> None:
    def error(text: str | bytes) -> str:
        return _error(strict_json.StrictJSONError, lambda: strict_json.loads(text))

    long_key = "k" * 50
    assert error(f'{{"{long_key}": 1, "{long_key}": 2}}') == f"duplicate key {'k' * 40!r}"
    long_number = "1" * 50 + "e999"
    assert error(f"[{long_number}]") == f"{'1' * 40} is out of range"
    assert error("[NaN]") == "NaN is not a number JSON allows"
    assert error("[-Infinity]") == "-Infinity is not a number JSON allows"
    assert error(b'["\xff"]') == "not UTF-8 text (byte 2)"
    assert error('{"a": }') == "Expecting value: line 1 column 7 (char 6)"
    assert error("[" * 100_000 + "]" * 100_000) == "nested deeper than 64 levels"  # a RecursionError inside json


# --------------------------------------------------------------------------- the end record and block reads


def _zip_of(path: Path, members: dict[str, bytes], comment: bytes = b"", zip64: bool = False) -> Path:
    """A stored zip of ``members``; ``zip64`` writes the zip64 end record and its locator too."""
    limit = zipfile.ZIP_FILECOUNT_LIMIT
    if zip64:
        zipfile.ZIP_FILECOUNT_LIMIT = 0  # zipfile writes the zip64 records above this many entries
    try:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
            archive.comment = comment
    finally:
        zipfile.ZIP_FILECOUNT_LIMIT = limit
    return path


def _directory_size(path: Path) -> int:
    data = path.read_bytes()
    pos = data.rfind(b"PK\x05\x06")
    return int.from_bytes(data[pos + 12:pos + 16], "little")


def test_the_end_record_refusal_names_entries_and_directory_size(tmp_path: Path) -> None:
    path = _zip_of(tmp_path / "many.bundle", {f"m{i}": b"" for i in range(6)})
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} has 6 members in a {_directory_size(path)}-byte directory; a bundle has at most 5, refusing it")


def test_a_zip64_bundle_is_refused_as_zip64(tmp_path: Path, bundle_path: Path) -> None:
    path = _zip_of(tmp_path / "zip64.bundle", _members(bundle_path), zip64=True)
    with zipfile.ZipFile(path) as archive:
        assert len(archive.namelist()) == 4  # a valid zip, only written the zip64 way
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} has 4 members in a {_directory_size(path)}-byte directory (zip64); a bundle has at most 5, "
        "refusing it")


def test_a_zip64_bundle_with_the_longest_comment_is_refused(tmp_path: Path, bundle_path: Path) -> None:
    """The locator stands 20 bytes before an end record followed by a 65 535-byte comment: a tail of
    only the record and its comment misses it (mutmut ``_check_end_record`` 13 found that gap), and
    zipfile would then parse whatever directory the zip64 record declares."""
    path = _zip_of(tmp_path / "zip64-comment.bundle", _members(bundle_path), comment=b"c" * 0xFFFF, zip64=True)
    data = path.read_bytes()
    assert data[-(22 + 0xFFFF) - 20:][:4] == b"PK\x06\x07"  # the locator, just outside record + comment
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} has 4 members in a {_directory_size(path)}-byte directory (zip64); a bundle has at most 5, "
        "refusing it")


def test_a_zip64_locator_at_the_very_start_is_found(tmp_path: Path) -> None:
    """A file of only the zip64 locator and the end record: the locator starts at byte 0."""
    locator = b"PK\x06\x07" + bytes(16)
    end = b"PK\x05\x06" + bytes(18)
    path = tmp_path / "bare.bundle"
    path.write_bytes(locator + end)
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} has 0 members in a 0-byte directory (zip64); a bundle has at most 5, refusing it")


def test_the_central_directory_size_bound_is_inclusive(tmp_path: Path) -> None:
    """Five entries with long names: a directory of exactly 64 KiB passes this check (the names are
    refused next), one byte more is refused before zipfile parses it."""
    def bundle_of(total: int) -> Path:
        lengths = [(total - 5 * 46) // 5] * 4
        lengths.append(total - 5 * 46 - sum(lengths))
        path = _zip_of(tmp_path / f"{total}.bundle", {chr(97 + i) * n: b"" for i, n in enumerate(lengths)})
        assert _directory_size(path) == total
        return path

    at_limit = bundle_of(64 * 1024)
    assert "is not expected in a bundle" in _error(BundleError, lambda: read_bundle(at_limit))
    over = bundle_of(64 * 1024 + 1)
    assert _error(BundleError, lambda: read_bundle(over)) == (
        f"{over} has 5 members in a 65537-byte directory; a bundle has at most 5, refusing it")


def test_the_last_end_record_signature_is_the_end_record(tmp_path: Path) -> None:
    """An end record signature inside a stored member (labels.txt here) is not the end record."""
    fake = b"PK\x05\x06" + bytes(6) + b"\x06\x06" + b"\x7f\x7f\x7f\x00"  # 1542 entries, a huge directory
    extra = {LABELS: b"a\n" + fake + b"\nc\n", REPORT: b"{}"}
    packed = tmp_path / "packed.bundle"
    write_bundle(packed, _manifest(), MODEL_BYTES, extra)
    path = _zip_of(tmp_path / "stored.bundle", _members(packed))
    assert fake in path.read_bytes()
    assert read_bundle(path).labels == ["a", fake.decode(), "c"]


def test_a_truncated_end_record_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "short.bundle"
    path.write_bytes(b"x" * 100 + b"PK\x05\x06" + bytes(5))
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} is not a bundle (not a zip archive); build one with edge-convert")


def test_an_end_record_at_the_start_of_a_full_length_tail_is_checked(tmp_path: Path) -> None:
    """A comment of the largest size puts the end record at the first byte of the tail read."""
    path = _zip_of(tmp_path / "comment.bundle", {f"m{i}": b"" for i in range(6)}, comment=b"c" * 0xFFFF)
    assert _error(BundleError, lambda: read_bundle(path)).startswith(f"{path} has 6 members in a ")


class _Recording(io.BytesIO):
    def __init__(self, data: bytes, fail: OSError | None = None) -> None:
        super().__init__(data)
        self.sizes: list[int | None] = []
        self.fail = fail

    def read(self, size: int | None = -1, /) -> bytes:
        self.sizes.append(size)
        if self.fail is not None:
            raise self.fail
        return super().read(size)


class _OneMember:
    def __init__(self, stream: _Recording) -> None:
        self.stream = stream

    def size(self, name: str) -> int | None:
        return len(self.stream.getvalue())

    def open(self, name: str) -> _Recording:
        return self.stream

    def names(self) -> list[str]:
        return [LABELS]


def test_members_are_read_in_blocks_of_one_mib(tmp_path: Path) -> None:
    """Never the whole member at once: a member that lies about its size is stopped one block past its limit."""
    stream = _Recording(b"x" * (3 << 20))
    _, data = bundle._stream(_OneMember(stream), LABELS, tmp_path, BundleLimits())
    assert data == b"x" * (3 << 20)
    assert stream.sizes == [1 << 20] * 4


def test_a_member_that_cannot_be_read_names_the_os_reason(tmp_path: Path) -> None:
    stream = _Recording(b"x", fail=OSError(5, "Input/output error"))
    assert _error(BundleError, lambda: bundle._stream(_OneMember(stream), LABELS, tmp_path, BundleLimits())) == (
        f"{tmp_path}: cannot read {LABELS}: Input/output error")


def test_the_signature_has_its_own_small_limit(tmp_path: Path, bundle_path: Path) -> None:
    assert BundleLimits().of(SIGNATURE) == 1024 < BundleLimits().of(LABELS)
    members = _members(bundle_path)
    members[SIGNATURE] = b"s" * 1025
    path = tmp_path / "big-signature.bundle"
    _rezip(path, members)
    assert _error(BundleError, lambda: read_bundle(path, require_signature=False)) == (
        f"{path}: {SIGNATURE} is 1025 bytes, more than the 1024 bytes a device accepts; refusing the bundle")


@pytest.mark.parametrize(("entries", "directory"), [(0xFFFE, 0), (1, 0x8000_0000)])
def test_end_record_counts_are_unsigned(tmp_path: Path, entries: int, directory: int) -> None:
    path = tmp_path / "counts.bundle"
    path.write_bytes(b"PK\x05\x06" + bytes(6) + entries.to_bytes(2, "little") + directory.to_bytes(4, "little")
                     + bytes(6))
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path} has {entries} members in a {directory}-byte directory; a bundle has at most 5, refusing it")


class _Unopenable(_OneMember):
    def open(self, name: str) -> _Recording:
        raise OSError(13, "Permission denied")


def test_a_member_that_cannot_be_opened_names_the_os_reason(tmp_path: Path) -> None:
    members = _Unopenable(_Recording(b"x"))
    assert _error(BundleError, lambda: bundle._stream(members, LABELS, tmp_path, BundleLimits())) == (
        f"{tmp_path}: cannot read {LABELS}: Permission denied")


def _damage_local_header(bundle_path: Path, member: str, path: Path) -> Path:
    """A copy of the bundle with ``member``'s local file header signature overwritten."""
    with zipfile.ZipFile(bundle_path) as archive:
        offset = archive.getinfo(member).header_offset
    data = bytearray(bundle_path.read_bytes())
    data[offset:offset + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    return path


def test_a_member_with_a_damaged_local_header_is_corrupt(tmp_path: Path, bundle_path: Path) -> None:
    path = _damage_local_header(bundle_path, LABELS, tmp_path / "damaged.bundle")
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path}: member {LABELS} is corrupt (Bad magic number for file header)")


def test_each_member_is_streamed_with_its_own_limit(tmp_path: Path, bundle_path: Path) -> None:
    """A model larger than the text members' limit reads (the model's limit applies to it)."""
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", MODEL, 5, None)
    assert len(read_bundle(big).model_bytes) == 5 << 20 > BundleLimits().text_bytes


def test_a_member_that_inflates_past_its_limit_is_stopped(tmp_path: Path) -> None:
    limits = BundleLimits(text_bytes=(3 << 20) // 2)
    at_limit = _OneMember(_Recording(b"x" * limits.text_bytes))
    assert len(bundle._stream(at_limit, LABELS, tmp_path, limits)[1]) == limits.text_bytes
    over = _OneMember(_Recording(b"x" * (2 << 20)))
    assert _error(BundleError, lambda: bundle._stream(over, LABELS, tmp_path, limits)) == (
        f"{tmp_path}: {LABELS} inflates to more than {limits.text_bytes} bytes; refusing the bundle")


def test_an_installed_manifest_over_its_limit_is_refused_by_its_size(tmp_path: Path, bundle_path: Path) -> None:
    directory = tmp_path / "installed"
    directory.mkdir()
    extract_bundle(read_bundle(bundle_path), directory)
    size = (directory / MANIFEST).stat().st_size
    limits = BundleLimits(manifest_bytes=size - 1)
    assert _error(BundleError, lambda: read_bundle_dir(directory, limits=limits)) == (
        f"{directory}: {MANIFEST} is {size} bytes, more than the {size - 1} bytes a device accepts; "
        "refusing the bundle")


def test_an_empty_installed_manifest_is_invalid_not_too_large(tmp_path: Path, bundle_path: Path) -> None:
    directory = tmp_path / "installed"
    directory.mkdir()
    extract_bundle(read_bundle(bundle_path), directory)
    (directory / MANIFEST).write_bytes(b"")
    message = _error(BundleError, lambda: read_bundle_dir(directory, limits=BundleLimits(manifest_bytes=0)))
    assert message.startswith(f"{directory}: invalid manifest at manifest: invalid JSON: ")


def test_a_damaged_signature_member_names_the_bundle(tmp_path: Path, bundle_path: Path,
                                                     keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle_path, load_private_key(keys[0]))
    path = _damage_local_header(bundle_path, SIGNATURE, tmp_path / "damaged-signature.bundle")
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path}: member {SIGNATURE} is corrupt (Bad magic number for file header)")


def test_a_damaged_model_member_names_the_bundle(tmp_path: Path, bundle_path: Path) -> None:
    path = _damage_local_header(bundle_path, MODEL, tmp_path / "damaged-model.bundle")
    assert _error(BundleError, lambda: read_bundle(path)) == (
        f"{path}: member {MODEL} is corrupt (Bad magic number for file header)")


def test_unpack_never_holds_the_model_in_memory(tmp_path: Path, bundle_path: Path) -> None:
    """Python's allocations while unpacking an 8 MiB model stay well below the model's size."""
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", MODEL, 8, None)
    target = tmp_path / "out"
    target.mkdir()
    tracemalloc.start()
    try:
        unpack_bundle(big, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (target / MODEL).stat().st_size == 8 << 20
    assert peak < 6 << 20  # about 3 MiB: one block in, one out; a kept model alone is 8
