"""Per-host ``edge-deploy`` actions: push, rollback, status and install-agent on one device.

Each action logs in first (:meth:`Ssh.check_connection`), uploads what it needs to
``--upload-dir`` under a random name, runs ``edge-agent install-model/rollback/models
--json`` (or the install-agent steps) and turns the agent's JSON answer, checked by
:mod:`deploy.answers`, into a :class:`HostResult`.
"""

from __future__ import annotations

import argparse
import re
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from deploy.answers import AnswerError, ChangeAnswer, StatusAnswer, describe_model, parse_answer
from deploy.pki import Pki
from deploy.provision import HostSetup, device_certificate
from deploy.ssh import Completed, HostResult, Ssh, ssh_failure
from deploy.wheelhouse import check_wheelhouse

DEFAULT_AGENT_PATH = "/opt/edge-agent/venv/bin/edge-agent"
DEFAULT_VENV = "/opt/edge-agent/venv"
DEFAULT_PACKAGE = "edge-infer"
UNIT_PATH = "/etc/systemd/system/edge-agent.service"
TEMPLATE_PATH = "/etc/systemd/system/edge-agent@.service"
INSTANCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SERVICE_STATE_ROOT = "/var/lib/edge-agent"  # StateDirectory=edge-agent, edge-agent-%i for instances
WAITING_FOR_MODEL = "waiting-for-model"
CONFIG_DIR = "/etc/edge-agent"
CREDENTIALS = ("mqtt-password", "mqtt-ca.crt", "mqtt-client.crt", "mqtt-client.key")
PKI_CREDENTIALS = ("mqtt-ca.crt", "mqtt-client.crt", "mqtt-client.key")  # what --pki installs
# Package data (pyproject [tool.setuptools.package-data]), so `install-agent` works from an
# installed wheel too; pip never installs zipped, so these are real files to upload.
# systemd/edge-agent.service at the top of the repository links to the same unit.
DEFAULT_UNIT_FILE = Path(str(resources.files("deploy") / "systemd" / "edge-agent.service"))
DEFAULT_TEMPLATE_FILE = Path(str(resources.files("deploy") / "systemd" / "edge-agent@.service"))
DEFAULT_CONFIG_FILE = Path(str(resources.files("deploy") / "agent-config.toml"))
SERVICE_MARKER = "--edge-deploy-service--"
DEFAULT_UPLOAD_DIR = "/tmp"


def _agent_command(args: argparse.Namespace, *words: str) -> str:
    argv = [args.agent_path, *words]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    return shlex.join(argv)


def _upload_dir(args: argparse.Namespace) -> str:
    return str(args.upload_dir).rstrip("/") or "/"


def _upload_failure(ssh: Ssh, local: Path, remote: str, proc: Completed) -> str:
    """Remove what the failed upload left on the device; one line saying why it failed.

    scp (SFTP) reports a full or read-only disk only as ``Failure``, so the device is asked.
    """
    directory = remote.rpartition("/")[0] or "/"
    q = shlex.quote(directory)
    probe = ssh.run_briefly(f"rm -f {shlex.quote(remote)}; if [ ! -d {q} ]; then echo missing; "
                            f"elif [ ! -w {q} ]; then echo read-only; "
                            f"else df -Pk {q} | awk 'NR == 2 {{print $4}}'; fi")
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
    service = service_for_state_dir(str(args.state_dir)) if args.state_dir else None
    proc = ssh.run(_then_remove(install, remote, _start_if_waiting(service) if service else ""))
    result = _change_result(ssh, proc, "install")
    # The device's shell removes the upload after the install, unless the agent died, the connection
    # dropped or we stopped waiting: then it is removed from here, so it is never left behind.
    if proc.returncode != 0 and not ssh.remove(remote):
        result = replace(result, detail=f"{result.detail}; the upload is left at {remote}")
    return result


def rollback_one(ssh: Ssh, args: argparse.Namespace) -> HostResult:
    refused = ssh.check_connection()
    if refused is not None:
        return refused
    return _change_result(ssh, ssh.run(_agent_command(args, "rollback", "--json")), "rollback")


