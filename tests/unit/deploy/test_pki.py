"""The fleet CA (deploy/pki.py, deploy/pki_cli.py): real keys, certificates, CRLs and index files."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy import cli
from deploy.pki import Pki, PkiError


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.init(tmp_path / "pki")


def test_init_makes_a_private_ca_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    code, out, _ = _run(capsys, "pki", "init", "--dir", str(directory))
    assert code == 0 and str(directory) in out
    assert _mode(directory) == 0o700 and _mode(directory / "ca.key") == 0o600
    ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    crl = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key()) and len(list(crl)) == 0  # type: ignore[arg-type]
    key_before = (directory / "ca.key").read_bytes()
    code, _, err = _run(capsys, "pki", "init", "--dir", str(directory))
    assert code == 2 and "already" in err and err.count("\n") == 1
    assert (directory / "ca.key").read_bytes() == key_before
    # a CA made by hand (deploy.certs) is not replaced either
    (directory / "index.json").unlink()
    code, _, err = _run(capsys, "pki", "init", "--dir", str(directory))
    assert code == 2 and "refusing to replace a CA" in err
    assert (directory / "ca.key").read_bytes() == key_before


def test_issue_device_certificate(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "pki", "issue", "cam-01", "--days", "30", "--dir", str(pki.directory))
    assert code == 0
    pair = pki.pair("cam-01")
    assert str(pair.cert) in out and _mode(pair.key) == 0o600
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-01"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    [entry] = pki.entries()
    assert (entry.serial, entry.name, entry.role, entry.status()) == (cert.serial_number, "cam-01", "device", "valid")
    assert entry.not_after == cert.not_valid_after_utc
    raw = json.loads((pki.directory / "index.json").read_text())
    assert raw["certs"][0]["serial"] == f"{cert.serial_number:x}"


@pytest.mark.parametrize(("argv", "message"), [
    (["cam/1"], "invalid device id"),
    (["cam+"], "invalid device id"),
    (["cam-1\n"], "invalid device id"),
    (["c" * 65], "invalid device id"),
    (["fleet"], "operator identity"),
    (["homeassistant"], "operator identity"),
    (["ops", "--role", "operator"], "knows the operator identities"),
    (["cam-1", "--dns", "x"], "--dns and --ip are for --role server"),
])
def test_issue_refuses_bad_names(pki: Pki, capsys: pytest.CaptureFixture[str], argv: list[str],
                                 message: str) -> None:
    code, _, err = _run(capsys, "pki", "issue", *argv, "--dir", str(pki.directory))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert pki.entries() == []


@pytest.mark.parametrize("days", ["0", "3651", "x"])
def test_issue_refuses_bad_validity(pki: Pki, days: str) -> None:
    with pytest.raises(SystemExit):
        cli.main(["pki", "issue", "cam-1", "--days", days, "--dir", str(pki.directory)])


def test_issue_twice_needs_force(pki: Pki) -> None:
    first, _ = pki.issue("cam-01")
    with pytest.raises(PkiError, match="already has a valid certificate"):
        pki.issue("cam-01")
    second, pair = pki.issue("cam-01", force=True)
    assert second.serial != first.serial
    assert x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number == second.serial
    assert pki.active("cam-01") == second


def test_operator_and_server_identities(pki: Pki) -> None:
    _, fleet = pki.issue("fleet", role="operator")
    assert fleet.cert.parent.name == "operator"
    entry, server = pki.issue("broker.example.org", role="server", dns=["mqtt.example.org"], ips=["10.0.0.5"])
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org", "mqtt.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert entry.role == "server"


def test_revoke_lists_the_serial_in_a_signed_crl(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    old, _ = pki.issue("cam-01")
    new, _ = pki.issue("cam-01", force=True)
    other, _ = pki.issue("cam-02")
    code, out, _ = _run(capsys, "pki", "revoke", "cam-01", "--serial", f"{old.serial:x}", "--dir", str(pki.directory))
    assert code == 0 and f"{old.serial:x}" in out and "crlfile" in out
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public)
    assert [r.serial_number for r in crl] == [old.serial]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert pki.active("cam-01") == new
    # revoke by name: every unrevoked certificate of it, and the CRL number goes up
    assert [e.serial for e in pki.revoke("cam-01")] == [new.serial]
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    assert sorted(r.serial_number for r in crl) == sorted([old.serial, new.serial])
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert other.serial not in {r.serial_number for r in crl}
    assert {e.name: e.status() for e in pki.entries() if e.name == "cam-02"} == {"cam-02": "valid"}
    with pytest.raises(PkiError, match="no unrevoked certificate of 'cam-01'"):
        pki.revoke("cam-01")
    pki.issue("cam-01")  # a revoked device may be given a new certificate


def test_list_table_and_json(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = pki.issue("cam-01")
    pki.issue("cam-02")
    pki.revoke("cam-01")
    code, out, err = _run(capsys, "pki", "list", "--dir", str(pki.directory))
    assert code == 0 and "valid until" in err
    lines = out.splitlines()
    assert lines[0].split() == ["SERIAL", "NAME", "ROLE", "NOT", "AFTER", "STATUS"]
    assert lines[1].split()[0::4] == [f"{a.serial:x}", "revoked"]
    code, out, _ = _run(capsys, "pki", "list", "--json", "--dir", str(pki.directory))
    rows = json.loads(out)
    assert [(r["name"], r["status"]) for r in rows] == [("cam-01", "revoked"), ("cam-02", "valid")]


def test_crl_refresh_extends_the_next_update(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "pki", "crl", "--days", "7", "--dir", str(pki.directory))
    assert code == 0 and "0 revoked" in out
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    assert (crl.next_update_utc - crl.last_update_utc).days == 7  # type: ignore[operator]


def test_commands_without_a_ca_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["issue", "cam-01"], ["revoke", "cam-01"], ["list"], ["crl"]):
        code, _, err = _run(capsys, "pki", *argv, "--dir", str(tmp_path / "none"))
        assert code == 2 and "no fleet CA" in err and "pki init" in err, (argv, err)


@pytest.mark.parametrize("damage", [
    b"{", b"[]", b'{"schema": 2, "crl_number": 1, "certs": []}', b'{"schema": 1, "crl_number": 0, "certs": []}',
    b'{"schema": 1, "crl_number": 1, "certs": [{"serial": "zz"}]}',
    b'{"schema": 1, "crl_number": 1, "certs": [{"serial": "-1f", "name": "a", "role": "device", '
    b'"not_before": "2026-01-01T00:00:00+00:00", "not_after": "2027-01-01T00:00:00+00:00", "revoked_at": null}]}',
    b'{"schema": 1, "crl_number": 1, "certs": [{"serial": "1f", "name": "a/b", "role": "device", '
    b'"not_before": "2026-01-01T00:00:00+00:00", "not_after": "2027-01-01T00:00:00+00:00", "revoked_at": null}]}',
    b'{"schema": 1, "crl_number": 1, "certs": [{"serial": "1f", "name": "a", "role": "device", '
    b'"not_before": "2026-01-01T00:00:00", "not_after": "2027-01-01T00:00:00+00:00", "revoked_at": null}]}',
])
def test_a_damaged_index_is_one_line_error(pki: Pki, damage: bytes) -> None:
    (pki.directory / "index.json").write_bytes(damage)
    with pytest.raises(PkiError, match="is damaged") as info:
        pki.entries()
    assert "\n" not in str(info.value)


def test_parallel_issues_all_recorded(pki: Pki) -> None:
    """install-agent issues for several hosts at once: the lock keeps every entry."""
    names = [f"cam-{i}" for i in range(8)]
    errors: list[BaseException] = []

    def issue(name: str) -> None:
        try:
            pki.issue(name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(e.name for e in pki.entries()) == sorted(names)
