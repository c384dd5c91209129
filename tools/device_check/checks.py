"""What only a real systemd can show, checked from the host as an operator sees it.

Each check returns a note for the report or raises StepError with one line saying what went
wrong; the caller prints the unit's journal then.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.broker import Mosquitto
from deploy.commands import send_command
from edge_agent.messaging.settings import MqttSettings
from edge_agent.model.bundle import read_bundle
from edge_agent.model.loader import bundle_identity
from edge_agent.runtimes.litert import CPUINFO_WARNING
from edge_agent.util.fs import sha256_file
from tools.device_check.artefacts import Operator
from tools.device_check.box import Box
from tools.device_check.camera import Camera
from tools.device_check.watch import Seen, Watcher
from tools.pi_check.steps import StepError

SERVICE = "edge-agent.service"
SECURITY_TARGET = 2.0
WATCHDOG_S = 30  # WatchdogSec= in the shipped unit
HANG_S = 90  # bounds a hang only


def identity(bundle: Path) -> str:
    """What status and results carry as ``manifest_sha256``: the whole bundle's identity."""
    return bundle_identity(read_bundle(bundle, require_signature=False).manifest_bytes)


@dataclass
class Fleet:
    """The host side: broker, camera, bundle web server, the operator and the watcher of one device."""

    box: Box
    operator: Operator
    broker: Mosquitto
    camera: Camera
    web_root: Path
    web_url: str
    ssh_port: int
    device_id: str
    watcher: Watcher

    # ------------------------------------------------------------------ reading the device

    def results(self, device: str | None = None) -> list[Seen]:
        device = device or self.device_id
        return [m for m in self.watcher.results() if f"/{device}/" in m.topic]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        if not self.watcher.wait(predicate, timeout):
            raise StepError(f"{what} within {timeout:.0f} s")

    def serving(self, bundle: Path, n: int = 5, device: str | None = None) -> list[Seen]:
        """The next ``n`` results come from ``bundle`` (the +2 in flight at a swap are skipped)."""
        want = identity(bundle)
        start = len(self.results(device))
        self.wait(lambda: len(self.results(device)) >= start + n + 2, HANG_S, f"no new results from {bundle.name}")
        fresh = self.results(device)[start + 2:]
        found = {m.body.get("manifest_sha256") for m in fresh}
        if found != {want}:
            raise StepError(f"results come from {sorted(map(str, found))}, not {bundle.name} ({want[:12]})")
        return fresh

    def sent(self, device: str | None = None) -> list[Seen]:
        """Everything the device published (results, health, status, acks): one ``seq`` numbers them all."""
        device = device or self.device_id
        return [m for m in self.watcher.on("") if f"/{device}/" in m.topic and "seq" in m.body]

    def service(self, prop: str, unit: str = SERVICE) -> str:
        return self.box.show(unit, prop)

    def wait_state(self, state: str, unit: str = SERVICE, timeout: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.service("ActiveState", unit)
            if seen == state:
                return
            time.sleep(0.2)
        raise StepError(f"{unit} is {seen or 'unknown'}, not {state}, after {timeout:.0f} s")

    def deploy(self, *args: str | Path) -> str:
        return self.operator.must("edge-deploy", *args[:1], *self.operator.ssh_args(self.ssh_port), *args[1:])

    def send(self, command: str, args: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        settings = MqttSettings.from_any(None, broker=self.broker.url, reconnect_max_s=1.0)
        ack = send_command(settings, self.device_id, command, args, timeout=timeout,
                           sign_key=self.operator.signing_key)
        if ack is None:
            raise StepError(f"no final ack for {command} within {timeout:.0f} s")
        return ack

    def offer(self, bundle: Path, **extra: Any) -> dict[str, Any]:
        shutil.copy(bundle, self.web_root / bundle.name)
        return {"url": f"{self.web_url}/{bundle.name}", "sha256": sha256_file(bundle),
                "size": bundle.stat().st_size, **extra}


# ---------------------------------------------------------------------- checks


def check_install(fleet: Fleet, wheelhouse: Path, config: Path) -> str:
    """install-agent from the wheelhouse with the shipped unit: enabled, waiting for its model, not failed."""
    # install-agent derives each host's device id (the host part of the target by default, here
    # 127.0.0.1): the template names the box as the watcher and the operator know it.
    out = fleet.deploy("install-agent", "--wheelhouse", wheelhouse, "--config", config, "--public-key",
                       fleet.operator.public_key, "--force-config", "--device-id-template", fleet.device_id)
    if "starts with its first model" not in out:
        raise StepError(f"install-agent did not report a service waiting for its model: {out.strip()[-300:]}")
    state, condition = fleet.service("ActiveState"), fleet.service("ConditionResult")
    if state != "inactive" or condition != "no":
        raise StepError(f"before the first model the service is {state} (condition {condition}), "
                        "not inactive with its condition unmet")
    pip = fleet.box.run(["/opt/edge-agent/venv/bin/pip", "list", "--format=freeze"]).stdout
    return f"{len(pip.splitlines())} packages installed with no index; service enabled, waiting for a model"


def check_first_push(fleet: Fleet, bundle: Path) -> str:
    """push starts the service; active only after READY=1 (model loaded); results and health arrive."""
    fleet.deploy("push", bundle)
    fleet.wait_state("active")
    # READY=1 carries STATUS=model NAME VERSION: systemd left "activating" only once the model was loaded
    status = fleet.service("StatusText")
    manifest = read_bundle(bundle, require_signature=False).manifest
    if f"model {manifest.name} {manifest.version}" not in status:
        raise StepError(f"the service is active but its READY status is {status!r}, not the loaded model")
    journal = fleet.box.run(["journalctl", "-u", SERVICE, "-o", "cat", "--no-pager"]).stdout
    if CPUINFO_WARNING in journal or "Error in cpuinfo" in journal:
        raise StepError("under the unit's sandbox LiteRT cannot read /proc/cpuinfo: XNNPACK is off "
                        "(ProcSubset=pid?)")
    started = int(fleet.service("ExecMainStartTimestampMonotonic") or 0)
    active = int(fleet.service("ActiveEnterTimestampMonotonic") or 0)
    fleet.serving(bundle)
    fleet.wait(lambda: len(fleet.watcher.on("/health")) >= 2, HANG_S, "no health messages")
    live = _poll(lambda: fleet.service("StatusText"), lambda text: "fps" in text, HANG_S)
    if "fps" not in live:
        raise StepError(f"systemctl status never showed the agent's live figures (StatusText {live!r})")
    return (f"status {live!r}; activating for {(active - started) / 1e6:.2f} s until READY=1 ({status!r}); XNNPACK on; "
            "results and health")


def check_push_and_reload(fleet: Fleet, bundle: Path) -> str:
    """push of 1.1.0 swaps the running model; systemctl reload keeps it, in the same process."""
    pid = fleet.service("MainPID")
    fleet.deploy("push", bundle)
    fleet.serving(bundle)
    reload = fleet.box.run(["systemctl", "reload", SERVICE])
    if reload.returncode != 0:
        raise StepError(f"systemctl reload failed: {reload.stderr.strip()}")
    fleet.serving(bundle)
    if fleet.service("MainPID") != pid or fleet.service("NRestarts") != "0":
        raise StepError("the push or the reload restarted the service instead of reloading it")
    return f"serving {bundle.name} in the same process (MainPID {pid})"


def check_ota(fleet: Fleet, old: Path, new: Path) -> str:
    """Under ProtectSystem=strict and DynamicUser=: a signed rollback, then update_model with probation."""
    ack = fleet.send("rollback", {})
    if ack.get("status") != "succeeded":
        raise StepError(f"rollback over MQTT: {ack}")
    fleet.serving(old)
    t0 = time.monotonic()
    ack = fleet.send("update_model", fleet.offer(new, probation_s=3.0), timeout=120)
    if ack.get("status") != "succeeded" or "probation" not in json.dumps(ack):
        raise StepError(f"update_model with probation: {ack}")
    fleet.serving(new)
    return f"rollback to {old.name}, then update_model {new.name} with 3 s probation: {time.monotonic() - t0:.1f} s"


def check_watchdog(fleet: Fleet) -> str:
    """A camera that stops delivering stalls inference: SIGABRT by the watchdog, a restart, results again."""
    restarts = int(fleet.service("NRestarts") or 0)
    fleet.camera.pause()
    t0 = time.monotonic()
    try:
        deadline = t0 + WATCHDOG_S + HANG_S
        while int(fleet.service("NRestarts") or 0) <= restarts:
            if time.monotonic() > deadline:
                raise StepError(f"no restart {deadline - t0:.0f} s after the camera stopped")
            time.sleep(0.5)
        caught = time.monotonic() - t0
    finally:
        fleet.camera.resume()
    journal = fleet.box.run(["journalctl", "-u", SERVICE, "-o", "cat", "--no-pager"]).stdout
    if "Watchdog timeout" not in journal or "SIGABRT" not in journal:
        raise StepError("the service restarted, but not by the watchdog (no 'Watchdog timeout' and SIGABRT)")
    fleet.wait_state("active")
    start = len(fleet.results())
    fleet.wait(lambda: len(fleet.results()) >= start + 5, HANG_S, "no results after the watchdog restart")
    return f"stall caught by the watchdog after {caught:.0f} s (WatchdogSec={WATCHDOG_S}); NRestarts " \
           f"{fleet.service('NRestarts')}; results again"


def check_slow_broker(fleet: Fleet) -> str:
    """The broker frozen longer than WatchdogSec: no restart; afterwards every result arrives."""
    restarts, pid = fleet.service("NRestarts"), fleet.service("MainPID")
    assert fleet.broker.proc is not None
    before = _last_seq(fleet.sent())
    frozen_at = time.time()
    os.kill(fleet.broker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(WATCHDOG_S + 10)
        if fleet.service("NRestarts") != restarts or fleet.service("MainPID") != pid:
            raise StepError("a frozen broker made the watchdog restart the agent")
    finally:
        os.kill(fleet.broker.proc.pid, signal.SIGCONT)
        thawed_at = time.time()
    fleet.wait(lambda: any(_ts(m) > thawed_at + 1 for m in fleet.results()), HANG_S,
               "results did not resume after the broker")
    # queued messages are replayed beside live ones, in any order: wait for the whole range
    after = max(int(m.body["seq"]) for m in fleet.sent() if _ts(m) < thawed_at)
    fleet.watcher.wait(lambda: not _missing(fleet.sent(), before, after), HANG_S)
    missing = _missing(fleet.sent(), before, after)
    if missing:
        raise StepError(f"{len(missing)} messages sent while the broker was frozen never arrived: {missing[:5]}")
    during = sum(1 for m in fleet.results() if frozen_at <= _ts(m) < thawed_at)
    return (f"broker frozen {thawed_at - frozen_at:.0f} s: no restart (NRestarts {restarts}); the {during} results "
            f"made meanwhile all arrived (seq {before + 1}..{after}, no gap)")


def check_reboot(fleet: Fleet, bundle: Path) -> str:
    """Broker away, box rebooted: the service is back on the same model and the queued results arrive.

    Every result the agent made before the reboot is counted by the agent itself: its stop summary
    (``N published``, in the box's persistent journal of the previous boot) must equal the results
    received from that process (its envelope ``session``), with no ``seq`` gap among them.
    """
    session = fleet.results()[-1].body.get("session")
    before = _last_seq(fleet.sent())
    fleet.broker.kill()
    time.sleep(4)  # results queue in the outbox
    state = fleet.box.reboot()
    fleet.wait_state("active")
    fleet.broker.start()
    fleet.serving(bundle)
    summary = [line for line in fleet.box.run(["journalctl", "-b", "-1", "-u", SERVICE, "-o", "cat", "--no-pager"]
                                              ).stdout.splitlines() if "SIGTERM:" in line]
    match = re.search(r"(\d+) published", summary[-1]) if summary else None
    if match is None:
        raise StepError("the agent's stop summary is not in the journal of the boot before")
    published = int(match.group(1))

    def from_old() -> list[Seen]:
        return [m for m in fleet.results() if m.body.get("session") == session]

    fleet.watcher.wait(lambda: len({m.body.get("seq") for m in from_old()}) >= published, HANG_S)
    received = {int(m.body.get("seq", 0)) for m in from_old()}
    if len(received) != published:
        raise StepError(f"the agent published {published} results before the reboot, {len(received)} arrived")
    upto = max(received)
    missing = _missing(fleet.sent(), before, upto)
    if missing:
        raise StepError(f"{len(missing)} messages queued before the reboot were lost: {missing[:5]}")
    queued = sum(1 for n in received if n > before)
    return (f"box {state} again on the same model; all {published} results of the process before the reboot "
            f"arrived, {queued} of them queued while the broker was away (seq {before + 1}..{upto}, no gap)")


def check_security(fleet: Fleet, unit: str = SERVICE) -> str:
    proc = fleet.box.run(["systemd-analyze", "security", unit, "--no-pager"])
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    if match is None:
        raise StepError(f"systemd-analyze security printed no exposure level: {proc.stderr.strip()[-200:]}")
    level = float(match.group(1))
    if level > SECURITY_TARGET:
        raise StepError(f"exposure level {level} > {SECURITY_TARGET}")
    return f"{unit}: exposure {level} (target <= {SECURITY_TARGET})"


def check_instances(fleet: Fleet, wheelhouse: Path, bundle: Path, configs: dict[str, Path]) -> str:
    """Two cameras side by side: edge-agent@NAME from the template, each with its config and store."""
    for name, config in configs.items():
        out = fleet.deploy("install-agent", "--wheelhouse", wheelhouse, "--instance", name, "--config", config,
                           "--force-config", "--public-key", fleet.operator.public_key,
                           "--device-id-template", f"{fleet.device_id}-{{instance}}")
        if "starts with its first model" not in out:
            raise StepError(f"install-agent --instance {name}: {out.strip()[-200:]}")
        fleet.deploy("push", bundle, "--state-dir", f"/var/lib/edge-agent-{name}")
    for name in configs:
        fleet.wait_state("active", f"edge-agent@{name}.service")
    for name in configs:
        device = f"{fleet.device_id}-{name}"
        start = len(fleet.results(device))
        fleet.wait(functools.partial(_grown, fleet, device, start + 5), HANG_S, f"no results from {device}")
    levels = [check_security(fleet, f"edge-agent@{name}.service") for name in configs]
    return f"{', '.join(f'edge-agent@{n}' for n in configs)} active, results from each; " + "; ".join(levels)


# ---------------------------------------------------------------------- helpers


def _grown(fleet: Fleet, device: str, count: int) -> bool:
    return len(fleet.results(device)) >= count


def _poll(read: Callable[[], str], done: Callable[[str], bool], timeout: float) -> str:
    """``read()`` until ``done`` says yes or ``timeout`` passes; the last value read."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value


def _last_seq(results: list[Seen]) -> int:
    return max((int(m.body.get("seq", 0)) for m in results), default=0)


def _missing(sent: list[Seen], after: int, upto: int) -> list[int]:
    """The numbers in (after, upto] that no message carried: lost messages."""
    seen = {int(m.body.get("seq", 0)) for m in sent}
    return [n for n in range(after + 1, upto + 1) if n not in seen]


def _ts(message: Seen) -> float:
    """When the device made the message (the envelope's ``ts_ms``), in seconds."""
    value = message.body.get("ts_ms", 0)
    return float(value) / 1000 if isinstance(value, (int, float)) else 0.0


@contextmanager
def web_server(root: Path) -> Iterator[str]:
    """Bundles for update_model, served on 127.0.0.1 (the box shares the host's loopback)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