def _change_result(ssh: Ssh, proc: Completed, what: str) -> HostResult:
    """The row for an ``install-model --json`` or ``rollback --json`` answer (``what``: install, rollback)."""
    try:
        parsed = parse_answer(proc.stdout, ChangeAnswer)
    except AnswerError as exc:
        return HostResult(ssh.target, False, f"{what} failed", str(exc))
    if parsed is None:
        return HostResult(ssh.target, False, f"{what} failed", ssh_failure(proc))
    answer, data = parsed
    active = describe_model(answer.active)
    previous = f"previous {describe_model(answer.previous)}"
    if answer.ok and what == "install":
        return HostResult(ssh.target, True, f"{answer.status}; active {active}", previous, data)
    if answer.ok:
        return HostResult(ssh.target, True, f"rolled back; active {active}", previous, data)
    if what == "install":
        return HostResult(ssh.target, False, f"refused at {answer.step or 'install'}; active {active}",
                          answer.error, data)
    return HostResult(ssh.target, False, f"rollback refused; active {active}", answer.error, data)


_SERVICE_PROBE = (
    "if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; "
    "then systemctl is-active edge-agent 2>/dev/null; else echo unknown; fi"
)
_SERVICE_STATE = re.compile(r"[a-z-]{1,20}")  # what systemctl is-active prints: active, failed, ...


def status_one(ssh: Ssh, args: argparse.Namespace) -> HostResult:
    refused = ssh.check_connection()
    if refused is not None:
        return refused
    command = f"{_agent_command(args, 'models', '--json')}; echo {SERVICE_MARKER}; {_SERVICE_PROBE}"
    proc = ssh.run(command)
    models_part, _, service_part = proc.stdout.partition(SERVICE_MARKER)
    try:
        parsed = parse_answer(models_part, StatusAnswer)
    except AnswerError as exc:
        return HostResult(ssh.target, False, "status failed", str(exc))
    if parsed is None:
        return HostResult(ssh.target, False, "status failed", ssh_failure(proc))
    answer, data = parsed
    lines = service_part.split()
    service = lines[-1] if lines and _SERVICE_STATE.fullmatch(lines[-1]) else "unknown"
    data["service"] = service
    summary = f"active {describe_model(answer.active)}"
    detail = f"previous {describe_model(answer.previous)}; service {service}"
    if answer.probation:
        detail += "; on probation"
    return HostResult(ssh.target, True, summary, detail, data)


@dataclass(frozen=True)
class Step:
    """One install-agent step: a description and either a remote command or an upload."""

    description: str
    command: str = ""
    upload: Path | None = None
    destination: str = ""
    # A remote directory this step creates and a later step removes (``done_with``); removed
    # by install_agent_one if a step in between fails.
    creates_dir: str = ""
    done_with: str = ""


def credentials_directory(instance: str | None) -> str:
    """The service's ``$CREDENTIALS_DIRECTORY`` (where LoadCredential= puts the files)."""
    return f"/run/credentials/edge-agent{'@' + instance if instance else ''}.service"


