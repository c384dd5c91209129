"""SSH transport for ``edge-deploy``: targets, the ``ssh``/``scp`` command lines and their failures.

Talks to devices through the system ``ssh`` and ``scp`` binaries (so the
operator's agent, ``~/.ssh/config`` and jump hosts keep working), always with
``BatchMode=yes`` and ``StrictHostKeyChecking=accept-new`` against a known_hosts
file of its own. A device's answer is untrusted: every run reads at most
:data:`MAX_OUTPUT_BYTES` of each stream and is killed past that or past the host's
deadline; a failed run is classified (changed host key, refused login, no connection,
timeout) into a one-line :class:`HostResult`.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deploy.answers import printable
from edge_agent.errors import EdgeError

MAX_OUTPUT_BYTES = 1 << 20  # of stdout and of stderr: an agent answers in a few KiB
LOGIN_MARGIN_S = 5  # on top of twice --connect-timeout for a login check (TCP, banner, key exchange, auth)
_READ_CHUNK = 64 * 1024


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
    """What happened on one host; ``summary`` and ``detail`` are one printable line each."""

    target: Target
    ok: bool
    summary: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    host_key_mismatch: bool = False

    def __post_init__(self) -> None:
        # Both often quote the device (its error, its stderr): never let it reach a terminal raw.
        self.summary = printable(self.summary)
        self.detail = printable(self.detail)


@dataclass(frozen=True)
class Completed:
    """A finished ssh/scp run: exit code and its (bounded) output, or why it was stopped.

    ``stopped`` is empty when the run ended by itself; otherwise it says why it was killed
    (``timed out …``, ``answered more than 1 MiB …``), ``returncode`` is
    :data:`EXIT_STOPPED` and ``stdout`` is empty: a cut-off answer is never parsed.
    """

    returncode: int
    stdout: str
    stderr: str
    stopped: str = ""


EXIT_STOPPED = 124  # like timeout(1)


@dataclass(frozen=True)
class Ssh:
    """How to run commands on and copy files to one target, all within one deadline.

    ``host_timeout`` bounds everything done on the host from the moment this object is made
    (login, uploads, commands); only the removal of an upload left behind gets a short grace
    period after it (:meth:`remove`).
    """

    target: Target
    identity: Path | None
    known_hosts: Path
    connect_timeout: int = 10
    host_timeout: float = 600
    started: float = field(default_factory=time.monotonic)

    @property
    def login_timeout(self) -> float:
        """How long a login may take: TCP and banner, then key exchange and auth, each ``connect_timeout``."""
        return 2 * self.connect_timeout + LOGIN_MARGIN_S

    def _options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            # a device that stops answering mid-command is noticed after 3 silent intervals
            "-o", f"ServerAliveInterval={self.connect_timeout}",
            "-o", "ServerAliveCountMax=3",
        ]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, remote_command: str, log_level: str = "ERROR") -> list[str]:
        """``log_level=INFO`` for the login check: ssh says why a connection dropped or timed out only there."""
        return ["ssh", *self._options(), "-o", f"LogLevel={log_level}", "-p", str(self.target.port),
                self.target.host, remote_command]

    def scp_argv(self, local: Path, remote: str) -> list[str]:
        return ["scp", "-q", *self._options(), "-o", "LogLevel=ERROR", "-P", str(self.target.port), str(local),
                f"{self.target.host}:{remote}"]

    def check_connection(self) -> HostResult | None:
        """Log in and run ``true``; None when that works, else a failed result saying why not.

        Every command checks first: scp hides the reason (``scp: Connection closed``), and a
        refused login or a changed host key should read as such, not as a failed install.
        """
        argv = self.ssh_argv("true", log_level="INFO")
        if self.login_timeout < self._left():
            proc = run_argv(argv, self.login_timeout,
                            f"no SSH login within {self.login_timeout:.0f} s (see --connect-timeout)")
        else:
            proc = self._within_deadline(argv)
        if proc.returncode == 0:
            return None
        return _connection_failure(self, proc) or HostResult(self.target, False, "unreachable",
                                                              ssh_failure(proc))

    def run(self, remote_command: str) -> Completed:
        return self._within_deadline(self.ssh_argv(remote_command))

    def copy(self, local: Path, remote: str) -> Completed:
        return self._within_deadline(self.scp_argv(local, remote))

    def remove(self, remote: str) -> bool:
        """``rm -f`` a file left on the device (past the deadline too); True when that worked."""
        return self.run_briefly(f"rm -f -- {shlex.quote(remote)}").returncode == 0

    def run_briefly(self, remote_command: str) -> Completed:
        """Run a short clean-up or probe, given a login's time even past the host's deadline."""
        return run_argv(self.ssh_argv(remote_command), self.login_timeout,
                        f"timed out after {self.login_timeout:.0f} s")

    def _left(self) -> float:
        return self.started + self.host_timeout - time.monotonic()

    def _within_deadline(self, argv: list[str]) -> Completed:
        return run_argv(argv, self._left(), f"timed out after {self.host_timeout:.0f} s (--host-timeout)")


def run_argv(argv: list[str], timeout: float, timeout_reason: str,
             limit: int = MAX_OUTPUT_BYTES) -> Completed:
    """Run ``argv`` with no stdin; kill it after ``timeout`` s or when a stream passes ``limit`` bytes."""
    if timeout <= 0:
        return Completed(EXIT_STOPPED, "", timeout_reason, timeout_reason)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise DeployError(f"{argv[0]} not found; install the OpenSSH client") from exc
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    deadline = time.monotonic() + timeout
    with proc:
        out, err = bytearray(), bytearray()
        stopped = _read_bounded({proc.stdout: ("stdout", out), proc.stderr: ("stderr", err)}, deadline, limit)
        if stopped == "timeout":
            stopped = timeout_reason
        elif not stopped:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stopped = timeout_reason
        if stopped:
            proc.kill()
            proc.wait()
            return Completed(EXIT_STOPPED, "", stopped, stopped)
        return Completed(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _read_bounded(streams: dict[IO[bytes], tuple[str, bytearray]], deadline: float, limit: int) -> str:
    """Read every stream to its end into its buffer: ``""``, ``timeout``, or the reason it passed ``limit``."""
    with selectors.DefaultSelector() as selector:
        for stream, name_and_buffer in streams.items():
            selector.register(stream, selectors.EVENT_READ, name_and_buffer)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, _READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                name, buffer = key.data
                buffer += chunk
                if len(buffer) > limit:
                    size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
                    return f"answered more than {size} on {name}; stopped reading"
    return ""


def ssh_failure(proc: Completed) -> str:
    if proc.stopped:
        return proc.stopped
    # split at newlines only: a device's "\r" stays in the line (escaped when shown), never hides it
    text = [line for line in (proc.stderr or proc.stdout).strip().split("\n")
            if line.strip() and not line.startswith("scp: failed to upload")]  # scp's summary after the reason
    return text[-1] if text else f"exit code {proc.returncode}"


_CONNECT_RE = re.compile(r"connect to host \S+ port \d+: (?P<reason>.+)")
_STALLED_RE = re.compile(r"^Connection (to \S+ port \d+ timed out|timed out during banner exchange)")
_RESOLVE_RE = re.compile(r"Could not resolve hostname \S+?: (?P<reason>.+)")


def _connection_failure(ssh: Ssh, proc: Completed) -> HostResult | None:
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


def _connect_failure(target: Target, proc: Completed) -> str | None:
    """``cannot connect to HOST:PORT: REASON`` when ssh itself failed (exit 255), else None."""
    if proc.returncode not in (EXIT_STOPPED, 255):  # ours, or ssh's own errors
        return None
    where = f"{target.host.rpartition('@')[2]}:{target.port}"
    if proc.stopped:
        return f"cannot connect to {where}: {proc.stopped}"
    text = (proc.stderr or "").strip()
    for line in reversed(text.splitlines()):
        if match := _CONNECT_RE.search(line):
            return f"cannot connect to {where}: {match.group('reason').strip()}"
        if match := _RESOLVE_RE.search(line):
            return f"cannot connect to {where}: unknown host name ({match.group('reason').strip()})"
        if _STALLED_RE.search(line):
            return f"cannot connect to {where}: the device stopped answering during the login (see --connect-timeout)"
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
