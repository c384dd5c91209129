"""``python -m tools.device_check`` (``make device-check``): the agent as a real systemd service.

Boots a Debian 12 box with systemd as PID 1 (systemd-nspawn; rootfs cached), then drives it
only as an operator would, from the host: ``edge-deploy install-agent --wheelhouse`` with the
shipped unit, ``edge-deploy push`` of signed bundles, commands over the host's Mosquitto.
A failed check prints the unit's journal.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deploy.broker import Mosquitto, free_port, plain_config
from tools.device_check import checks
from tools.device_check.artefacts import Operator, agent_config, build_bundles, video
from tools.device_check.box import Box, build_rootfs, host_tools_problem, rootfs_key_parts
from tools.device_check.camera import Camera, jpeg_frames
from tools.device_check.watch import Watcher
from tools.pi_check.cache import cached_dir, digest, locked
from tools.pi_check.cache import default_cache_dir as pi_cache_dir
from tools.pi_check.host import bundle_key
from tools.pi_check.steps import StepError, StepReport

PROJECT = Path(__file__).resolve().parents[2]
ENV_CACHE = "EDGE_DEVICE_CACHE"
DEVICE_ID = "box1"
CAMERAS = ("cam1", "cam2")


def default_cache_dir() -> Path:
    """$EDGE_DEVICE_CACHE, else /var/cache/edge-device-check (the box needs root anyway)."""
    return Path(os.environ.get(ENV_CACHE) or "/var/cache/edge-device-check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.device_check", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"cache directory (default {default_cache_dir()}; env {ENV_CACHE})")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything in the cache")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = StepReport(prefix="device-check")
    if os.geteuid() != 0:
        report.say("FAILED: needs root (systemd-nspawn boots the box); run it as root or with sudo")
        return 1
    cache = (args.cache or default_cache_dir()).resolve()
    if args.fresh:
        shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    try:
        with locked(cache), tempfile.TemporaryDirectory(prefix="device-check-", dir="/var/tmp") as tmp:
            _run(report, cache, Path(tmp))
    except StepError:
        pass  # already reported by its step
    report.say("summary (cache " + str(cache) + ")\n" + report.summary(time.perf_counter() - start))
    if report.failures:
        report.say(f"FAILED: {report.failures[0]}")
        return 1
    return 0


def _run(report: StepReport, cache: Path, tmp: Path) -> None:
    with report.step("host tools"):
        problem = host_tools_problem()
        if problem:
            raise StepError(problem)
    with report.step("box rootfs (Debian 12, systemd)") as note:
        image, hit = cached_dir(cache, "rootfs", digest(rootfs_key_parts()), build_rootfs)
        note("cached" if hit else "built")
    with report.step("host: digits bundles 1.0.0 and 1.1.0") as note:
        key = bundle_key(PROJECT)
        built: list[str] = []
        artefacts, hit = cached_dir(cache, "bundles", key, lambda d: built.append(
            build_bundles(PROJECT, d, pi_cache_dir() / f"bundle-{key}")))
        note("cached" if hit else built[0])
    operator = Operator(tmp / "operator", PROJECT)
    with report.step("operator: keys and signed bundles"):
        bundles = operator.set_up(artefacts)
    wheelhouse = tmp / "wheelhouse"
    with report.step("edge-deploy wheelhouse") as note:
        note(operator.must("edge-deploy", "wheelhouse", "--platform", platform.machine(), "--output",
                           wheelhouse).strip().splitlines()[-1])
    broker_dir = tmp / "broker"
    broker_dir.mkdir()
    port = free_port()
    broker = Mosquitto(broker_dir, plain_config(broker_dir, port), port)
    broker.start()
    camera = Camera(jpeg_frames(video(artefacts))).start()
    web_root = tmp / "www"
    web_root.mkdir()
    box = Box(image, tmp / "box", f"edgebox{os.getpid()}")
    watcher = Watcher(broker.url, "+")
    try:
        with checks.web_server(web_root) as web_url:
            ssh_port = free_port()
            with report.step("boot the box") as note:
                box.prepare(ssh_port, operator.ssh_key.with_suffix(".pub").read_text())
                note(f"systemd {box.boot()} (sshd on 127.0.0.1:{ssh_port})")
            watcher.start()
            fleet = checks.Fleet(box, operator, broker, camera, web_root, web_url, ssh_port, DEVICE_ID, watcher)
            _checks(report, fleet, tmp, wheelhouse, bundles["1.0.0"], bundles["1.1.0"])
    finally:
        watcher.stop()
        box.stop()
        camera.close()
        broker.stop()


def _checks(report: StepReport, fleet: checks.Fleet, tmp: Path, wheelhouse: Path, v1: Path, v2: Path) -> None:
    config = tmp / "config.toml"
    config.write_text(agent_config(DEVICE_ID, fleet.broker.port, fleet.camera.url))
    cameras = {}
    for name in CAMERAS:
        cameras[name] = tmp / f"{name}.toml"
        cameras[name].write_text(agent_config(f"{DEVICE_ID}-{name}", fleet.broker.port, fleet.camera.url))
    steps: list[tuple[str, Callable[[], str], tuple[str, ...]]] = [
        ("install-agent --wheelhouse", lambda: checks.check_install(fleet, wheelhouse, config), (checks.SERVICE,)),
        ("first push: READY=1, results, health", lambda: checks.check_first_push(fleet, v1), (checks.SERVICE,)),
        ("push 1.1.0, systemctl reload", lambda: checks.check_push_and_reload(fleet, v2), (checks.SERVICE,)),
        ("OTA: rollback, update_model with probation", lambda: checks.check_ota(fleet, v1, v2), (checks.SERVICE,)),
        ("watchdog: camera stalls", lambda: checks.check_watchdog(fleet), (checks.SERVICE,)),
        ("watchdog: a frozen broker is not a stall", lambda: checks.check_slow_broker(fleet), (checks.SERVICE,)),
        ("reboot with the broker away", lambda: checks.check_reboot(fleet, v2), (checks.SERVICE,)),
        ("systemd-analyze security", lambda: checks.check_security(fleet), ()),
        ("edge-agent@.service: two cameras", lambda: checks.check_instances(fleet, wheelhouse, v1, cameras),
         tuple(f"edge-agent@{name}.service" for name in CAMERAS)),
    ]
    for name, check, units in steps:
        try:
            with report.step(name) as note:
                note(check())
        except StepError:
            for unit in units:
                report.say(f"journal of {unit}:\n{fleet.box.journal(unit)}")
            raise
