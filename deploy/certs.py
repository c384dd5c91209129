"""Small certificate tool for the broker and the fleet: a CA, a server cert, client certs.

The client certificate's common name is the device id; Mosquitto's
``use_identity_as_username`` turns it into the user name that the per-device
ACL (``pattern … edge/v1/%u/…``) matches.

    python -m deploy.certs ca --dir pki
    python -m deploy.certs server --dir pki --name broker.example.org --ip 10.0.0.5
    python -m deploy.certs client --dir pki --name cam-01
    python -m deploy.certs client --dir pki --name fleet     # the operator identity

Files: ``ca.crt``/``ca.key``, ``<name>.crt``/``<name>.key`` (keys mode 0600).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_ca(directory: Path, name: str = "edge-fleet CA", days: int = 3650) -> CertPair:
    """Create ``ca.crt``/``ca.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
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
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
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
    if not NAME_RE.fullmatch(name):
        raise CertError(f"invalid name {name!r}: letters, digits, '.', '_' and '-' only (it is an MQTT topic level)")
    ca_cert, ca_key = _load_ca(directory)
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
