"""Small certificate tool for the broker and the fleet: a CA, a server cert, client certs.

The client certificate's common name is the device id; Mosquitto's
``use_identity_as_username`` turns it into the user name that the per-device
ACL (``pattern … edge/v1/%u/…``) matches.

    python -m deploy.certs ca --dir pki
    python -m deploy.certs server --dir pki --name broker.example.org --ip 10.0.0.5
    python -m deploy.certs client --dir pki --name cam-01
    python -m deploy.certs client --dir pki --name fleet     # the operator identity

Files: ``ca.crt``/``ca.key``, ``<name>.crt``/``<name>.key`` (keys mode 0600), each written
atomically. These are the building blocks; ``edge-deploy pki`` (:mod:`deploy.pki`) is the fleet
CA on top of them: an index of issued certificates, revocation and the CRL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.device_id import is_device_id
from edge_agent.util.fs import atomic_write


class CertError(Exception):
    """A certificate cannot be created (bad name, missing CA …)."""


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    atomic_write(path, data, mode=0o600)  # the temp file is 0600 from the start (mkstemp)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def create_ca(directory: Path, name: str = "edge-fleet CA", days: int = 3650, *, overwrite: bool = True) -> CertPair:
    """Create ``ca.crt``/``ca.key`` in ``directory`` (with ``overwrite=False``, refuse when either exists)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    if not overwrite:
        present = [str(p) for p in (pair.cert, pair.key) if p.exists() or p.is_symlink()]
        if present:
            raise CertError(f"{' and '.join(present)} already exist: refusing to replace a CA "
                            "(every certificate it issued would stop working)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot load the CA from {directory} (run `python -m deploy.certs ca` first): {exc}") \
            from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key must be an EC key created by this tool")
    return cert, key


def issue(
    directory: Path,
    name: str,
    *,
    server: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    out_dir: Path | None = None,
) -> CertPair:
    """Issue a client (CN = ``name``, the device id) or server certificate signed by the CA in ``directory``."""
    if not is_device_id(name):
        raise CertError(f"invalid name {name!r}: letters, digits, '.', '_' and '-' only (it is an MQTT topic level)")
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    end = not_after or (start + dt.timedelta(days=days))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in (dns or [name])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    target = out_dir or directory
    target.mkdir(parents=True, exist_ok=True)
    pair = CertPair(target / f"{name}.crt", target / f"{name}.key")
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def write_crl(directory: Path, revoked: Sequence[tuple[int, dt.datetime]], path: Path, *, days: int = 3650,
              number: int = 1) -> x509.CertificateRevocationList:
    """Write ``path``: a CRL signed by the CA in ``directory`` listing ``revoked`` (serial, when), atomically.

    ``days`` is the CRL's nextUpdate from now: OpenSSL (so Mosquitto) refuses every client
    once it is past, so keep it long and re-sign before it (``edge-deploy pki crl``).
    """
    ca_cert, ca_key = load_ca(directory)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return crl


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_ca = sub.add_parser("ca", help="create ca.crt and ca.key")
    p_ca.add_argument("--dir", type=Path, required=True)
    p_ca.add_argument("--days", type=int, default=3650)
    p_srv = sub.add_parser("server", help="broker certificate (SAN = --name, --dns, --ip)")
    p_srv.add_argument("--dir", type=Path, required=True)
    p_srv.add_argument("--name", required=True)
    p_srv.add_argument("--dns", action="append", default=[])
    p_srv.add_argument("--ip", action="append", default=[])
    p_srv.add_argument("--days", type=int, default=825)
    p_cli = sub.add_parser("client", help="device or operator client certificate (CN = --name)")
    p_cli.add_argument("--dir", type=Path, required=True)
    p_cli.add_argument("--name", required=True)
    p_cli.add_argument("--days", type=int, default=825)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "ca":
            pair = create_ca(args.dir, days=args.days)
        elif args.cmd == "server":
            pair = issue(args.dir, args.name, server=True, dns=[args.name, *args.dns], ips=args.ip, days=args.days)
        else:
            pair = issue(args.dir, args.name, days=args.days)
    except (CertError, ValueError) as exc:
        print(f"certs: error: {exc}", file=sys.stderr)
        return 2
    print(f"{pair.cert}\n{pair.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
