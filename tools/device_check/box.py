"""A Debian 12 box with real systemd as its PID 1 (systemd-nspawn), sharing the host's network.

The rootfs is built once with ``debootstrap`` and cached; each run boots a copy. nspawn starts
from a cgroup of its own (cgroup v2, the layout Bookworm's systemd expects), so everything the
box runs can be found, and ended, through that cgroup even when nspawn itself was killed.
Commands run inside with ``nsenter`` into the box's PID 1. Without ``--private-network`` the
box shares the host's loopback: its sshd (on a free port, 127.0.0.1 only) and the host's
Mosquitto reach each other on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tools.pi_check.guest import HOST_PATH
from tools.pi_check.rootfs import mirror
from tools.pi_check.steps import StepError

SUITE = "bookworm"
# libnss-systemd for DynamicUser=, procps for ps, python3-venv for the agent's virtualenv.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "libnss-systemd", "procps",
           "openssh-server")
FORMAT = "1"  # bump when build_rootfs changes
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
_BOOT = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'


def rootfs_key_parts() -> list[str]:
    return [FORMAT, SUITE, mirror(), *INCLUDE]


def build_rootfs(root: Path) -> None:
    """debootstrap the box's userland into ``root`` (about a minute)."""
    debootstrap = shutil.which("debootstrap", path=HOST_PATH)
    if not debootstrap:
        raise StepError("debootstrap is missing; install it: apt-get install --no-install-recommends debootstrap")
    cmd = [debootstrap, "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(root), mirror()]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PATH=HOST_PATH),
                          timeout=1200)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StepError(f"debootstrap failed (exit {proc.returncode}): {' | '.join(tail)}")
    # A box, not a machine: no console login, no periodic jobs competing with the checks.
    for unit in ("console-getty.service", "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer"):
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")


def host_tools_problem() -> str | None:
    missing = [tool for tool in ("systemd-nspawn", "nsenter", "debootstrap", "ssh", "scp", "ssh-keygen")
               if not shutil.which(tool, path=HOST_PATH)]
    if missing:
        return (f"missing {', '.join(missing)}; install them: apt-get install --no-install-recommends "
                "systemd-container debootstrap openssh-client")
    if cgroup2_root() is None:
        return "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    return None


def cgroup2_root() -> Path | None:
    for path in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (path / "cgroup.procs").exists() and (path / "cgroup.subtree_control").exists():
            return path
    return None


class Box:
    """One booted copy of the cached rootfs at ``work/root``."""

    def __init__(self, image: Path, work: Path, name: str) -> None:
        self.image, self.work, self.name = image, work, name
        self.root = work / "root"
        cgroups = cgroup2_root()
        if cgroups is None:
            raise StepError("no cgroup v2 hierarchy to start the box in")
        self.cgroup = cgroups / name
        self.console = work / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0

    # ------------------------------------------------------------------ set-up

    def prepare(self, ssh_port: int, authorized_key: str) -> None:
        """Copy the image and give it an sshd on 127.0.0.1:``ssh_port`` that lets ``authorized_key`` in as root."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["cp", "-a", "--reflink=auto", str(self.image), str(self.root)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise StepError(f"cannot copy the box image: {proc.stderr.strip()[-300:]}")
        sshd = self.root / "etc/ssh/sshd_config.d"
        sshd.mkdir(parents=True, exist_ok=True)
        (sshd / "device-check.conf").write_text(
            f"Port {ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nUseDNS no\n")
        ssh_dir = self.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(authorized_key.strip() + "\n")
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        # a persistent journal: what the agent said before a reboot is still there after it
        (self.root / "var/log/journal").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ life cycle

    def boot(self, timeout: float = 60) -> str:
        """Start the box and wait until systemd says running (or degraded); returns that state."""
        self.cgroup.mkdir(exist_ok=True)
        env = dict(os.environ, PATH=HOST_PATH, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        cmd = ["systemd-nspawn", "-D", str(self.root), "-M", self.name, "--boot", "--register=no", "--keep-unit",
               "--console=passive", "--link-journal=no", "--system-call-filter=bpf"]
        with self.console.open("ab") as log:
            self.proc = subprocess.Popen(["sh", "-c", _BOOT, "sh", str(self.cgroup), *cmd], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.boots += 1
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepError(f"systemd-nspawn exited with {self.proc.returncode}: {self._console_tail()}")
            if self.init_pid() is not None:
                left = max(1.0, deadline - time.monotonic())
                probe = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
                state = probe.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.1)
        raise StepError(f"the box did not reach running in {timeout:.0f} s (state {state or 'unknown'})")

    def init_pid(self) -> int | None:
        procs = self.cgroup / "payload/init.scope/cgroup.procs"
        try:
            first = procs.read_text().split()
        except OSError:
            return None
        return int(first[0]) if first else None

    def reboot(self, timeout: float = 60) -> str:
        """``systemctl reboot`` inside: nspawn exits (as systemd-nspawn@.service would restart it), boot again."""
        self.run(["systemctl", "reboot"], timeout=10)
        self._wait_exit(timeout)
        return self.boot(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Power off; whatever is left (nspawn killed, a stuck box) is ended through the cgroup."""
        if self.proc is not None and self.proc.poll() is None and self.init_pid() is not None:
            self.run(["systemctl", "poweroff"], timeout=10)
            try:
                self._wait_exit(timeout)
            except StepError:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._kill_leftovers()

    def _wait_exit(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise StepError(f"the box did not stop in {timeout:.0f} s") from exc
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        for _ in range(50):
            pids = [int(p) for f in self.cgroup.rglob("cgroup.procs") if f.exists() for p in f.read_text().split()] \
                if self.cgroup.exists() else []
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.cgroup.exists():
            for directory in sorted((d for d in self.cgroup.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)

    # ------------------------------------------------------------------ inside

    def run(self, argv: list[str], timeout: float = 60, input_text: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the box (all its namespaces, its root); never raises for a non-zero exit."""
        pid = self.init_pid()
        if pid is None:
            raise StepError("the box is not running")
        cmd = ["nsenter", "-t", str(pid), "-a", "env", "-i", *(f"{k}={v}" for k, v in GUEST_ENV.items()), *argv]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, input=input_text,
                                  env=dict(os.environ, PATH=HOST_PATH))
        except subprocess.TimeoutExpired as exc:
            raise StepError(f"{' '.join(argv)} did not finish in the box in {timeout:.0f} s") from exc

    def show(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-monotonic"]).stdout

    def _console_tail(self) -> str:
        try:
            return " | ".join(self.console.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no console output)"
