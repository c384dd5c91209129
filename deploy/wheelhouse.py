"""A wheelhouse: the agent and every dependency as wheels for a device's platform.

Most field devices cannot reach a package index. ``edge-deploy wheelhouse --platform aarch64
--output DIR`` resolves the agent's base install (no TensorFlow) on the operator's machine for
the device (CPython 3.11, glibc 2.36 = Debian 12 / Raspberry Pi OS Bookworm), and
``edge-deploy install-agent --wheelhouse DIR`` uploads it and installs with ``pip install
--no-index --find-links``. The same resolution by hand::

    pip download --only-binary=:all: --python-version 3.11 --implementation cp \\
        --platform manylinux_2_36_aarch64 ... --platform manylinux2014_aarch64 -d DIR edge_infer-*.whl

The platform tags are listed newest first and without gaps: leaving out ``manylinux_2_27``
makes pip fall back to ai-edge-litert 1.x and to older OpenCV and cryptography builds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from edge_agent.errors import EdgeError

ARCHES = ("aarch64", "x86_64")
PYTHON_VERSION = "3.11"
GLIBC_MINORS = range(36, 16, -1)  # Debian 12 has glibc 2.36
PROJECT_WHEEL_GLOB = "edge_infer-*.whl"
# Not copied when building the project wheel from a checkout.
_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache",
                                 "demo-out", "mutants", ".bench-cache", "state", ".notes")
PIP_TIMEOUT_S = 1800


class WheelhouseError(EdgeError):
    """The wheelhouse could not be built or is not usable; the message says what to fix."""


def platform_tags(arch: str) -> list[str]:
    """pip ``--platform`` tags for a Debian 12 device of this architecture, newest first."""
    if arch not in ARCHES:
        raise WheelhouseError(f"unknown platform {arch!r}; use one of {', '.join(ARCHES)}")
    return [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS] + [f"manylinux2014_{arch}"]


def platform_args(arch: str) -> list[str]:
    """The ``pip download/install`` arguments that resolve for the device instead of this machine."""
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in platform_tags(arch):
        args += ["--platform", tag]
    return args


def source_checkout() -> Path | None:
    """The project checkout this code runs from, or None when installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "edge_agent").is_dir() else None


def build_project_wheel(project: Path, dest: Path) -> Path:
    """The project's own wheel (pure Python), built from a copy so the work tree stays clean."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(project, src, ignore=_IGNORE, symlinks=True)
        _pip(["wheel", "-q", "--no-deps", "-w", str(dest), str(src)], "building the agent's wheel")
    wheels = sorted(dest.glob(PROJECT_WHEEL_GLOB), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise WheelhouseError(f"pip wheel left no {PROJECT_WHEEL_GLOB} in {dest}")
    return wheels[-1]


def agent_requirement() -> str:
    """What to download when not running from a checkout: the installed agent's exact version."""
    try:
        return f"edge-infer=={metadata.version('edge-infer')}"
    except metadata.PackageNotFoundError as exc:
        raise WheelhouseError("edge-infer is not installed here; give --package WHEEL") from exc


def build_wheelhouse(output: Path, arch: str, package: str | None = None,
                     extra: list[str] | None = None) -> list[Path]:
    """Fill ``output`` with the agent's wheel and its dependencies' wheels for ``arch``.

    ``package``: a local wheel, or a requirement; default the checkout's own wheel (built here)
    or, when installed, ``edge-infer==<installed version>``. ``extra``: more requirements.
    Written to a temporary sibling and renamed, so ``output`` is either complete or absent.
    """
    platform_tags(arch)  # check the name before any work
    if output.exists() and any(output.iterdir()):
        raise WheelhouseError(f"{output} exists and is not empty; give a new directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if package is None:
            checkout = source_checkout()
            requirement = str(build_project_wheel(checkout, tmp)) if checkout else agent_requirement()
        elif Path(package).is_file():
            requirement = str(shutil.copy2(package, tmp))
        else:
            requirement = package
        _pip(["download", "-q", "-d", str(tmp), *platform_args(arch), requirement, *(extra or [])],
             f"pip download for {arch}")
        if not any(tmp.glob(PROJECT_WHEEL_GLOB)):
            raise WheelhouseError(f"{requirement} did not give an {PROJECT_WHEEL_GLOB}; is it the agent?")
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(output.glob("*.whl"))


def check_wheelhouse(directory: Path) -> Path:
    """The agent's wheel in a wheelhouse directory; WheelhouseError when it is not one."""
    if not directory.is_dir():
        raise WheelhouseError(f"{directory} is not a directory; build one with edge-deploy wheelhouse")
    wheels = sorted(directory.glob(PROJECT_WHEEL_GLOB))
    if len(wheels) != 1:
        found = ", ".join(w.name for w in wheels) or "none"
        raise WheelhouseError(f"{directory} must hold exactly one {PROJECT_WHEEL_GLOB} (found {found}); "
                              "build it with edge-deploy wheelhouse")
    return wheels[0]


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise WheelhouseError(f"{what} timed out after {PIP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line]
        raise WheelhouseError(f"{what} failed (exit {proc.returncode}): "
                              f"{' | '.join(errors[-3:]) or proc.stderr.strip()[-300:]}")
