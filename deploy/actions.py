"""Per-host ``edge-deploy`` actions: push, rollback, status and install-agent on one device.

Each action logs in first (:meth:`Ssh.check_connection`), uploads what it needs to
``--upload-dir`` under a random name, runs ``edge-agent install-model/rollback/models
--json`` (or the install-agent steps) and turns the agent's JSON answer into a
:class:`HostResult`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from deploy.ssh import HostResult, Ssh, run_argv, ssh_failure

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


def describe_model(model: dict[str, Any] | None) -> str:
    if not model:
        return "none"
    return f"{model.get('name')} {model.get('version')} ({str(model.get('sha256', ''))[:12]})"


def _agent_command(args: argparse.Namespace, *words: str) -> str:
    argv = [args.agent_path, *words]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    return shlex.join(argv)


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
        return f"{ssh_failure(proc)} (a partial upload may be left at {remote})"
    return ssh_failure(proc)


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
        return HostResult(ssh.target, False, "install failed", ssh_failure(proc))
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
        return HostResult(ssh.target, False, "rollback failed", ssh_failure(proc))
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
        return HostResult(ssh.target, False, "status failed", ssh_failure(proc))
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
        proc = run_argv(argv, timeout=900)
        if proc.returncode != 0:
            detail = (_upload_failure(ssh, step.upload, step.destination, proc) if step.upload
                      else ssh_failure(proc))
            return HostResult(ssh.target, False, f"failed at step {number}: {step.description}", detail)
    if args.dry_run:
        return HostResult(ssh.target, True, f"dry run: {len(steps)} steps shown")
    if args.root:
        return HostResult(ssh.target, True, f"agent installed under {args.root}; service enabled there, not started")
    return HostResult(ssh.target, True, "agent installed and started")
