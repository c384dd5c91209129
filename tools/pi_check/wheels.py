"""aarch64 wheels resolved on the host, and the project's own wheel.

pip on the host resolves for the Pi (CPython 3.11, glibc 2.36). The platform tags are listed
newest first and without gaps: leaving out ``manylinux_2_27`` makes pip fall back to
ai-edge-litert 1.x and to older OpenCV and cryptography builds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from tools.pi_check.steps import StepError

PYTHON_VERSION = "3.11"
GLIBC_MINORS = range(36, 16, -1)  # Debian 12 has glibc 2.36
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in GLIBC_MINORS] + ["manylinux2014_aarch64"]
# From the [dev] extra, what the device-only unit tests need.
TEST_PACKAGES = ("pytest", "pytest-timeout", "hypothesis")
_NAME = re.compile(r"^[A-Za-z0-9._-]+")
# Not copied when building the project wheel.
_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache",
                                 "demo-out", "mutants", ".bench-cache", "state", ".notes")


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
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS:
        args += ["--platform", tag]
    return args


def download_wheels(requirements: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(dest),
           *platform_args(), *requirements]
    _pip(cmd, "pip download of the aarch64 wheels")


def build_project_wheel(project: Path, dest: Path) -> Path:
    """The project's wheel (pure Python), built from a copy so the work tree stays clean."""
    with tempfile.TemporaryDirectory(prefix="pi-check-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(project, src, ignore=_IGNORE, symlinks=True)
        _pip([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
              "-w", str(dest), str(src)], "building the project wheel")
    wheels = sorted(dest.glob("edge_infer-*.whl"))
    if not wheels:
        raise StepError(f"pip wheel left no edge_infer-*.whl in {dest}")
    return wheels[-1]


def _pip(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line]
        raise StepError(f"{what} failed (exit {proc.returncode}): {' | '.join(errors[-3:]) or proc.stderr[-300:]}")
