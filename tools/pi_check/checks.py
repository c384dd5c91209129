"""The checks run on each emulated Pi CPU: imports, ``check``, ``run`` vs the host, unit tests,
``install-model``. Each raises StepError with one line saying what went wrong."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools.pi_check.cpus import PiCpu
from tools.pi_check.durations import deal
from tools.pi_check.guest import Guest
from tools.pi_check.host import BUNDLE, VIDEO, agent_run_args
from tools.pi_check.install import WORK
from tools.pi_check.results import compare_frames, frame_results
from tools.pi_check.steps import StepError

# Every module of the device package, and the native packages it relies on.
_IMPORTS = r"""
import importlib, pkgutil, platform, sys
import edge_agent
names = [m.name for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
import ai_edge_litert.interpreter, cv2, numpy, paho.mqtt.client, cryptography
from importlib.metadata import version
print(platform.machine(), len(names), "modules;", "ai-edge-litert", version("ai-edge-litert"),
      "numpy", numpy.__version__, "opencv", cv2.__version__)
"""
UNIT_TIMEOUT = 1800.0
DEVICE_TESTS = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                "-m", "not tensorflow and not sklearn"]
HOST_ONLY_TESTS = ("bench", "tools")  # tests/unit/<these>: the host's tooling, not the device's code


def unit_test_shares(project: Path, shares: int, durations: Mapping[str, float] | None = None
                     ) -> list[list[str]]:
    """The device-side unit test files (relative to the project), dealt into ``shares`` of about
    equal time by their measured ``durations`` (``tools/pi_check/durations.py``; round-robin
    without figures).

    Each emulated CPU runs one share, all at once: every test runs on an emulated aarch64, and the
    run takes about 1/``shares`` of the time one CPU would need for all of them (qemu runs each
    guest process on one host core).
    """
    unit = project / "tests" / "unit"
    files = sorted(str(path.relative_to(project)) for path in unit.rglob("test_*.py")
                   if path.relative_to(unit).parts[0] not in HOST_ONLY_TESTS)
    return deal(files, shares, durations or {})


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def check_imports(guest: Guest, cpu: PiCpu) -> str:
    proc = guest.run([*guest.python(), "-c", _IMPORTS], cpu)
    if proc.returncode != 0 or not proc.stdout.startswith("aarch64"):
        raise StepError(f"import failed (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)}")
    return proc.stdout.strip()


def _latency_only(failures: list[str]) -> bool:
    """The smoke test failed only on its latency budget, which emulation cannot judge."""
    return bool(failures) and all(f.startswith("latency ") for f in failures)


def check_bundle(guest: Guest, cpu: PiCpu) -> str:
    proc = guest.run([*guest.tool("edge-agent"), "check", "--bundle", f"{WORK}/{BUNDLE}", "--json"], cpu)
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepError(f"no result (exit {proc.returncode}): {_tail(proc.stderr)}") from None
    note = f"{result['vectors']} golden vectors, max |error| {result['max_abs_error']}, " \
           f"{result['latency_ms']} ms per inference"
    if result["passed"]:
        return note
    if _latency_only(result["failures"]):
        return note + " (over the bundle's latency budget: not judged under emulation)"
    raise StepError("; ".join(result["failures"]))


def check_run(guest: Guest, cpu: PiCpu, host_stdout: str) -> str:
    args = agent_run_args(f"{WORK}/{BUNDLE}", f"{WORK}/{VIDEO}", f"{WORK}/state-run-{cpu.key}")
    proc = guest.run([*guest.tool("edge-agent"), *args], cpu)
    if proc.returncode != 0:
        raise StepError(f"edge-agent run exited {proc.returncode}: {_tail(proc.stderr)}")
    host, pi = frame_results(host_stdout), frame_results(proc.stdout)
    problems = compare_frames(host, pi)
    if problems:
        raise StepError("; ".join(problems))
    return f"{len(pi)} frames, every result identical to the host's; {_tail(proc.stderr, 1)}"


def start_unit_tests(guest: Guest, cpu: PiCpu, log: Path, files: list[str]) -> subprocess.Popen[bytes]:
    """Start device unit test ``files`` in the background (the slowest check: both CPUs run at once)."""
    guest.host_path(junit_path(cpu)).unlink(missing_ok=True)  # never a former run's figures
    argv = [*guest.python(), *DEVICE_TESTS, f"--basetemp={WORK}/pytest-{cpu.key}",
            f"--junitxml={junit_path(cpu)}", *files]
    return guest.start(argv, cpu, log, cwd=f"{WORK}/src")


def junit_path(cpu: PiCpu) -> str:
    """Where a CPU's unit test run writes its JUnit XML, in the guest (per-file times)."""
    return f"{WORK}/junit-{cpu.key}.xml"


def finish_unit_tests(proc: subprocess.Popen[bytes], log: Path, timeout: float = UNIT_TIMEOUT) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise StepError(f"still running after {timeout:.0f} s; output in {log}") from None
    output = log.read_text(errors="replace")
    summary = _tail(output, 1)
    if proc.returncode != 0:
        failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        raise StepError(f"{summary}: {'; '.join(failed[:5]) or _tail(output)} (output in {log})")
    return summary


def check_install_model(guest: Guest, cpu: PiCpu) -> str:
    """``install-model`` runs the bundle's smoke test in a child process (an arm64 process start)."""
    state = f"{WORK}/state-install-{cpu.key}"
    proc = guest.run([*guest.tool("edge-agent"), "install-model", f"{WORK}/{BUNDLE}", "--state-dir", state,
                      "--json"], cpu)
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepError(f"no result (exit {proc.returncode}): {_tail(proc.stderr)}") from None
    if result.get("ok", True) and proc.returncode == 0:
        return f"{result.get('status', 'installed')}"
    error = str(result.get("error", ""))
    parts = error.split("; ")
    if result.get("step") == "smoke" and _latency_only(parts[1:]):
        return "smoke child ran, golden vectors passed; refused only for the latency budget (not judged " \
               "under emulation)"
    raise StepError(f"{result.get('step', '?')}: {error}")
