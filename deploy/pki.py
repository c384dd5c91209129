"""The fleet CA behind ``edge-deploy pki``: issue, revoke and list certificates, keep the CRL.

One directory (mode 0700) holds everything::

    ca.crt  ca.key (0600)     the fleet CA (EC P-256), made by ``pki init``
    crl.pem                   the CRL, re-signed on every revoke (Mosquitto ``crlfile``)
    index.json                every certificate issued: serial, name, role, validity, revocation
    device/<id>.crt .key      client certificates, CN = device id (the broker ACL's %u)
    operator/<name>.crt .key  client certificates of the operator identities (fleet, homeassistant)
    server/<name>.crt .key    the broker's server certificate (SAN = name, --dns, --ip)

Certificates are made by :mod:`deploy.certs`. Every file is written atomically, and
changes hold an exclusive lock on ``.lock``, so parallel ``install-agent`` hosts and two
operators' commands do not lose each other's entries. The directory holds private keys:
keep it on the operator's machine, readable by the operator only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from deploy import certs
from edge_agent.device_id import is_device_id
from edge_agent.errors import EdgeError
from edge_agent.util.fs import atomic_write

ROLES = ("device", "operator", "server")
OPERATOR_NAMES = ("fleet", "homeassistant")  # the identities the shipped edge.acl knows
DEFAULT_DAYS = 825
MAX_DAYS = 3650
CRL_DAYS = 3650
INDEX = "index.json"
CRL = "crl.pem"
LOCK = ".lock"
MAX_INDEX_BYTES = 16 << 20  # ~60 000 entries
SCHEMA = 1


class PkiError(EdgeError):
    """A PKI operation was refused (no CA, bad name, nothing to revoke, damaged index)."""


@dataclass(frozen=True)
class Entry:
    """One issued certificate as recorded in the index."""

    serial: int
    name: str
    role: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None

    def status(self, now: dt.datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``valid``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if (now or _now()) >= self.not_after else "valid"

    def to_json(self) -> dict[str, Any]:
        return {"serial": f"{self.serial:x}", "name": self.name, "role": self.role,
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}

    @classmethod
    def from_json(cls, raw: Any) -> Entry:
        if not isinstance(raw, dict) or set(raw) != {"serial", "name", "role", "not_before", "not_after",
                                                      "revoked_at"}:
            raise ValueError("an entry must have exactly serial, name, role, not_before, not_after, revoked_at")
        name, role, serial, revoked = raw["name"], raw["role"], raw["serial"], raw["revoked_at"]
        if not isinstance(name, str) or not is_device_id(name) or role not in ROLES:
            raise ValueError(f"bad name or role in entry {name!r}")
        if not isinstance(serial, str) or not 0 < len(serial) <= 40:
            raise ValueError(f"bad serial in entry {name!r}")
        number = int(serial, 16)
        if number <= 0:
            raise ValueError(f"bad serial in entry {name!r}")
        return cls(number, name, role, _time(raw["not_before"]), _time(raw["not_after"]),
                   None if revoked is None else _time(revoked))


def _time(value: Any) -> dt.datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("a time must be an ISO 8601 string")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return parsed


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_name(name: str, role: str) -> None:
    """Refuse a name that is not valid for ``role`` (one-line :class:`PkiError`)."""
    if role not in ROLES:
        raise PkiError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not is_device_id(name):
        raise PkiError(f"invalid {'device id' if role == 'device' else 'name'} {name!r}: 1-64 letters, digits, "
                       "'.', '_', '-', starting with a letter or digit (one MQTT topic level)")
    if role == "device" and name in OPERATOR_NAMES:
        raise PkiError(f"{name!r} is an operator identity in the broker ACL; a device may not use it "
                       "(pki issue --role operator)")
    if role == "operator" and name not in OPERATOR_NAMES:
        raise PkiError(f"the shipped ACL knows the operator identities {', '.join(OPERATOR_NAMES)}, not {name!r}; "
                       "any other name is confined to edge/v1/<name>/ like a device")


@dataclass(frozen=True)
class Pki:
    """A fleet CA directory (see the module docstring)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.directory / CRL

    def pair(self, name: str, role: str = "device") -> certs.CertPair:
        """Where the certificate and key of ``name`` live (whether or not issued)."""
        check_name(name, role)
        return certs.CertPair(self.directory / role / f"{name}.crt", self.directory / role / f"{name}.key")

    # ------------------------------------------------------------------ init

    @classmethod
    def init(cls, directory: Path, days: int = MAX_DAYS, name: str = "edge-fleet CA") -> Pki:
        """Create the CA, an empty index and an empty CRL; refuse when a CA is already there."""
        _check_days(days)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki = cls(directory)
        with pki._locked(require_ca=False):
            if (directory / INDEX).exists():
                raise PkiError(f"{directory / INDEX} already exists: {directory} already holds a fleet CA")
            try:
                certs.create_ca(directory, name=name, days=days, overwrite=False)
            except certs.CertError as exc:
                raise PkiError(str(exc)) from exc
            pki._write_crl([], 1)
            pki._save([], 1)
        return pki

    # ------------------------------------------------------------------ index

    def entries(self) -> list[Entry]:
        """Every certificate issued, oldest first."""
        return self._load()[0]

    def active(self, name: str, role: str = "device") -> Entry | None:
        """The newest valid (unrevoked, unexpired) certificate of ``name`` in ``role``, if any."""
        now = _now()
        found = [e for e in self.entries() if e.name == name and e.role == role and e.status(now) == "valid"]
        return found[-1] if found else None  # the index is in issue order

    def _load(self) -> tuple[list[Entry], int]:
        path = self.directory / INDEX
        if not self.ca_cert.is_file():
            raise PkiError(f"no fleet CA in {self.directory} (edge-deploy pki init --dir {self.directory})")
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_INDEX_BYTES + 1)
        except OSError as exc:
            raise PkiError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_INDEX_BYTES:
            raise PkiError(f"{path} is larger than {MAX_INDEX_BYTES >> 20} MiB")
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or not isinstance(raw.get("certs"), list):
                raise ValueError(f"expected {{\"schema\": {SCHEMA}, \"crl_number\": N, \"certs\": [...]}}")
            number = raw.get("crl_number")
            if not isinstance(number, int) or number < 1:
                raise ValueError("crl_number must be a whole number >= 1")
            return [Entry.from_json(item) for item in raw["certs"]], number
        except ValueError as exc:
            raise PkiError(f"{path} is damaged: {exc}") from exc

    def _save(self, entries: Sequence[Entry], crl_number: int) -> None:
        text = json.dumps({"schema": SCHEMA, "crl_number": crl_number,
                           "certs": [e.to_json() for e in entries]}, indent=1)
        atomic_write(self.directory / INDEX, text.encode() + b"\n", mode=0o600)

    @contextlib.contextmanager
    def _locked(self, require_ca: bool = True) -> Iterator[None]:
        """An exclusive lock on the directory (each call opens its own descriptor, so threads exclude
        each other too)."""
        if require_ca and not self.ca_cert.is_file():
            raise PkiError(f"no fleet CA in {self.directory} (edge-deploy pki init --dir {self.directory})")
        try:
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PkiError(f"cannot use {self.directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ issue, revoke, CRL

    def issue(self, name: str, *, role: str = "device", days: int = DEFAULT_DAYS, dns: Sequence[str] = (),
              ips: Sequence[str] = (), force: bool = False) -> tuple[Entry, certs.CertPair]:
        """Issue ``name`` a certificate (CN = name) and record it; refuse when it already has a valid
        one, unless ``force`` (the old one then stays valid until it expires or is revoked)."""
        _check_days(days)
        pair = self.pair(name, role)
        with self._locked():
            entries, number = self._load()
            current = self.active(name, role)
            if current is not None and not force:
                raise PkiError(f"{role} {name!r} already has a valid certificate (serial {current.serial:x}, "
                               f"until {current.not_after:%Y-%m-%d}); use --force for another, or revoke it first")
            pair.cert.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                certs.issue(self.directory, name, server=role == "server", dns=[name, *dns], ips=ips, days=days,
                            out_dir=pair.cert.parent)
                cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            except (certs.CertError, ValueError, OSError) as exc:
                raise PkiError(f"cannot issue {name!r}: {exc}") from exc
            entry = Entry(cert.serial_number, name, role, cert.not_valid_before_utc, cert.not_valid_after_utc)
            self._save([*entries, entry], number)
        return entry, pair

    def revoke(self, name: str, serial: int | None = None) -> list[Entry]:
        """Revoke every unrevoked certificate of ``name`` (any role), or only the one with ``serial``;
        re-sign the CRL. Returns the entries revoked."""
        with self._locked():
            entries, number = self._load()
            now = _now()
            hits = [i for i, e in enumerate(entries) if e.name == name and e.revoked_at is None
                    and (serial is None or e.serial == serial)]
            if not hits:
                which = f" with serial {serial:x}" if serial is not None else ""
                raise PkiError(f"no unrevoked certificate of {name!r}{which} in {self.directory / INDEX}")
            for i in hits:
                entries[i] = replace(entries[i], revoked_at=now)
            # The CRL first: if the index write then fails, the certificate is refused anyway and a
            # second revoke finds it again.
            self._write_crl(entries, number + 1)
            self._save(entries, number + 1)
        return [entries[i] for i in hits]

    def refresh_crl(self, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
        """Re-sign the CRL with a new nextUpdate (``days`` from now)."""
        _check_days(days)
        with self._locked():
            entries, number = self._load()
            crl = self._write_crl(entries, number + 1, days)
            self._save(entries, number + 1)
        return crl

    def _write_crl(self, entries: Sequence[Entry], number: int,
                   days: int = CRL_DAYS) -> x509.CertificateRevocationList:
        revoked = [(e.serial, e.revoked_at) for e in entries if e.revoked_at is not None]
        try:
            return certs.write_crl(self.directory, revoked, self.crl, days=days, number=number)
        except certs.CertError as exc:
            raise PkiError(str(exc)) from exc

    def crl_next_update(self) -> dt.datetime | None:
        """When the current CRL stops being accepted, or None when it cannot be read."""
        try:
            crl = x509.load_pem_x509_crl(self.crl.read_bytes())
        except (OSError, ValueError):
            return None
        return crl.next_update_utc


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise PkiError(f"--days must be 1 to {MAX_DAYS}, not {days}")
