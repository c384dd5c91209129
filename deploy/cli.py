"""``edge-deploy``: sign model bundles and flash them to devices over SSH.

Talks to devices through the system ``ssh`` and ``scp`` binaries (so the
operator's agent, ``~/.ssh/config`` and jump hosts keep working), always with
``BatchMode=yes`` and ``StrictHostKeyChecking=accept-new`` against a known_hosts
file of its own. The device side is ``edge-agent install-model/rollback/models
--json``; this tool only uploads files and reads their JSON answers.

Several hosts (``--host`` repeated or ``--hosts-file``) are handled in parallel
and summarised in a per-host table. Exit code 0 when every host succeeded, 1 when
one failed, 2 on an operator error or when a host's key does not match the pinned one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edge_agent.cli.main import dispatch
from edge_agent.config import SERVICE_STATE_DIR
from edge_agent.errors import EdgeError
from edge_agent.model.bundle import read_bundle, sign_bundle
from edge_agent.model.keys import generate_keypair, load_private_key

DEFAULT_AGENT_PATH = "/opt/edge-agent/venv/bin/edge-agent"
DEFAULT_VENV = "/opt/edge-agent/venv"
DEFAULT_PACKAGE = "edge-infer"
UNIT_PATH = "/etc/systemd/system/edge-agent.service"
CONFIG_DIR = "/etc/edge-agent"
CREDENTIALS = ("mqtt-password", "mqtt-ca.crt", "mqtt-client.crt", "mqtt-client.key")
# Package data (pyproject [tool.setuptools.package-data]), so `install-agent` works from an
# installed wheel too; pip never installs zipped, so these are real files to upload.
# systemd/edge-agent.service at the top of the repository links to the same unit.
DEFAULT_UNIT_FILE = Path(str(resources.files("deploy") / "systemd" / "edge-agent.service"))
DEFAULT_CONFIG_FILE = Path(str(resources.files("deploy") / "agent-config.toml"))
SERVICE_MARKER = "--edge-deploy-service--"
DEFAULT_UPLOAD_DIR = "/tmp"
EXIT_FAILED = 1
EXIT_REFUSED = 2  # like an operator error: a host key that is not the pinned one


class DeployError(EdgeError):
    """A deploy step failed on the operator side (bad arguments, missing files)."""


@dataclass(frozen=True)
class Target:
    """One device: ``user@host`` and the SSH port."""

    host: str
    port: int = 22

    def __str__(self) -> str:
        return self.host if self.port == 22 else f"{self.host}:{self.port}"


@dataclass
class HostResult:
    target: Target
    ok: bool
    summary: str
    detail: str = ""  # one line
    data: dict[str, Any] = field(default_factory=dict)
    host_key_mismatch: bool = False


@dataclass(frozen=True)
class Ssh:
    """How to run commands on and copy files to one target."""

    target: Target
    identity: Path | None
    known_hosts: Path
    connect_timeout: int = 10

    def _options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "LogLevel=ERROR",
        ]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, remote_command: str) -> list[str]:
        return ["ssh", *self._options(), "-p", str(self.target.port), self.target.host, remote_command]

    def scp_argv(self, local: Path, remote: str) -> list[str]:
        return ["scp", "-q", *self._options(), "-P", str(self.target.port), str(local),
                f"{self.target.host}:{remote}"]

    def check_connection(self) -> HostResult | None:
        """Log in and run ``true``; None when that works, else a failed result saying why not.

        Every command checks first: scp hides the reason (``scp: Connection closed``), and a
        refused login or a changed host key should read as such, not as a failed install.
        """
        proc = self.run("true", timeout=self.connect_timeout + 30)
        if proc.returncode == 0:
            return None
        return _connection_failure(self, proc) or HostResult(self.target, False, "unreachable",
                                                              _ssh_failure(proc))

    def run(self, remote_command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run(self.ssh_argv(remote_command), timeout)

    def copy(self, local: Path, remote: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run(self.scp_argv(local, remote), timeout)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {exc.timeout:.0f} s")
    except FileNotFoundError as exc:
        raise DeployError(f"{argv[0]} not found; install the OpenSSH client") from exc


def _last_json(text: str) -> dict[str, Any] | None:
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _ssh_failure(proc: subprocess.CompletedProcess[str]) -> str:
    text = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
            if not line.startswith("scp: failed to upload")]  # scp's summary after the reason
    return text[-1] if text else f"exit code {proc.returncode}"


_CONNECT_RE = re.compile(r"connect to host \S+ port \d+: (?P<reason>.+)")
_RESOLVE_RE = re.compile(r"Could not resolve hostname \S+?: (?P<reason>.+)")


def _connection_failure(ssh: Ssh, proc: subprocess.CompletedProcess[str]) -> HostResult | None:
    """A failed result when ssh itself failed: changed host key, refused login, no connection."""
    target = ssh.target
    detail = _connect_failure(target, proc)
    if detail is None:
        return None
    stderr = proc.stderr or ""
    host = target.host.rpartition("@")[2]
    where = f"{host}:{target.port}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
        pattern = host if target.port == 22 else f"[{host}]:{target.port}"
        return HostResult(
            target, False, "host key mismatch",
            f"refused: the host key of {where} is not the one pinned in {ssh.known_hosts} (a reinstalled "
            "device, or someone in between); if the device was reinstalled, forget the old key with "
            f"ssh-keygen -f {shlex.quote(str(ssh.known_hosts))} -R {shlex.quote(pattern)}",
            host_key_mismatch=True,
        )
    if match := re.search(r"Permission denied \((?P<methods>[^)]*)\)", stderr):
        user = target.host.rpartition("@")[0] or "your user name"
        key = f"the key {ssh.identity}" if ssh.identity else "your SSH keys"
        return HostResult(
            target, False, "login refused",
            f"{where} refused the login as {user} with {key} ({match.group('methods')}); "
            "check --identity and the device's authorized_keys",
        )
    return HostResult(target, False, "unreachable", detail)


def _connect_failure(target: Target, proc: subprocess.CompletedProcess[str]) -> str | None:
    """``cannot connect to HOST:PORT: REASON`` when ssh itself failed (exit 255), else None."""
    if proc.returncode not in (124, 255):  # 124: our timeout; 255: ssh's own errors
        return None
    where = f"{target.host.rpartition('@')[2]}:{target.port}"
    text = (proc.stderr or "").strip()
    for line in reversed(text.splitlines()):
        if match := _CONNECT_RE.search(line):
            return f"cannot connect to {where}: {match.group('reason').strip()}"
        if match := _RESOLVE_RE.search(line):
            return f"cannot connect to {where}: unknown host name ({match.group('reason').strip()})"
    last = text.splitlines()[-1].removeprefix("ssh: ") if text else f"ssh exit code {proc.returncode}"
    return f"cannot connect to {where}: {last}"


def describe_model(model: dict[str, Any] | None) -> str:
    if not model:
        return "none"
    return f"{model.get('name')} {model.get('version')} ({str(model.get('sha256', ''))[:12]})"


# --------------------------------------------------------------------------- targets


def parse_target(text: str, default_port: int) -> Target:
    """``user@host``, ``user@host:port`` or ``host``."""
    text = text.strip()
    if not text or any(c.isspace() for c in text) or text.startswith("-"):
        raise DeployError(f"invalid host {text!r}; expected user@host[:port]")
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and ":" not in head:
        return Target(head, int(tail))
    return Target(text, default_port)


def collect_targets(hosts: Sequence[str], hosts_file: Path | None, port: int) -> list[Target]:
    texts = list(hosts)
    if hosts_file is not None:
        try:
            lines = hosts_file.read_text().splitlines()
        except OSError as exc:
            raise DeployError(f"cannot read hosts file {hosts_file}: {exc.strerror}") from exc
        texts += [line.split("#", 1)[0].strip() for line in lines]
    targets = [parse_target(t, port) for t in texts if t]
    if not targets:
        raise DeployError("no hosts given; use --host USER@HOST (repeatable) or --hosts-file FILE")
    return list(dict.fromkeys(targets))


def default_known_hosts() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-deploy" / "known_hosts"


def _ssh_for(target: Target, args: argparse.Namespace) -> Ssh:
    return Ssh(target=target, identity=args.identity, known_hosts=args.known_hosts,
               connect_timeout=args.connect_timeout)


def _agent_command(args: argparse.Namespace, *words: str) -> str:
    argv = [args.agent_path, *words]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    return shlex.join(argv)


# --------------------------------------------------------------------------- per-host actions


def _upload_dir(args: argparse.Namespace) -> str:
    return str(args.upload_dir).rstrip("/") or "/"


def _upload_failure(ssh: Ssh, local: Path, remote: str, proc: subprocess.CompletedProcess[str]) -> str:
    """Remove what the failed upload left on the device; one line saying why it failed.

    scp (SFTP) reports a full or read-only disk only as ``Failure``, so the device is asked.
    """
    directory = remote.rpartition("/")[0] or "/"
    q = shlex.quote(directory)
    probe = ssh.run(f"rm -f {shlex.quote(remote)}; if [ ! -d {q} ]; then echo missing; "
                    f"elif [ ! -w {q} ]; then echo read-only; else df -Pk {q} | awk 'NR == 2 {{print $4}}'; fi",
                    timeout=ssh.connect_timeout + 30)
    answer = probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else ""
    where = f"cannot upload to {directory} on the device"
    need_kib = -(-local.stat().st_size // 1024)
    if answer == "missing":
        return f"{where}: no such directory (see --upload-dir)"
    if answer == "read-only":
        return f"{where}: not writable (a read-only filesystem or no permission; see --upload-dir)"
    if answer.isdigit() and int(answer) < need_kib:
        return f"{where}: {answer} KiB free, {need_kib} KiB needed (see --upload-dir)"
    if probe.returncode != 0:
        return f"{_ssh_failure(proc)} (a partial upload may be left at {remote})"
    return _ssh_failure(proc)


def push_one(ssh: Ssh, bundle: Path, args: argparse.Namespace) -> HostResult:
    refused = ssh.check_connection()
    if refused is not None:
        return refused
    remote = f"{_upload_dir(args)}/edge-deploy-{uuid.uuid4().hex}.bundle"
    copied = ssh.copy(bundle, remote)
    if copied.returncode != 0:
        return HostResult(ssh.target, False, "upload failed", _upload_failure(ssh, bundle, remote, copied))
    extra = ["--allow-new-input"] if args.allow_new_input else []
    install = _agent_command(args, "install-model", remote, "--json", *extra)
    command = f"{install}; rc=$?; rm -f {shlex.quote(remote)}; exit $rc"
    proc = ssh.run(command)
    answer = _last_json(proc.stdout)
    if answer is None:
        return HostResult(ssh.target, False, "install failed", _ssh_failure(proc))
    active = describe_model(answer.get("active"))
    if answer.get("ok"):
        status = str(answer.get("status", "installed"))
        return HostResult(ssh.target, True, f"{status}; active {active}",
                          f"previous {describe_model(answer.get('previous'))}", answer)
    return HostResult(ssh.target, False, f"refused at {answer.get('step') or 'install'}; active {active}",
                      str(answer.get("error", "")), answer)


def rollback_one(ssh: Ssh, args: argparse.Namespace) -> HostResult:
    refused = ssh.check_connection()
    if refused is not None:
        return refused
    proc = ssh.run(_agent_command(args, "rollback", "--json"))
    answer = _last_json(proc.stdout)
    if answer is None:
        return HostResult(ssh.target, False, "rollback failed", _ssh_failure(proc))
    active = describe_model(answer.get("active"))
    if answer.get("ok"):
        return HostResult(ssh.target, True, f"rolled back; active {active}",
                          f"previous {describe_model(answer.get('previous'))}", answer)
    return HostResult(ssh.target, False, f"rollback refused; active {active}",
                      str(answer.get("error", "")), answer)


_SERVICE_PROBE = (
    "if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; "
    "then systemctl is-active edge-agent 2>/dev/null; else echo unknown; fi"
)


def status_one(ssh: Ssh, args: argparse.Namespace) -> HostResult:
    refused = ssh.check_connection()
    if refused is not None:
        return refused
    command = f"{_agent_command(args, 'models', '--json')}; echo {SERVICE_MARKER}; {_SERVICE_PROBE}"
    proc = ssh.run(command)
    models_part, _, service_part = proc.stdout.partition(SERVICE_MARKER)
    answer = _last_json(models_part)
    service = service_part.strip().splitlines()[-1] if service_part.strip() else "unknown"
    if answer is None:
        return HostResult(ssh.target, False, "status failed", _ssh_failure(proc))
    answer["service"] = service
    summary = f"active {describe_model(answer.get('active'))}"
    detail = f"previous {describe_model(answer.get('previous'))}; service {service}"
    if answer.get("probation"):
        detail += "; on probation"
    return HostResult(ssh.target, True, summary, detail, answer)


@dataclass(frozen=True)
class Step:
    """One install-agent step: a description and either a remote command or an upload."""

    description: str
    command: str = ""
    upload: Path | None = None
    destination: str = ""


def install_agent_steps(args: argparse.Namespace) -> list[Step]:
    """Everything ``install-agent`` does, in order (``--dry-run`` prints exactly these).

    Uploaded files go to ``--upload-dir`` under random names and are removed by the step
    that installs them, whether it succeeds or not. With ``--root`` every path on the
    device is below that directory and the service is only enabled there, not started.
    """
    sudo = "sudo -n " if args.sudo else ""
    root = str(args.root).rstrip("/") if args.root else ""
    venv = shlex.quote(f"{root}{args.venv}")
    unit_path = f"{root}{UNIT_PATH}"
    config_dir = f"{root}{CONFIG_DIR}"
    q_config = shlex.quote(config_dir)
    upload_dir = _upload_dir(args)
    steps = [
        Step("create the virtualenv",
             f"{sudo}sh -c {shlex.quote(f'test -x {venv}/bin/python || python3 -m venv {venv}')}"),
    ]
    package = args.package
    pip = f"{sudo}{venv}/bin/pip --disable-pip-version-check install --upgrade"
    if Path(package).is_file():
        remote_pkg = f"{upload_dir}/{Path(package).name}"  # pip needs the wheel's own file name
        steps += [
            Step(f"upload {Path(package).name}", upload=Path(package), destination=remote_pkg),
            Step("install the agent (base profile, no TensorFlow)",
                 _then_remove(f"{pip} {shlex.quote(remote_pkg)}", remote_pkg)),
        ]
    else:
        steps.append(Step("install the agent (base profile, no TensorFlow)", f"{pip} {shlex.quote(package)}"))
    tmp_unit = f"{upload_dir}/edge-agent.service.{uuid.uuid4().hex[:8]}"
    steps += [
        Step("upload the unit file", upload=args.unit_file, destination=tmp_unit),
        Step(f"install the unit file as {unit_path}",
             _then_remove(f"{sudo}install -D -m 0644 {shlex.quote(tmp_unit)} {shlex.quote(unit_path)}", tmp_unit)),
        Step(f"create {config_dir} and its credentials directory",
             f"{sudo}install -d -m 0755 {q_config} && {sudo}install -d -m 0700 {q_config}/credentials"
             + "".join(f" && {sudo}sh -c {shlex.quote(_touch_private(f'{q_config}/credentials/{c}'))}"
                       for c in CREDENTIALS)),
    ]
    if args.credentials_dir is not None:
        for name in CREDENTIALS:
            local = Path(args.credentials_dir) / name
            if not local.is_file():
                continue
            tmp_cred = f"{upload_dir}/edge-agent-cred.{uuid.uuid4().hex[:8]}"
            steps += [
                Step(f"upload credential {name}", upload=local, destination=tmp_cred),
                Step(f"install it as {config_dir}/credentials/{name} (mode 0600)",
                     _then_remove(f"{sudo}install -m 0600 {shlex.quote(tmp_cred)} {q_config}/credentials/{name}",
                                  tmp_cred)),
            ]
    tmp_config = f"{upload_dir}/edge-agent-config.{uuid.uuid4().hex[:8]}.toml"
    keep = "" if args.force_config else f"test -e {q_config}/config.toml || "
    install_config = f"{keep}install -m 0644 {shlex.quote(tmp_config)} {q_config}/config.toml"
    steps += [
        Step("upload the agent configuration", upload=args.config, destination=tmp_config),
        Step(f"install the configuration as {config_dir}/config.toml"
             + ("" if args.force_config else " (kept if present)"),
             _then_remove(f"{sudo}sh -c {shlex.quote(install_config)}", tmp_config)),
    ]
    if args.public_key is not None:
        tmp_key = f"{upload_dir}/edge-agent-trusted.{uuid.uuid4().hex[:8]}.pub"
        steps += [
            Step("upload the model signing public key", upload=args.public_key, destination=tmp_key),
            Step(f"pin it as {config_dir}/trusted.pub",
                 _then_remove(f"{sudo}install -m 0644 {shlex.quote(tmp_key)} {q_config}/trusted.pub", tmp_key)),
        ]
    if root:
        steps.append(Step(f"enable the service in {root} (not started)",
                          f"{sudo}systemctl --root={shlex.quote(root)} enable edge-agent"))
    else:
        steps.append(Step("enable and start the service",
                          f"{sudo}systemctl daemon-reload && {sudo}systemctl enable --now edge-agent"
                          f" && systemctl is-active edge-agent"))
    return steps


def _then_remove(command: str, uploaded: str) -> str:
    """``command``, then remove the uploaded file whatever happened; the exit code is the command's."""
    return f"{command}; rc=$?; rm -f {shlex.quote(uploaded)}; exit $rc"


