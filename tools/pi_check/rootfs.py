"""The arm64 userland: Debian 12 (Raspberry Pi OS Bookworm's base) with Python 3.11, unpacked.

``debootstrap --foreign`` downloads and unpacks the required packages without running
anything; the remaining .debs are unpacked with ``dpkg-deb``. No maintainer script runs, which
is enough for Python and pip (nothing here needs a configured package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tools.pi_check.guest import HOST_PATH
from tools.pi_check.steps import StepError

SUITE = "bookworm"
INCLUDE = ("python3.11", "python3-venv", "python3-pip", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ENV_MIRROR = "EDGE_PI_MIRROR"
FORMAT = "1"  # bump when the layout below changes


def mirror() -> str:
    return os.environ.get(ENV_MIRROR) or DEFAULT_MIRROR


def rootfs_key_parts() -> list[str]:
    return [FORMAT, SUITE, mirror(), *INCLUDE]


def build_rootfs(root: Path) -> None:
    """Populate ``root`` with the arm64 userland; raises StepError with debootstrap's last lines."""
    debootstrap = shutil.which("debootstrap", path=HOST_PATH)
    if not debootstrap:
        raise StepError("debootstrap is missing; install it: apt-get install debootstrap qemu-user-static")
    cmd = [debootstrap, "--foreign", "--arch=arm64", "--variant=minbase",
           f"--include={','.join(INCLUDE)}", SUITE, str(root), mirror()]
    env = dict(os.environ, PATH=HOST_PATH)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StepError(f"debootstrap failed (exit {proc.returncode}): {' | '.join(tail)}")
    archives = root / "var/cache/apt/archives"
    for deb in sorted(archives.glob("*.deb")):
        _unpack(deb, root)
        deb.unlink()
    _real_dir(root / "proc")
    _real_dir(root / "sys")
    if not (root / "usr/bin/python3.11").exists():
        raise StepError(f"{root}/usr/bin/python3.11 missing after unpacking; is {mirror()} a Debian mirror?")


def _unpack(deb: Path, root: Path) -> None:
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as src:
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
                             stdin=src.stdout, capture_output=True, text=True, check=False)
    if src.returncode != 0 or tar.returncode != 0:
        raise StepError(f"cannot unpack {deb.name}: {tar.stderr.strip()[-300:]}")


def _real_dir(path: Path) -> None:
    """debootstrap makes /proc a symlink to the host's /proc when it thinks it is in a container."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(exist_ok=True)
