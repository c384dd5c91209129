"""Hostile bundles that are well-formed zips: sizes over the device's limits (declared or lied
about), archives zipfile would spend memory or a traceback on, manifests that are not strict JSON,
labels and reports the agent could not read, and models that need a newer agent. Each is refused
with one line, before anything is used."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.cli.main import main as agent_main
from edge_agent.errors import BundleError
from edge_agent.model.bundle import (
    LABELS,
    MANIFEST,
    MAX_TEXT_BYTES,
    MODEL,
    REPORT,
    BundleLimits,
    read_bundle,
    read_manifest_bytes,
)
from edge_agent.model.keys import load_private_key
from tests import bundle_bombs
from tests.bundle_samples import zip_members
from tests.tiny_store import make_bundle, shared


def _error(path: Path, **kw: Any) -> str:
    with pytest.raises(BundleError) as info:
        read_bundle(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def colours() -> Path:
    """A real, unsigned classifier bundle (``edge-agent check`` runs it)."""
    return shared("limits-colours", lambda d: make_bundle(d / "colours.bundle"))


def test_a_text_member_over_its_limit_is_refused_on_its_declared_size(tmp_path: Path, bundle_path: Path) -> None:
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", LABELS, 8, None)
    assert big.stat().st_size < 200_000  # 8 MiB of labels deflate to a small file
    assert _error(big) == (f"{big}: {LABELS} is {8 << 20} bytes, more than the {MAX_TEXT_BYTES} bytes a device "
                           "accepts; refusing the bundle")


def test_a_zip_that_lies_about_a_size_is_refused_while_inflating(tmp_path: Path, bundle_path: Path) -> None:
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", REPORT, 8, None)
    lying = bundle_bombs.declaring(big, tmp_path / "lying.bundle", REPORT, 100)
    assert _error(lying).startswith(f"{lying}: member {REPORT} is corrupt (Bad CRC-32")


def test_the_model_limit_is_configurable(tmp_path: Path, bundle_path: Path) -> None:
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", MODEL, 3, None)
    assert len(read_bundle(big).model_bytes) == 3 << 20
    assert _error(big, limits=BundleLimits.with_model_mb(2)) == (
        f"{big}: {MODEL} is {3 << 20} bytes, more than the {2 << 20} bytes a device accepts (max_model_mb); "
        "refusing the bundle")


def test_a_model_size_that_differs_from_the_manifest_is_refused_before_reading_it(tmp_path: Path,
                                                                                  bundle_path: Path) -> None:
    lying = bundle_bombs.declaring(bundle_path, tmp_path / "lying.bundle", MODEL, 10_000)
    assert _error(lying) == f"{lying}: model.tflite does not match the manifest sha256 (altered or corrupt)"


def test_a_central_directory_of_many_entries_is_refused_before_zipfile_parses_it(tmp_path: Path) -> None:
    path = tmp_path / "many.bundle"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(1000):
            archive.writestr(f"m{i}", b"")
    assert _error(path).startswith(f"{path} has 1000 members in a ")


@pytest.mark.parametrize(("patch", "expected"), [
    ({"method": 99}, f"bundle member '{LABELS}' uses compression method 99; bundles use stored or deflate"),
    ({"method": 12}, f"bundle member '{LABELS}' uses compression method 12; bundles use stored or deflate"),
    ({"flags": 0x1}, f"bundle member '{LABELS}' is encrypted; bundles are signed, not encrypted"),
])
def test_unsupported_compression_and_encryption_are_one_line(tmp_path: Path, bundle_path: Path,
                                                             patch: dict[str, int], expected: str) -> None:
    path = bundle_bombs.header_patched(bundle_path, tmp_path / "odd.bundle", LABELS, **patch)
    assert _error(path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(("raw", "expected"), [
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested deeper than 64 levels"),
    (b'{"validation": {"a": ' + b"[" * 80 + b"]" * 80 + b"}}",  # parses, then too deep for the schema
     "invalid JSON: nested deeper than 64 levels"),
])
def test_a_deeply_nested_manifest_is_one_line(tmp_path: Path, bundle_path: Path, raw: bytes, expected: str) -> None:
    path = bundle_bombs.with_files(bundle_path, tmp_path / "deep.bundle", None, raw_manifest=raw)
    assert _error(path) == f"{path}: invalid manifest at manifest: {expected}"


def _duplicate_name(data: dict[str, Any]) -> bytes:
    text = json.dumps(data)
    return text.replace('"name": "unit"', '"name": "unit", "name": "other"', 1).encode()


def _golden_atol(value: str):  # type: ignore[no-untyped-def]
    def edit(data: dict[str, Any]) -> bytes:
        data["golden"][0]["atol"] = "ATOL"
        return json.dumps(data).replace('"ATOL"', value).encode()
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_duplicate_name, "invalid JSON: duplicate key 'name'"),
    (_golden_atol("Infinity"), "invalid JSON: Infinity is not a number JSON allows"),
    (_golden_atol("NaN"), "invalid JSON: NaN is not a number JSON allows"),
    (_golden_atol("1e999"), "invalid JSON: 1e999 is out of range"),
])
def test_manifests_with_duplicate_keys_or_non_finite_numbers_are_refused(tmp_path: Path, bundle_path: Path,
                                                                         edit: Any, expected: str) -> None:
    raw = edit(json.loads(zip_members(bundle_path)[MANIFEST]))
    path = bundle_bombs.with_files(bundle_path, tmp_path / "odd.bundle", None, raw_manifest=raw)
    assert _error(path) == f"{path}: invalid manifest at manifest: {expected}"


def test_a_model_needing_a_newer_agent_is_refused(tmp_path: Path, bundle_path: Path) -> None:
    def needs(version: str) -> Path:
        return bundle_bombs.with_files(bundle_path, tmp_path / f"{version}.bundle", None,
                                       manifest=lambda m: m.update(min_runtime_version=version))

    assert read_bundle(needs(__version__)).manifest.min_runtime_version == __version__
    assert read_bundle(needs("0.0.9")).manifest.min_runtime_version == "0.0.9"
    newer = needs("99.1")
    assert _error(newer) == (f"{newer}: the model needs edge-agent 99.1 or newer, this is {__version__}; "
                             "upgrade the agent or re-convert the model")


@pytest.mark.parametrize(("files", "expected"), [
    ({"labels_txt": b"\xff\xfe red\n"}, f"{LABELS} is not UTF-8 text (byte 0); save it as UTF-8"),
    ({"report_json": b"{not json"}, f"{REPORT} is not valid JSON ("),
    ({"report_json": b"[1, 2]"}, f"{REPORT} must hold a JSON object, not list"),
    ({"report_json": b'{"a": 1, "a": 2}'}, f"{REPORT} is not valid JSON (duplicate key 'a')"),
])
def test_labels_and_reports_the_agent_cannot_read_are_refused(tmp_path: Path, bundle_path: Path,
                                                              files: dict[str, bytes], expected: str) -> None:
    path = bundle_bombs.with_files(bundle_path, tmp_path / "bad.bundle", None, **files)
    assert _error(path).startswith(f"{path}: {expected}")


def test_a_bad_labels_file_is_refused_even_when_the_manifest_names_the_labels(tmp_path: Path,
                                                                            bundle_path: Path) -> None:
    path = bundle_bombs.with_files(bundle_path, tmp_path / "bad.bundle", None, labels_txt=b"\xff\n",
                                   manifest=lambda m: m["output"].update(labels=["a", "b", "c"]))
    assert _error(path) == f"{path}: {LABELS} is not UTF-8 text (byte 0); save it as UTF-8"


@pytest.mark.parametrize("case", ["labels", "report", "nested", "compression", "encrypted", "runtime", "infinity"])
def test_check_reports_a_hostile_bundle_in_one_line(tmp_path: Path, colours: Path, case: str, capsys) -> None:
    target = tmp_path / "hostile.bundle"
    if case == "labels":
        bundle_bombs.with_files(colours, target, None, labels_txt=b"\xff\xfe\n")
    elif case == "report":
        bundle_bombs.with_files(colours, target, None, report_json=b"{not json")
    elif case == "nested":
        bundle_bombs.with_files(colours, target, None, raw_manifest=b"[" * 50_000 + b"]" * 50_000)
    elif case == "compression":
        bundle_bombs.header_patched(colours, target, REPORT, method=14 + 85)
    elif case == "encrypted":
        bundle_bombs.header_patched(colours, target, LABELS, flags=0x1)
    elif case == "runtime":
        bundle_bombs.with_files(colours, target, None, manifest=lambda m: m.update(min_runtime_version="9.0"))
    else:
        raw = json.dumps(json.loads(zip_members(colours)[MANIFEST]) | {"latency_budget_ms": "X"})
        bundle_bombs.with_files(colours, target, None, raw_manifest=raw.replace('"X"', "Infinity").encode())
    assert agent_main(["check", "--bundle", str(target), "--state-dir", str(tmp_path / "s")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge-agent: error: {target}"), captured.err
    assert captured.out == ""


def test_a_signed_bundle_with_an_unreadable_report_is_refused_with_the_key(tmp_path: Path, colours: Path,
                                                                          keys: tuple[Path, Path]) -> None:
    path = bundle_bombs.with_files(colours, tmp_path / "signed.bundle", load_private_key(keys[0]),
                                   report_json=b"\x00not json")
    assert _error(path, public_key=keys[1]).startswith(f"{path}: {REPORT} is not valid JSON (")


def test_read_manifest_bytes_reads_only_the_manifest(tmp_path: Path, bundle_path: Path) -> None:
    assert read_manifest_bytes(bundle_path) == zip_members(bundle_path)[MANIFEST]
    big = bundle_bombs.inflating(bundle_path, tmp_path / "big.bundle", LABELS, 8, None)
    with pytest.raises(BundleError, match="more than the 4194304 bytes a device accepts"):
        read_manifest_bytes(big)  # the archive's shape is still checked
    not_zip = tmp_path / "not.bundle"
    not_zip.write_bytes(b"hello")
    with pytest.raises(BundleError, match="is not a bundle"):
        read_manifest_bytes(not_zip)
