"""Bundle writing and (mostly) hostile reading: checksums, signatures, unsafe archives."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from edge_agent.errors import BundleError, SignatureError
from edge_agent.model.bundle import LABELS, MANIFEST, MODEL, REPORT, SIGNATURE, read_bundle, sign_bundle, write_bundle
from edge_agent.model.keys import generate_keypair, load_private_key, load_public_key
from tests.bundle_samples import MODEL_BYTES
from tests.bundle_samples import sample_extra as _extra
from tests.bundle_samples import sample_manifest as _manifest
from tests.bundle_samples import zip_members as _members


def _rezip(path: Path, members: dict[str, bytes], extra: list[zipfile.ZipInfo | tuple[str, bytes]] = ()
           ) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for item in extra:
            if isinstance(item, tuple):
                archive.writestr(item[0], item[1])
            else:
                archive.writestr(item, b"payload")
    path.write_bytes(buffer.getvalue())


def test_round_trip(bundle_path: Path) -> None:
    bundle = read_bundle(bundle_path)
    assert bundle.model_bytes == MODEL_BYTES
    assert bundle.labels == ["a", "b", "c"]
    assert bundle.report == {"size_ratio": 0.25}
    assert bundle.manifest.model.size_bytes == len(MODEL_BYTES)
    assert set(bundle.manifest.files) == {LABELS, REPORT}
    assert not bundle.signature_verified
    assert bundle.manifest.golden[0].input_array(bundle.manifest.inputs[0]).shape == (1, 4, 4, 1)


def test_write_leaves_no_temp_files(bundle_path: Path) -> None:
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == ["unit.bundle"]


def test_altered_model_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    members[MODEL] = members[MODEL][:-1] + b"\x00"
    _rezip(bundle_path, members)
    with pytest.raises(BundleError, match=r"model\.tflite does not match"):
        read_bundle(bundle_path)


def test_altered_manifest_refused_by_signature(bundle_path: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle_path, load_private_key(keys[0]))
    assert read_bundle(bundle_path, keys[1]).signature_verified
    members = _members(bundle_path)
    manifest = json.loads(members[MANIFEST])
    manifest["latency_budget_ms"] = 999.0
    members[MANIFEST] = json.dumps(manifest).encode()
    _rezip(bundle_path, members)
    with pytest.raises(SignatureError, match="does not verify"):
        read_bundle(bundle_path, keys[1])


def test_altered_labels_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    members[LABELS] = b"x\ny\nz\n"
    _rezip(bundle_path, members)
    with pytest.raises(BundleError, match=r"labels\.txt does not match"):
        read_bundle(bundle_path)


def test_signature_right_and_wrong_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = tmp_path / "signed.bundle"
    write_bundle(path, _manifest(), MODEL_BYTES, _extra(), sign_key=load_private_key(keys[0]))
    assert read_bundle(path, load_public_key(keys[1])).signature_verified
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    generate_keypair(other_private, other_public)
    with pytest.raises(SignatureError):
        read_bundle(path, other_public)


def test_unsigned_bundle_refused_when_key_pinned(bundle_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        read_bundle(bundle_path, keys[1])


def test_private_key_file_mode(keys: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "sub/model.tflite", "..\\x", "a/../../b"])
def test_unsafe_member_names_refused(bundle_path: Path, name: str) -> None:
    members = _members(bundle_path)
    _rezip(bundle_path, members, [(name, b"evil")])
    with pytest.raises(BundleError, match="unsafe path"):
        read_bundle(bundle_path)


def test_symlink_member_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    del members[LABELS]
    info = zipfile.ZipInfo(LABELS)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    _rezip(bundle_path, members, [info])
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(bundle_path)


def test_extra_member_refused(bundle_path: Path) -> None:
    _rezip(bundle_path, _members(bundle_path), [("notes.txt", b"hello")])
    with pytest.raises(BundleError, match="not expected"):
        read_bundle(bundle_path)


def test_duplicate_member_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rezip(bundle_path, members, [(MODEL, b"other model")])
    with pytest.raises(BundleError, match="duplicate"):
        read_bundle(bundle_path)


def test_signature_file_only_allowed_member(bundle_path: Path) -> None:
    # a stray signature over nothing: present but unverifiable without a key, refused with one
    _rezip(bundle_path, _members(bundle_path), [(SIGNATURE, b"\x00" * 64)])
    assert read_bundle(bundle_path).signature == b"\x00" * 64


def test_not_a_zip_and_missing_members(tmp_path: Path, bundle_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(BundleError, match="not a zip"):
        read_bundle(junk)
    members = _members(bundle_path)
    del members[MODEL]
    _rezip(bundle_path, members)
    with pytest.raises(BundleError, match=r"no model\.tflite"):
        read_bundle(bundle_path)
    with pytest.raises(BundleError, match="not found"):
        read_bundle(tmp_path / "missing.bundle")


def test_unwritable_output_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BundleError, match="cannot write"):
        write_bundle(blocker / "out.bundle", _manifest(), MODEL_BYTES, _extra())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
