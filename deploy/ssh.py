"""SSH transport for ``edge-deploy``: targets, the ``ssh``/``scp`` command lines and their failures.

Talks to devices through the system ``ssh`` and ``scp`` binaries (so the
operator's agent, ``~/.ssh/config`` and jump hosts keep working), always with
``BatchMode=yes`` and ``StrictHostKeyChecking=accept-new`` against a known_hosts
file of its own. Every run has a timeout; a failed run is classified (changed
host key, refused login, no connection) into a one-line :class:`HostResult`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeError


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
                                                              ssh_failure(proc))

    def run(self, remote_command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_argv(self.ssh_argv(remote_command), timeout)

    def copy(self, local: Path, remote: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_argv(self.scp_argv(local, remote), timeout)


def run_argv(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {exc.timeout:.0f} s")
    except FileNotFoundError as exc:
        raise DeployError(f"{argv[0]} not found; install the OpenSSH client") from exc


def ssh_failure(proc: subprocess.CompletedProcess[str]) -> str:
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