def _touch_private(path: str) -> str:
    return f"test -e {path} || install -m 0600 /dev/null {path}"


def install_agent_one(ssh: Ssh, args: argparse.Namespace, out: Callable[[str], None]) -> HostResult:
    if not args.dry_run:
        refused = ssh.check_connection()
        if refused is not None:
            return refused
    steps = install_agent_steps(args)
    for number, step in enumerate(steps, 1):
        argv = ssh.scp_argv(step.upload, step.destination) if step.upload else ssh.ssh_argv(step.command)
        out(f"[{ssh.target}] step {number}/{len(steps)}: {step.description}")
        out(f"    {shlex.join(argv)}")
        if args.dry_run:
            continue
        proc = _run(argv, timeout=900)
        if proc.returncode != 0:
            detail = (_upload_failure(ssh, step.upload, step.destination, proc) if step.upload
                      else _ssh_failure(proc))
            return HostResult(ssh.target, False, f"failed at step {number}: {step.description}", detail)
    if args.dry_run:
        return HostResult(ssh.target, True, f"dry run: {len(steps)} steps shown")
    if args.root:
        return HostResult(ssh.target, True, f"agent installed under {args.root}; service enabled there, not started")
    return HostResult(ssh.target, True, "agent installed and started")


# --------------------------------------------------------------------------- output


