"""Installing the project in the arm64 userland, and copying in what the checks use.

Chroot route: a venv and ``pip install`` inside the guest, as on a Pi (offline, from the
wheels resolved on the host). The venv is kept between runs while the wheel set is the same;
the project itself is reinstalled every run. -L route: the host's pip installs into a folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.pi_check.cpus import PiCpu
from tools.pi_check.guest import SITE, VENV, Guest
from tools.pi_check.steps import StepError
from tools.pi_check.wheels import platform_args

GUEST_WHEELS = "/opt/pi-check/wheels"
WORK = "/tmp/pi-check"
_STAMP = ".pi-check-wheels"


def copy_wheels(guest: Guest, wheels: Path, project_wheel: Path) -> None:
    dest = guest.host_path(GUEST_WHEELS)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for wheel in [*wheels.glob("*.whl"), project_wheel]:
        shutil.copy2(wheel, dest / wheel.name)


def install_project(guest: Guest, cpu: PiCpu, wheels_key: str, project_wheel: Path,
                    extra: list[str]) -> str:
    """Install the project and ``extra`` requirements; returns a note for the report."""
    if guest.route != "chroot":
        return _install_with_host_pip(guest, project_wheel, extra)
    venv = guest.host_path(VENV)
    stamp = venv / _STAMP
    reused = stamp.exists() and stamp.read_text() == wheels_key
    if not reused:
        shutil.rmtree(venv, ignore_errors=True)
        _guest(guest, cpu, ["/usr/bin/python3.11", "-m", "venv", VENV], "python3 -m venv")
    else:
        _guest(guest, cpu, [f"{VENV}/bin/pip", "uninstall", "-q", "-y", "edge-infer"], "pip uninstall edge-infer")
    _guest(guest, cpu, [f"{VENV}/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                        "--find-links", GUEST_WHEELS, f"{GUEST_WHEELS}/{project_wheel.name}", *extra],
           "pip install in the venv")
    stamp.write_text(wheels_key)
    return "venv reused, project reinstalled" if reused else "new venv"


def _install_with_host_pip(guest: Guest, project_wheel: Path, extra: list[str]) -> str:
    site = guest.host_path(SITE)
    shutil.rmtree(site, ignore_errors=True)
    wheels = guest.host_path(GUEST_WHEELS)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--no-index", "--find-links", str(wheels), "--target", str(site), *platform_args(),
                           str(wheels / project_wheel.name), *extra], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StepError(f"pip install --target {site} failed: {proc.stderr.strip()[-300:]}")
    return f"installed by the host's pip into {SITE} (no binfmt_misc)"


def _guest(guest: Guest, cpu: PiCpu, argv: list[str], what: str) -> None:
    proc = guest.run(argv, cpu)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise StepError(f"{what} failed in the guest (exit {proc.returncode}): {tail}")


def copy_work_files(guest: Guest, project: Path, artefacts: list[Path]) -> Path:
    """Fresh WORK dir in the guest with the bundle, the video, tests/ and pyproject.toml (for the markers)."""
    work = guest.host_path(WORK)
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    for path in artefacts:
        shutil.copy2(path, work / path.name)
    shutil.copytree(project / "tests", work / "src/tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(project / "pyproject.toml", work / "src/pyproject.toml")
    os.chmod(work, 0o755)
    return work
