"""``python -m tools.pi_check``: set up the emulated Pi (cached), then run every check on each CPU."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

from tools.pi_check import checks
from tools.pi_check.cache import cached_dir, default_cache_dir, digest, locked
from tools.pi_check.cpus import CPUS, PI4, PiCpu
from tools.pi_check.durations import DURATIONS_FILE, junit_durations, load_durations, store_durations
from tools.pi_check.guest import Guest, binfmt_problem, host_tools_problem
from tools.pi_check.host import BUNDLE, VIDEO, build_bundle_and_video, bundle_key, run_agent_on_host
from tools.pi_check.install import copy_wheels, copy_work_files, install_project
from tools.pi_check.rootfs import build_rootfs, rootfs_key_parts
from tools.pi_check.steps import StepError, StepReport
from tools.pi_check.wheels import (
    PLATFORMS,
    TEST_PACKAGES,
    build_project_wheel,
    device_requirements,
    download_wheels,
    requirement_name,
)

PROJECT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.pi_check", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"cache directory (default {default_cache_dir()}; env EDGE_PI_CACHE)")
    parser.add_argument("--cpu", action="append", choices=sorted(CPUS),
                        help="emulated board (repeatable; default pi4 and pi5)")
    parser.add_argument("--route", choices=["auto", "chroot", "qemu-L"], default="auto",
                        help="chroot needs binfmt_misc (default when it can be registered)")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything in the cache")
    parser.add_argument("--store-durations", action="store_true",
                        help=f"after the unit tests pass, write each test file's seconds to {DURATIONS_FILE} "
                             "(how the files are dealt to the CPUs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache = (args.cache or default_cache_dir()).resolve()
    cpus = [CPUS[key] for key in (args.cpu or ["pi4", "pi5"])]
    report = StepReport()
    start = time.perf_counter()
    try:
        durations = load_durations()
    except StepError as exc:
        print(f"pi-check: {exc}", file=sys.stderr)
        return 2
    if args.fresh:
        shutil.rmtree(cache, ignore_errors=True)
    try:
        with locked(cache), tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
            guest, host_stdout = _set_up(report, cache, Path(tmp), args.route)
            logs = cache / "logs"
            logs.mkdir(exist_ok=True)
            shares = checks.unit_test_shares(PROJECT, len(cpus), durations)
            unit_runs = {cpu.key: (checks.start_unit_tests(guest, cpu, logs / f"unit-{cpu.key}.log", share),
                                   logs / f"unit-{cpu.key}.log")
                         for cpu, share in zip(cpus, shares, strict=True) if guest.can_spawn}
            try:
                for cpu in cpus:
                    _check_cpu(report, guest, cpu, host_stdout, unit_runs.get(cpu.key))
                if args.store_durations and unit_runs and not report.failures:
                    with report.step("store unit test durations") as note:
                        note(_store_durations(guest, cpus))
            finally:
                for proc, _ in unit_runs.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    except StepError:
        pass  # already reported by its step
    report.say("summary (cache " + str(cache) + ")\n" + report.summary(time.perf_counter() - start))
    if report.failures:
        report.say(f"FAILED: {report.failures[0]}" + (f" (and {len(report.failures) - 1} more)"
                                                       if len(report.failures) > 1 else ""))
        return 1
    return 0


def _store_durations(guest: Guest, cpus: list[PiCpu]) -> str:
    figures: dict[str, float] = {}
    for cpu in cpus:
        path = guest.host_path(checks.junit_path(cpu))
        try:
            figures.update(junit_durations(path.read_bytes()))
        except (OSError, ET.ParseError) as exc:
            raise StepError(f"{path}: no JUnit XML to read ({exc})") from None
    store_durations(figures)
    return f"{len(figures)} files, {sum(figures.values()):.0f} s in all, written to {DURATIONS_FILE}"


def _set_up(report: StepReport, cache: Path, tmp: Path, route: str) -> tuple[Guest, str]:
    """Host tools, binfmt, rootfs, wheels, bundle, the host run and the guest install; aborts on failure."""
    with report.step("host tools"):
        problem = host_tools_problem()
        if problem:
            raise StepError(problem)
    with report.step("binfmt_misc") as note:
        problem = binfmt_problem() if route != "qemu-L" else "--route qemu-L"
        if problem and route == "chroot":
            raise StepError(problem)
        chosen = "qemu-L" if problem else "chroot"
        note(f"route {chosen}" + (f" ({problem})" if problem else ""))
    with report.step("arm64 rootfs") as note:
        root, hit = cached_dir(cache, "rootfs", digest(rootfs_key_parts()), build_rootfs)
        note("cached" if hit else f"built in {root}")
    guest = Guest(root=root, route=chosen, scratch=tmp)
    requirements = device_requirements(PROJECT)
    wheels_key = digest([*requirements, *PLATFORMS])
    with report.step("aarch64 wheels") as note:
        wheels, hit = cached_dir(cache, "wheels", wheels_key, lambda d: download_wheels(requirements, d))
        litert = next((w.name for w in wheels.glob("ai_edge_litert-*.whl")), "no ai-edge-litert wheel!")
        note(("cached: " if hit else "downloaded: ") + litert)
    with report.step("project wheel") as note:
        project_wheel = build_project_wheel(PROJECT, tmp / "dist")
        note(project_wheel.name)
    with report.step("host: digits bundle and video") as note:
        artefacts, hit = cached_dir(cache, "bundle", bundle_key(PROJECT), lambda d: build_bundle_and_video(PROJECT, d))
        note("cached" if hit else "trained and converted")
    with report.step("host: edge-agent run") as note:
        host_stdout = run_agent_on_host(PROJECT, artefacts / BUNDLE, artefacts / VIDEO, tmp / "host-state")
        note(f"{host_stdout.count(chr(10))} lines")
    with report.step("guest: venv + pip install") as note:
        copy_wheels(guest, wheels, project_wheel)
        tests = [r for r in requirements if requirement_name(r) in TEST_PACKAGES]
        note(install_project(guest, PI4, wheels_key, project_wheel, tests))
        copy_work_files(guest, PROJECT, [artefacts / BUNDLE, artefacts / VIDEO])
    return guest, host_stdout


def _check_cpu(report: StepReport, guest: Guest, cpu: PiCpu, host_stdout: str,
               unit_run: tuple[subprocess.Popen[bytes], Path] | None) -> None:
    """Every check on one CPU; a failure is reported and the next check still runs.

    The unit tests were started in the background for every CPU at once; their step waits here.
    """
    steps: list[tuple[str, Callable[[], str], bool]] = [
        ("imports", lambda: checks.check_imports(guest, cpu), False),
        ("edge-agent check", lambda: checks.check_bundle(guest, cpu), False),
        ("edge-agent run vs host", lambda: checks.check_run(guest, cpu, host_stdout), False),
        ("install-model smoke child", lambda: checks.check_install_model(guest, cpu), True),
    ]
    if unit_run is not None:
        steps.append(("device unit tests, its share (all started with the first CPU)",
                      lambda: checks.finish_unit_tests(*unit_run), True))
    elif not guest.can_spawn:
        steps.append(("device unit tests", lambda: "", True))
    for name, check, spawns in steps:
        title = f"[{cpu.label}] {name}"
        if spawns and not guest.can_spawn:
            report.skip(title, "guest processes cannot start child processes without binfmt_misc")
            continue
        try:
            with report.step(title) as note:
                note(check())
        except StepError:
            continue