def print_table(results: Sequence[HostResult], stream: Any = None) -> None:
    stream = stream or sys.stdout
    rows = [("HOST", "RESULT", "SUMMARY", "DETAIL")]
    rows += [(str(r.target), "ok" if r.ok else "FAILED", r.summary, r.detail) for r in results]
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
    for path in (args.unit_file, args.config, args.public_key):
        if path is not None and not Path(path).is_file():
            raise DeployError(f"{path} not found")
    return _for_each_host(args, lambda ssh: install_agent_one(ssh, args, print))


def _host_args(parser: argparse.ArgumentParser, with_agent: bool = True) -> None:
    parser.add_argument("--host", action="append", default=[], metavar="USER@HOST[:PORT]",
                        help="device to act on (repeatable)")
    parser.add_argument("--hosts-file", type=Path, default=None,
                        help="file with one USER@HOST[:PORT] per line (# comments)")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--identity", type=Path, default=None, help="SSH private key")
    parser.add_argument("--known-hosts", type=Path, default=default_known_hosts(),
                        help="known_hosts file (new host keys are accepted once, then pinned)")
    parser.add_argument("--connect-timeout", type=int, default=10, help="seconds")
    parser.add_argument("--parallel", type=int, default=8, help="hosts handled at once")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    if with_agent:
        parser.add_argument("--state-dir", default=str(SERVICE_STATE_DIR),
                            help=f"device model store (default the service's, {SERVICE_STATE_DIR}; given "
                                 "explicitly so an unprivileged SSH user gets a permission error instead of "
                                 "a private store the service never reads)")
        parser.add_argument("--agent-path", default=DEFAULT_AGENT_PATH,
                            help=f"edge-agent on the device (default {DEFAULT_AGENT_PATH})")


def _upload_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upload-dir", default=DEFAULT_UPLOAD_DIR, metavar="DIR",
                        help=f"absolute directory on the device for uploaded files, each removed after use "
                             f"(default {DEFAULT_UPLOAD_DIR})")


def _check_device_path(flag: str, value: str | None) -> None:
    if value is not None and (not str(value).startswith("/") or any(c.isspace() for c in str(value))):
        raise DeployError(f"{flag} must be an absolute path on the device without spaces, not {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-deploy", description="Sign and flash model bundles.")
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
    p.add_argument("--venv", default=DEFAULT_VENV, help=f"virtualenv on the device ({DEFAULT_VENV})")
    p.add_argument("--unit-file", type=Path, default=DEFAULT_UNIT_FILE)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="agent config.toml")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch("edge-deploy", args)


if __name__ == "__main__":
    sys.exit(main())
