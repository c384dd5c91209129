"""``edge-deploy``: sign model bundles and flash them to devices over SSH.

Talks to devices through the system ``ssh`` and ``scp`` binaries (so the
operator's agent, ``~/.ssh/config`` and jump hosts keep working), always with
``BatchMode=yes`` and ``StrictHostKeyChecking=accept-new`` against a known_hosts
file of its own. The device side is ``edge-agent install-model/rollback/models
--json``; this tool only uploads files and reads their JSON answers.

Several hosts (``--host`` repeated or ``--hosts-file``) are handled in parallel
and summarised in a per-host table. Exit code 0 when every host succeeded, 1 when
one failed, 2 on an operator error or when a host's key does not match the pinned one.

``install-agent`` gives each host its own device id, config and (``--pki``) client
certificate (:mod:`deploy.provision`); ``pki`` is the fleet CA (:mod:`deploy.pki`,
:mod:`deploy.pki_cli`).

This module is the command line (arguments, ``cmd_*``, the result table); running ssh/scp
is :mod:`deploy.ssh`, what is done on each host is :mod:`deploy.actions`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy import pki_cli
from deploy.actions import (
    CREDENTIALS,
    DEFAULT_AGENT_PATH,
    DEFAULT_CONFIG_FILE,
    DEFAULT_PACKAGE,
    DEFAULT_UPLOAD_DIR,
    DEFAULT_VENV,
    INSTANCE_NAME,
    PKI_CREDENTIALS,
    credentials_directory,
    install_agent_one,
    push_one,
    rollback_one,
    status_one,
)
from deploy.answers import printable
from deploy.pki import Pki
from deploy.provision import HostSetup, host_config, plan_device_ids
from deploy.ssh import DeployError, HostResult, Ssh, Target, collect_targets, default_known_hosts
from deploy.wheelhouse import ARCHES, build_wheelhouse, check_wheelhouse
from edge_agent.cli.main import dispatch
from edge_agent.config import SERVICE_STATE_DIR
from edge_agent.errors import EdgeError
from edge_agent.model.bundle import read_bundle, sign_bundle
from edge_agent.model.keys import generate_keypair, load_private_key

EXIT_FAILED = 1
EXIT_REFUSED = 2  # like an operator error: a host key that is not the pinned one
HOST_TIMEOUT_S = 600  # push, rollback, status: an upload over a slow link, an install's smoke test
INSTALL_AGENT_TIMEOUT_S = 3600  # pip on a small board

log = logging.getLogger(__name__)


def _ssh_for(target: Target, args: argparse.Namespace) -> Ssh:
    return Ssh(target=target, identity=args.identity, known_hosts=args.known_hosts,
               connect_timeout=args.connect_timeout, host_timeout=args.host_timeout)


# --------------------------------------------------------------------------- output


def print_table(results: Sequence[HostResult], stream: Any = None) -> None:
    stream = stream or sys.stdout
    rows = [("HOST", "RESULT", "SUMMARY", "DETAIL")]
    rows += [(printable(str(r.target)), "ok" if r.ok else "FAILED", printable(r.summary), printable(r.detail))
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3],
              file=stream)


def _for_each_host(args: argparse.Namespace, action: Callable[[Ssh], HostResult]) -> int:
    targets = collect_targets(args.host, args.hosts_file, args.port)
    args.known_hosts.parent.mkdir(parents=True, exist_ok=True)

    def guarded(target: Target) -> HostResult:
        try:
            return action(_ssh_for(target, args))
        except EdgeError as exc:
            return HostResult(target, False, "error", str(exc))
        except Exception as exc:  # a bug for one host must not hide what happened on the others
            log.debug("edge-deploy failed on %s", target, exc_info=True)
            return HostResult(target, False, "internal error", f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=min(args.parallel, len(targets))) as pool:
        results = list(pool.map(guarded, targets))
    if args.json:
        print(json.dumps([{"host": str(r.target), "ok": r.ok, "summary": r.summary,
                           "detail": r.detail, "data": r.data} for r in results]))
    else:
        print_table(results)
    if any(r.host_key_mismatch for r in results):
        return EXIT_REFUSED
    return 0 if all(r.ok for r in results) else EXIT_FAILED


# --------------------------------------------------------------------------- commands


def cmd_keygen(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--private", args.private), ("--public", args.public)) if value is None]
    if missing:
        raise DeployError(f"keygen needs {' and '.join(f'{m} FILE' for m in missing)}: where to write the "
                          "key pair (e.g. --private ~/.config/edge/signing.key --public signing.pub)")
    if args.private.resolve() == args.public.resolve():
        raise DeployError("--private and --public must be different files")
    for path in (args.private, args.public):
        if (path.exists() or path.is_symlink()) and not args.force:
            raise DeployError(f"{path} exists; use --force to overwrite it")
        if not path.absolute().parent.is_dir():
            raise DeployError(f"cannot write {path}: directory {path.absolute().parent} does not exist")
    try:
        generate_keypair(args.private, args.public)
    except OSError as exc:
        raise DeployError(f"cannot write key file in {Path(exc.filename or args.private).parent}: "
                          f"{exc.strerror or exc}") from exc
    print(f"private key: {args.private} (keep it secret)\npublic key:  {args.public} "
          "(pin it on devices: edge-deploy install-agent --public-key)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    target = sign_bundle(args.bundle, key, output=args.output)
    manifest = read_bundle(target, key.public_key()).manifest
    print(f"signed {target}: {manifest.name} {manifest.version} ({manifest.short_sha})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    _check_device_path("--upload-dir", args.upload_dir)
    if not args.bundle.is_file():
        raise DeployError(f"bundle {args.bundle} not found")
    if args.skip_local_check:
        print(f"pushing {args.bundle} unchecked (the device still verifies it)", file=sys.stderr)
    else:
        manifest = read_bundle(args.bundle, require_signature=False).manifest  # fail early, locally
        print(f"pushing {manifest.name} {manifest.version} ({manifest.short_sha})", file=sys.stderr)
    return _for_each_host(args, lambda ssh: push_one(ssh, args.bundle, args))


def cmd_rollback(args: argparse.Namespace) -> int:
    return _for_each_host(args, lambda ssh: rollback_one(ssh, args))


def cmd_status(args: argparse.Namespace) -> int:
    return _for_each_host(args, lambda ssh: status_one(ssh, args))


def cmd_install_agent(args: argparse.Namespace) -> int:
    _check_device_path("--upload-dir", args.upload_dir)
    _check_device_path("--root", args.root)
    _check_device_path("--venv", args.venv)
    if args.credentials_dir is not None and not Path(args.credentials_dir).is_dir():
        raise DeployError(f"{args.credentials_dir} is not a directory")
    if args.instance is not None and not INSTANCE_NAME.fullmatch(args.instance):
        raise DeployError(f"--instance must be 1-32 of a-z 0-9 _ - (starting with a letter or digit), "
                          f"not {args.instance!r}")
    for path in (args.unit_file, args.config, args.public_key):
        if path is not None and not Path(path).is_file():
            raise DeployError(f"{path} not found")
    if args.wheelhouse is not None:
        check_wheelhouse(args.wheelhouse)
    if args.broker is not None and not args.broker.startswith(("mqtt://", "mqtts://")):
        raise DeployError(f"--broker must be an mqtt:// or mqtts:// URL, not {args.broker!r}")
    pki = None
    if args.pki is not None:
        if args.instance is not None:
            raise DeployError("--pki cannot be used with --instance: every edge-agent@ instance loads its client "
                              "certificate from the same /etc/edge-agent/credentials, so they cannot have one each")
        pki = Pki(args.pki)
        pki.entries()  # fails early, with one line, when it is not a fleet CA
        if args.credentials_dir is not None and any((Path(args.credentials_dir) / n).is_file()
                                                    for n in PKI_CREDENTIALS):
            raise DeployError(f"--pki installs {', '.join(PKI_CREDENTIALS)}; remove them from --credentials-dir")
    targets = collect_targets(args.host, args.hosts_file, args.port)
    ids = plan_device_ids(targets, args.device_id_template, args.instance)
    base = args.config.read_text()
    credentials = credentials_directory(args.instance) if pki is not None else None
    with tempfile.TemporaryDirectory(prefix="edge-deploy-configs.") as tmp:
        hosts: dict[Target, HostSetup] = {}
        for target, device_id in ids.items():
            config = Path(tmp) / f"{device_id}.toml"
            config.write_text(host_config(base, device_id, broker=args.broker, credentials=credentials))
            hosts[target] = HostSetup(device_id, config, pki.pair(device_id) if pki else None,
                                      pki.ca_cert if pki else None)
        return _for_each_host(args, lambda ssh: install_agent_one(ssh, args, print, hosts[ssh.target]))


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    wheels = build_wheelhouse(args.output, args.platform, args.package)
    size = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels for {args.platform} ({size / 1e6:.1f} MB) in {args.output}; install them with "
          f"edge-deploy install-agent --wheelhouse {args.output}")
    return 0


def _host_args(parser: argparse.ArgumentParser, with_agent: bool = True) -> None:
    parser.add_argument("--host", action="append", default=[], metavar="USER@HOST[:PORT]",
                        help="device to act on (repeatable)")
    parser.add_argument("--hosts-file", type=Path, default=None,
                        help="file with one USER@HOST[:PORT] per line (# comments)")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--identity", type=Path, default=None, help="SSH private key")
    parser.add_argument("--known-hosts", type=Path, default=default_known_hosts(),
                        help="known_hosts file (new host keys are accepted once, then pinned)")
    parser.add_argument("--connect-timeout", type=_positive_int, default=10, metavar="SECONDS",
                        help="for the TCP connection and the SSH banner (default 10); a login may take twice "
                             "that plus 5 s, and ssh gives up on a device silent for 3 times that")
    default_timeout = HOST_TIMEOUT_S if with_agent else INSTALL_AGENT_TIMEOUT_S
    parser.add_argument("--host-timeout", type=_positive_int, default=default_timeout, metavar="SECONDS",
                        help=f"everything done on one host, login to answer (default {default_timeout}); "
                             "a host past it fails and the others go on")
    parser.add_argument("--parallel", type=int, default=8, help="hosts handled at once")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    if with_agent:
        parser.add_argument("--state-dir", default=str(SERVICE_STATE_DIR),
                            help=f"device model store (default the service's, {SERVICE_STATE_DIR}; given "
                                 "explicitly so an unprivileged SSH user gets a permission error instead of "
                                 "a private store the service never reads)")
        parser.add_argument("--agent-path", default=DEFAULT_AGENT_PATH,
                            help=f"edge-agent on the device (default {DEFAULT_AGENT_PATH})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds >= 1, not {text!r}")
    return value


def _upload_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upload-dir", default=DEFAULT_UPLOAD_DIR, metavar="DIR",
                        help=f"absolute directory on the device for uploaded files, each removed after use "
                             f"(default {DEFAULT_UPLOAD_DIR})")


def _check_device_path(flag: str, value: str | None) -> None:
    if value is not None and (not str(value).startswith("/") or any(c.isspace() for c in str(value))):
        raise DeployError(f"{flag} must be an absolute path on the device without spaces, not {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-deploy", description="Sign and flash model bundles, install "
                                     "the agent, run the fleet CA.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    p.add_argument("--private", type=Path, metavar="FILE",
                   help="where to write the private key (mode 0600; keep it offline); required")
    p.add_argument("--public", type=Path, metavar="FILE",
                   help="where to write the public key (pin it on devices); required")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(handler=cmd_keygen)

    p = sub.add_parser("sign", help="sign a bundle (detached signature over its manifest)")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    p.add_argument("--output", type=Path, default=None, help="write here instead of in place")
    p.set_defaults(handler=cmd_sign)

    p = sub.add_parser("push", help="upload a bundle and install it on devices")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    _host_args(p)
    p.add_argument("--allow-new-input", action="store_true",
                   help="accept a model whose input differs from the active one")
    p.add_argument("--skip-local-check", action="store_true",
                   help="upload without checking the bundle locally first (the device always checks)")
    _upload_arg(p)
    p.set_defaults(handler=cmd_push)

    p = sub.add_parser("rollback", help="re-activate the previous model on devices")
    _host_args(p)
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("status", help="active and previous model and service state of devices")
    _host_args(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("install-agent", help="install the agent as a systemd service on devices")
    _host_args(p, with_agent=False)
    p.add_argument("--dry-run", action="store_true", help="print every step, change nothing")
    p.add_argument("--package", default=DEFAULT_PACKAGE,
                   help="pip requirement or a local wheel to upload (default: edge-infer)")
    p.add_argument("--wheelhouse", type=Path, default=None, metavar="DIR",
                   help="install from these wheels only (edge-deploy wheelhouse), uploaded to the device: "
                        "no package index needed there; overrides --package")
    p.add_argument("--venv", default=DEFAULT_VENV, help=f"virtualenv on the device ({DEFAULT_VENV})")
    p.add_argument("--unit-file", type=Path, default=None,
                   help="unit to install (default: the shipped edge-agent.service, or edge-agent@.service "
                        "with --instance)")
    p.add_argument("--instance", default=None, metavar="NAME",
                   help="install the edge-agent@.service template and run it as edge-agent@NAME with "
                        "/etc/edge-agent/NAME.toml and /var/lib/edge-agent-NAME: one agent per camera")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE,
                   help="agent config.toml; each host gets a copy with its own device_id")
    p.add_argument("--device-id-template", default=None, metavar="TEMPLATE",
                   help="each host's device id, e.g. 'cam-{host}': {host} is the SSH target's host name made "
                        "into a device id, {short} its part before the first dot, {instance} the --instance "
                        "(default: '{host}', with --instance '{host}-{instance}')")
    p.add_argument("--broker", default=None, metavar="URL", help="set [mqtt] broker in each host's config")
    p.add_argument("--pki", type=Path, default=None, metavar="DIR",
                   help="fleet CA (edge-deploy pki init): give each host a client certificate with CN = its "
                        "device id (reused while valid) and install it, its key and the CA as credentials")
    p.add_argument("--force-config", action="store_true", help="replace an existing device config")
    p.add_argument("--public-key", type=Path, default=None, help="model signing key to pin")
    p.add_argument("--credentials-dir", type=Path, default=None,
                   help=f"local directory with any of {', '.join(CREDENTIALS)} (LoadCredential= files)")
    p.add_argument("--sudo", action="store_true", help="run privileged steps with sudo -n")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="install every file below DIR on the device instead of / and only enable the "
                        "service there (systemctl --root), never start it: a staging tree to inspect or test")
    _upload_arg(p)
    p.set_defaults(handler=cmd_install_agent)

    p = sub.add_parser("wheelhouse", help="download the agent and its dependencies as wheels for devices")
    p.add_argument("--platform", required=True, choices=ARCHES, help="the device's CPU (uname -m)")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="new directory for the wheels")
    p.add_argument("--package", default=None, metavar="WHEEL_OR_REQUIREMENT",
                   help="the agent to resolve (default: this checkout's wheel, or the installed edge-infer)")
    p.set_defaults(handler=cmd_wheelhouse)

    pki_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch("edge-deploy", args)


if __name__ == "__main__":
    sys.exit(main())
