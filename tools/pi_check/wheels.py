"""aarch64 wheels resolved on the host, and the project's own wheel.

pip on the host resolves for the Pi (CPython 3.11, glibc 2.36) with the platform tags of
:mod:`deploy.wheelhouse` (what ``edge-deploy wheelhouse --platform aarch64`` uses too).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from deploy import wheelhouse
from tools.pi_check.steps import StepError

PYTHON_VERSION = wheelhouse.PYTHON_VERSION
PLATFORMS = wheelhouse.platform_tags("aarch64")
# From the [dev] extra, what the device-only unit tests need.
TEST_PACKAGES = ("pytest", "pytest-timeout", "hypothesis", "jinja2")
_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def requirement_name(req: str) -> str:
    match = _NAME.match(req.strip())
    if not match:
        raise StepError(f"cannot read the requirement {req!r} in pyproject.toml")
    return match.group(0).lower().replace("_", "-")


def device_requirements(project: Path) -> list[str]:
    """The base dependencies (no extras), pinned to the host's versions where installed, plus test tools.

    Pinning keeps the host/guest comparison about the CPU, not about two numpy releases.
    """
    data = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    dev = {requirement_name(r): r for r in data["optional-dependencies"].get("dev", [])}
    reqs = []
    for req in list(data["dependencies"]) + [dev.get(name, name) for name in TEST_PACKAGES]:
        name = requirement_name(req)
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(req)
    return reqs


def platform_args() -> list[str]:
    return wheelhouse.platform_args("aarch64")


def download_wheels(requirements: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(dest),
           *platform_args(), *requirements]
    _pip(cmd, "pip download of the aarch64 wheels")


def build_project_wheel(project: Path, dest: Path) -> Path:
    """The project's wheel (pure Python), built from a copy so the work tree stays clean."""
    try:
        return wheelhouse.build_project_wheel(project, dest)
    except wheelhouse.WheelhouseError as exc:
        raise StepError(str(exc)) from exc


def _pip(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line]
        raise StepError(f"{what} failed (exit {proc.returncode}): {' | '.join(errors[-3:]) or proc.stderr[-300:]}")