def install_agent_steps(args: argparse.Namespace, host: HostSetup | None = None) -> list[Step]:
    """Everything ``install-agent`` does, in order (``--dry-run`` prints exactly these).

    Uploaded files go to ``--upload-dir`` under random names and are removed by the step
    that installs them, whether it succeeds or not. With ``--root`` every path on the
    device is below that directory and the service is only enabled there, not started.
    ``host`` (the per-host config, device id and certificate) replaces ``--config``.
    """
    sudo = "sudo -n " if args.sudo else ""
    root = str(args.root).rstrip("/") if args.root else ""
    venv = shlex.quote(f"{root}{args.venv}")
    config_dir = f"{root}{CONFIG_DIR}"
    q_config = shlex.quote(config_dir)
    upload_dir = _upload_dir(args)
    steps = [
        Step("create the virtualenv",
             f"{sudo}sh -c {shlex.quote(f'test -x {venv}/bin/python || python3 -m venv {venv}')}"),
    ]
    package = args.package
    pip = f"{sudo}{venv}/bin/pip --disable-pip-version-check install --upgrade"
    if args.wheelhouse is not None:
        steps += _wheelhouse_steps(Path(args.wheelhouse), pip, upload_dir)
    elif Path(package).is_file():
        remote_pkg = f"{upload_dir}/{Path(package).name}"  # pip needs the wheel's own file name
        steps += [
            Step(f"upload {Path(package).name}", upload=Path(package), destination=remote_pkg),
            Step("install the agent (base profile, no TensorFlow)",
                 _then_remove(f"{pip} {shlex.quote(remote_pkg)}", remote_pkg)),
        ]
    else:
        steps.append(Step("install the agent (base profile, no TensorFlow)", f"{pip} {shlex.quote(package)}"))
    instance = args.instance
    unit_file = args.unit_file or (DEFAULT_TEMPLATE_FILE if instance else DEFAULT_UNIT_FILE)
    unit_path = f"{root}{TEMPLATE_PATH if instance else UNIT_PATH}"
    service = f"edge-agent@{instance}" if instance else "edge-agent"
    config_name = f"{instance}.toml" if instance else "config.toml"
    tmp_unit = f"{upload_dir}/edge-agent.service.{uuid.uuid4().hex[:8]}"
    steps += [
        Step("upload the unit file", upload=unit_file, destination=tmp_unit),
        Step(f"install the unit file as {unit_path}",
             _then_remove(f"{sudo}install -D -m 0644 {shlex.quote(tmp_unit)} {shlex.quote(unit_path)}", tmp_unit)),
        Step(f"create {config_dir} and its credentials directory",
             f"{sudo}install -d -m 0755 {q_config} && {sudo}install -d -m 0700 {q_config}/credentials"
             + "".join(f" && {sudo}sh -c {shlex.quote(_touch_private(f'{q_config}/credentials/{c}'))}"
                       for c in CREDENTIALS)),
    ]
    if host is not None and host.cert is not None and not args.force_config:
        # A kept config with another device id would not match the certificate's CN: stop before
        # any credential is replaced.
        installed = shlex.quote(f"{config_dir}/{config_name}")
        line = shlex.quote(f'device_id = "{host.device_id}"')
        steps.append(Step(f"check that an existing {config_dir}/{config_name} says device_id = {host.device_id} "
                          "(the certificate's CN)",
                          f"test ! -e {installed} || grep -qxF {line} {installed} || {{ echo 'the kept {config_name} "
                          f"has another device_id than the certificate CN {host.device_id}: use --force-config' >&2; "
                          "exit 1; }"))
    credentials: dict[str, Path] = {}
    if args.credentials_dir is not None:
        credentials = {name: Path(args.credentials_dir) / name for name in CREDENTIALS
                       if (Path(args.credentials_dir) / name).is_file()}
    if host is not None and host.cert is not None and host.ca is not None:
        # issued just before the steps run (in a dry run perhaps never)
        credentials |= {"mqtt-ca.crt": host.ca, "mqtt-client.crt": host.cert.cert, "mqtt-client.key": host.cert.key}
    for name in CREDENTIALS:
        local = credentials.get(name)
        if local is None:
            continue
        tmp_cred = f"{upload_dir}/edge-agent-cred.{uuid.uuid4().hex[:8]}"
        steps += [
            Step(f"upload credential {name}", upload=local, destination=tmp_cred),
            Step(f"install it as {config_dir}/credentials/{name} (mode 0600)",
                 _then_remove(f"{sudo}install -m 0600 {shlex.quote(tmp_cred)} {q_config}/credentials/{name}",
                              tmp_cred)),
        ]
    tmp_config = f"{upload_dir}/edge-agent-config.{uuid.uuid4().hex[:8]}.toml"
    keep = "" if args.force_config else f"test -e {q_config}/{config_name} || "
    install_config = f"{keep}install -m 0644 {shlex.quote(tmp_config)} {q_config}/{config_name}"
    what = f" (device id {host.device_id})" if host is not None else ""
    steps += [
        Step(f"upload the agent configuration{what}", upload=host.config if host else args.config,
             destination=tmp_config),
        Step(f"install the configuration as {config_dir}/{config_name}"
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
        steps.append(Step(f"enable {service} in {root} (not started)",
                          f"{sudo}systemctl --root={shlex.quote(root)} enable {service}"))
    else:
        steps.append(Step(f"enable and start {service}", _enable_and_start(sudo, service)))
    return steps


def _enable_and_start(sudo: str, service: str) -> str:
    """Enable and start; succeeds when the service is active, or skipped only because it has no model yet.

    The unit's ConditionPathExists= skips (does not fail) a start before the first model; then
    this prints ``WAITING_FOR_MODEL`` and ``edge-deploy push`` starts the service.
    """
    return (f"{sudo}systemctl daemon-reload && {sudo}systemctl enable --now {service} || exit 1; "
            f"systemctl is-active --quiet {service} && exit 0; "
            f'[ "$(systemctl show -p ConditionResult --value {service})" = no ] && echo {WAITING_FOR_MODEL} '
            f"&& exit 0; systemctl is-active {service}; exit 1")


def service_for_state_dir(state_dir: str) -> str | None:
    """The unit whose StateDirectory= is ``state_dir`` (edge-agent or edge-agent@NAME), else None."""
    path = state_dir.rstrip("/")
    if path == SERVICE_STATE_ROOT:
        return "edge-agent"
    prefix = SERVICE_STATE_ROOT + "-"
    if path.startswith(prefix) and INSTANCE_NAME.fullmatch(path[len(prefix):]):
        return f"edge-agent@{path[len(prefix):]}"
    return None


def _start_if_waiting(service: str) -> str:
    """Shell: after a successful install, start ``service`` when it is enabled but not running
    (installed before its first model); what it says goes to stderr, the JSON answer stays alone."""
    return (f"if [ $rc = 0 ] && [ -d /run/systemd/system ] && systemctl is-enabled --quiet {service} 2>/dev/null "
            f"&& ! systemctl is-active --quiet {service}; then systemctl start {service} >&2 "
            f"|| echo 'edge-deploy: the model is installed but {service} did not start' >&2; fi; ")


def _wheelhouse_steps(directory: Path, pip: str, upload_dir: str) -> list[Step]:
    """Upload every wheel to a private directory, then install from it alone (``--no-index``)."""
    agent_wheel = check_wheelhouse(directory)
    wheels = sorted(directory.glob("*.whl"))
    remote = f"{upload_dir}/edge-agent-wheels.{uuid.uuid4().hex[:8]}"
    q = shlex.quote(remote)
    steps = [Step(f"create {remote} for {len(wheels)} wheels", f"mkdir -m 0700 {q}", creates_dir=remote)]
    steps += [Step(f"upload {wheel.name}", upload=wheel, destination=f"{remote}/{wheel.name}") for wheel in wheels]
    install = (f"{pip} --no-index --find-links {q} {shlex.quote(f'{remote}/{agent_wheel.name}')}; "
               f"rc=$?; rm -rf {q}; exit $rc")
    steps.append(Step("install the agent from the uploaded wheels (no package index)", install, done_with=remote))
    return steps


def _then_remove(command: str, uploaded: str, after: str = "") -> str:
    """``command``, then remove the uploaded file whatever happened (then ``after``, which may read
    ``$rc``); the exit code is the command's."""
    return f"{command}; rc=$?; rm -f {shlex.quote(uploaded)}; {after}exit $rc"


def _touch_private(path: str) -> str:
    return f"test -e {path} || install -m 0600 /dev/null {path}"


def install_agent_one(ssh: Ssh, args: argparse.Namespace, out: Callable[[str], None],
                      host: HostSetup | None = None) -> HostResult:
    if host is not None:
        certificate = "; client certificate from the fleet CA, CN = device id" if host.cert else ""
        out(f"[{ssh.target}] device id {host.device_id}{certificate}")
    if not args.dry_run:
        refused = ssh.check_connection()
        if refused is not None:
            return refused
        if host is not None and host.cert is not None:
            device_certificate(Pki(args.pki), host.device_id)  # reused when valid, else issued
    result = _install_agent_steps(ssh, args, out, host)
    if host is not None:
        result.data["device_id"] = host.device_id
        result.detail = "; ".join(part for part in (f"device id {host.device_id}", result.detail) if part)
    return result


def _install_agent_steps(ssh: Ssh, args: argparse.Namespace, out: Callable[[str], None],
                         host: HostSetup | None) -> HostResult:
    steps = install_agent_steps(args, host)
    uploaded = ""  # removed by the step after its upload; by us if that step fails
    created = ""  # a directory of uploads, removed by a later step; by us if a step fails before
    for number, step in enumerate(steps, 1):
        argv = ssh.scp_argv(step.upload, step.destination) if step.upload else ssh.ssh_argv(step.command)
        out(f"[{ssh.target}] step {number}/{len(steps)}: {step.description}")
        out(f"    {shlex.join(argv)}")
        if args.dry_run:
            continue
        proc = ssh.copy(step.upload, step.destination) if step.upload else ssh.run(step.command)
        if proc.returncode != 0:
            if step.upload:
                detail = _upload_failure(ssh, step.upload, step.destination, proc)
            else:
                detail = ssh_failure(proc)
                if uploaded and not ssh.remove(uploaded):
                    detail += f"; the upload is left at {uploaded}"
            if created and ssh.run_briefly(f"rm -rf -- {shlex.quote(created)}").returncode != 0:
                detail += f"; uploads are left in {created}"
            return HostResult(ssh.target, False, f"failed at step {number}: {step.description}", detail)
        uploaded = step.destination if step.upload and not created else ""
        created = step.creates_dir or ("" if step.done_with else created)
    if args.dry_run:
        return HostResult(ssh.target, True, f"dry run: {len(steps)} steps shown")
    if args.root:
        return HostResult(ssh.target, True, f"agent installed under {args.root}; service enabled there, not started")
    if WAITING_FOR_MODEL in proc.stdout:
        return HostResult(ssh.target, True, "agent installed; the service starts with its first model",
                          "edge-deploy push a bundle to this device")
    return HostResult(ssh.target, True, "agent installed and started")
