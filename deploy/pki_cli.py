"""``edge-deploy pki init | issue | revoke | list | crl``: the command line of :mod:`deploy.pki`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deploy.pki import CRL_DAYS, DEFAULT_DAYS, MAX_DAYS, ROLES, Pki, PkiError

RELOAD_HINT = ("copy it to the broker's crlfile, then `systemctl reload mosquitto` (new connections) or "
               "restart Mosquitto (also drops the revoked device if it is connected)")


def default_pki_dir() -> Path:
    """``$EDGE_DEPLOY_PKI``, else ``$XDG_CONFIG_HOME/edge-deploy/pki`` (``~/.config/edge-deploy/pki``)."""
    explicit = os.environ.get("EDGE_DEPLOY_PKI")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edge-deploy" / "pki"


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be a whole number of days from 1 to {MAX_DAYS}, not {text!r}")
    return value


def _serial(text: str) -> int:
    try:
        value = int(text.removeprefix("0x").replace(":", ""), 16)
    except ValueError:
        value = 0
    if value <= 0 or len(text) > 64:
        raise argparse.ArgumentTypeError(f"must be a certificate serial in hex (pki list), not {text!r}")
    return value


def cmd_init(args: argparse.Namespace) -> int:
    pki = Pki.init(args.dir, days=args.days)
    print(f"fleet CA created in {pki.directory}: ca.crt (give it to the broker and devices), ca.key (mode 0600; "
          f"keep it there), crl.pem (the broker's crlfile)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    if args.role != "server" and (args.dns or args.ip):
        raise PkiError("--dns and --ip are for --role server")
    entry, pair = Pki(args.dir).issue(args.name, role=args.role, days=args.days, dns=args.dns, ips=args.ip,
                                      force=args.force)
    print(f"issued {entry.role} {entry.name}: serial {entry.serial:x}, valid until {entry.not_after:%Y-%m-%d}\n"
          f"{pair.cert}\n{pair.key}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    revoked = pki.revoke(args.name, serial=args.serial)
    for entry in revoked:
        print(f"revoked {entry.role} {entry.name}: serial {entry.serial:x}")
    print(f"{pki.crl} re-signed; {RELOAD_HINT}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    entries = pki.entries()
    if args.json:
        print(json.dumps([{**e.to_json(), "status": e.status()} for e in entries]))
        return 0
    rows = [("SERIAL", "NAME", "ROLE", "NOT AFTER", "STATUS")]
    rows += [(f"{e.serial:x}", e.name, e.role, f"{e.not_after:%Y-%m-%d}", e.status()) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    next_update = pki.crl_next_update()
    print(f"CRL {pki.crl}: " + (f"valid until {next_update:%Y-%m-%d} (pki crl re-signs it)" if next_update
                                 else "missing or unreadable (pki crl writes it)"), file=sys.stderr)
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    crl = pki.refresh_crl(days=args.days)
    print(f"{pki.crl} re-signed: {len(list(crl))} revoked, valid until {crl.next_update_utc:%Y-%m-%d}; "
          f"{RELOAD_HINT}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pki`` and its subcommands on the ``edge-deploy`` parser."""
    p = sub.add_parser("pki", help="fleet CA: client certificates for devices, the broker's certificate, the CRL")
    pki_sub = p.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--dir", type=Path, default=default_pki_dir(),
                            help=f"the CA directory (default $EDGE_DEPLOY_PKI or {default_pki_dir()})")
        return parser

    q = with_dir(pki_sub.add_parser("init", help="create the fleet CA (refuses to replace one)"))
    q.add_argument("--days", type=_days, default=MAX_DAYS, help=f"CA validity (default {MAX_DAYS})")
    q.set_defaults(handler=cmd_init)

    q = with_dir(pki_sub.add_parser("issue", help="issue a certificate: CN = NAME (a device id by default)"))
    q.add_argument("name", metavar="NAME", help="device id, operator identity (fleet, homeassistant) or broker "
                                                "host name")
    q.add_argument("--role", choices=ROLES, default="device",
                   help="device: client cert, CN = device id (default); operator: client cert for fleet or "
                        "homeassistant; server: the broker's cert, SAN = NAME, --dns, --ip")
    q.add_argument("--days", type=_days, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    q.add_argument("--dns", action="append", default=[], help="extra DNS name (server; repeatable)")
    q.add_argument("--ip", action="append", default=[], help="IP address (server; repeatable)")
    q.add_argument("--force", action="store_true",
                   help="issue although NAME has a valid certificate (the old one stays valid until revoked)")
    q.set_defaults(handler=cmd_issue)

    q = with_dir(pki_sub.add_parser("revoke", help="revoke NAME's certificates and re-sign crl.pem"))
    q.add_argument("name", metavar="NAME")
    q.add_argument("--serial", type=_serial, default=None, help="revoke only this one (hex, from pki list)")
    q.set_defaults(handler=cmd_revoke)

    q = with_dir(pki_sub.add_parser("list", help="every certificate issued, with its status"))
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=cmd_list)

    q = with_dir(pki_sub.add_parser("crl", help="re-sign crl.pem with a new expiry"))
    q.add_argument("--days", type=_days, default=CRL_DAYS, help=f"CRL validity (default {CRL_DAYS})")
    q.set_defaults(handler=cmd_crl)
