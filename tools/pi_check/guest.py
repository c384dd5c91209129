"""Running commands in the arm64 userland under qemu user-mode emulation.

Two routes. ``chroot``: with qemu-aarch64 registered in binfmt_misc (flag F, so the chroot
needs no qemu binary), the guest is a chroot with its own /proc, the Pi's /proc/cpuinfo bound
over it, a read-only /sys and the host's /dev, all mounted in a private mount namespace
(``unshare -m``) that vanishes with the command. ``qemu -L``: without binfmt_misc, the guest's
python runs under ``qemu-aarch64-static -L ROOT``; child processes cannot start then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.pi_check.cpus import PiCpu

BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
QEMU = "qemu-aarch64-static"
VENV = "/opt/edge-agent/venv"  # the chroot route's venv: where docs/raspberry-pi.md and the unit put it
SITE = "/opt/edge-site"  # the -L route's packages (installed by the host's pip)
GUEST_PATH = "/usr/local/bin:/usr/bin:/bin"
# chroot, debootstrap and mount live in sbin, which a non-login PATH may lack.
HOST_PATH = os.pathsep.join([os.environ.get("PATH", "/usr/bin:/bin"), "/usr/local/sbin", "/usr/sbin", "/sbin"])

# $1 root, $2 cpuinfo file, $3 working directory, then the command.
_CHROOT_SCRIPT = r"""
set -e
root=$1 cpuinfo=$2 cwd=$3
shift 3
mount -t proc proc "$root/proc"
mount --bind "$cpuinfo" "$root/proc/cpuinfo"
mount -o bind,ro /sys "$root/sys"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" \
    /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
"""


def binfmt_problem() -> str | None:
    """Register qemu-aarch64 with binfmt_misc if needed; None when the chroot route works, else why not."""
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        if os.geteuid() != 0:
            return "qemu-aarch64 is not registered with binfmt_misc and registering it needs root"
        if not BINFMT_CONF.exists():
            return f"{BINFMT_CONF} missing; install qemu-user-static"
        try:
            if not (BINFMT / "register").exists():
                mount = shutil.which("mount", path=HOST_PATH) or "mount"
                subprocess.run([mount, "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True,
                               capture_output=True)
            (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"cannot register qemu-aarch64 with binfmt_misc: {exc}"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return f"{entry} is disabled"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        return f"{entry} lacks flag F (fix binary), so a chroot cannot find qemu; re-register it with F"
    return None


@dataclass
class Guest:
    """The arm64 userland at ``root``; ``route`` is ``chroot`` or ``qemu -L``."""

    root: Path
    route: str
    scratch: Path  # host directory for the cpuinfo files

    def host_path(self, path: str) -> Path:
        """The host's path of the guest's absolute ``path``."""
        return self.root / path.lstrip("/")

    @property
    def can_spawn(self) -> bool:
        """Whether guest processes can start guest processes (smoke child, tests' subprocesses)."""
        return self.route == "chroot"

    def python(self) -> list[str]:
        return [f"{VENV}/bin/python"] if self.route == "chroot" else ["/usr/bin/python3.11"]

    def tool(self, name: str) -> list[str]:
        """A console script: the venv's on the chroot route, ``python -m`` on the -L route."""
        if self.route == "chroot":
            return [f"{VENV}/bin/{name}"]
        return [*self.python(), "-m", name.replace("-", "_")]

    def run(self, argv: list[str], cpu: PiCpu, cwd: str = "/", timeout: float = 900
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (guest paths) on the emulated ``cpu``; never raises for a non-zero exit."""
        cmd, env, host_cwd = self._command(argv, cpu, cwd)
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                              cwd=host_cwd)

    def start(self, argv: list[str], cpu: PiCpu, output: Path, cwd: str = "/") -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background, stdout and stderr to the host file ``output``."""
        cmd, env, host_cwd = self._command(argv, cpu, cwd)
        with output.open("wb") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=host_cwd)

    def _command(self, argv: list[str], cpu: PiCpu, cwd: str) -> tuple[list[str], dict[str, str], str | None]:
        env = {"PATH": HOST_PATH, "QEMU_CPU": cpu.qemu_cpu, "GUEST_PATH": GUEST_PATH,
               "LANG": "C.UTF-8"}
        if self.route == "chroot":
            cpuinfo = self.scratch / f"cpuinfo-{cpu.key}"
            cpuinfo.write_text(cpu.cpuinfo())
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CHROOT_SCRIPT, "sh",
                   str(self.root), str(cpuinfo), cwd, *argv]
            return cmd, env, None
        (self.root / "proc/cpuinfo").write_text(cpu.cpuinfo())  # qemu -L reads ROOT/proc/cpuinfo first
        cmd = [QEMU, "-L", str(self.root), "-cpu", cpu.qemu_cpu, str(self.root) + argv[0], *argv[1:]]
        env |= {"PYTHONPATH": SITE, "HOME": "/root"}
        return cmd, env, str(self.root) + cwd


def host_tools_problem() -> str | None:
    """None when qemu-user-static, debootstrap and unshare are installed."""
    missing = [tool for tool in (QEMU, "debootstrap", "unshare", "chroot", "dpkg-deb")
               if not shutil.which(tool, path=HOST_PATH)]
    if missing:
        return (f"missing {', '.join(missing)}; install them: "
                "apt-get install --no-install-recommends qemu-user-static debootstrap binfmt-support")
    return None
