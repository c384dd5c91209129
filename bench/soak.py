"""Soak: a device's bad hour compressed into minutes, on the real agent; nothing may go missing.

The real ``edge-agent run`` runs the digits model from its model store (signed bundles, pinned
key) on a looping video paced at ``FPS``, publishing every result to a local Mosquitto, with its
state directory on a small tmpfs (when run as root). A collector with a persistent MQTT session
records every message. Over ``CYCLES`` cycles (``EDGE_BENCH_SOAK_S`` sets the total, default
300 s) the broker is stopped for a third of every cycle and started again; in two cycles the
state disk is filled to the last byte and freed again (once while the broker is up, once while it
is down); in the middle a signed ``update_model`` installs v2 over local HTTP, and later a signed
``rollback`` returns to v1. The agent stops by itself after ``--max-frames`` results.

Accounting, per result the agent produced (``--max-frames``, one result per frame with
``--events every``): delivered (unique ``seq``), still queued in ``outbox.db`` after the agent
exited (persisted, sent at the next start), or dropped and counted by the agent with a reason
(``outbox_dropped`` in health: nowhere to store it while the broker was away). **Unaccounted**
= produced − delivered − queued − dropped must be 0. RSS is sampled every second; the figure is
the change between the first and the last tenth of the run.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.agent_pipeline import render_video
from bench.common import CACHE, BenchResult, RssWatcher, tool
from bench.models import ensure_models
from deploy.broker import Mosquitto, free_port, plain_config
from deploy.commands import send_command
from edge_agent.messaging.link import MqttLink, MqttSettings
from edge_agent.messaging.paho_client import InboundMessage
from edge_agent.model.bundle import read_bundle, write_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.util.fs import sha256_file

DEVICE = "soak-1"
FPS = 40
CYCLES = 10
TMPFS_BYTES = 32 * 1024 * 1024
FULL_CYCLE_UP, FULL_CYCLE_DOWN, OTA_CYCLE, ROLLBACK_CYCLE = 2, 6, 4, 8


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Collector:
    """Every message of the device, through a persistent session that outlives broker restarts."""

    def __init__(self, url: str) -> None:
        self.lock = threading.Lock()
        self.results: dict[int, str] = {}  # seq → manifest identity of the model that produced it
        self.duplicates = 0
        self.health: list[dict[str, Any]] = []
        self.link = MqttLink(MqttSettings(broker=url, keepalive=5, reconnect_min_s=0.5, reconnect_max_s=1.0),
                             "soak-collector", subscriptions=(f"edge/v1/{DEVICE}/#",), session_expiry_s=3600)
        self.link.callbacks.on_message = self._on_message

    def _on_message(self, message: InboundMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self.lock:
            if message.topic.endswith("/evt/classification"):
                if body["seq"] in self.results:
                    self.duplicates += 1
                self.results[body["seq"]] = body.get("manifest_sha256", "")
            elif message.topic.endswith("/health"):
                self.health.append(body)


@contextlib.contextmanager
def state_disk(path: Path) -> Iterator[bool]:
    """A small tmpfs as the agent's state directory when root may mount one; yields whether it is."""
    path.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)], check=False, capture_output=True
    ).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a ballast file until the filesystem refuses another byte."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    return ballast


def _signed(source: Path, target: Path, version: str, key: Path) -> Path:
    bundle = read_bundle(source, require_signature=False)
    manifest = bundle.manifest.model_copy(update={"version": version})
    write_bundle(target, manifest, bundle.model_bytes, dict(bundle.files), sign_key=load_private_key(key))
    return target


def _identity(bundle: Path) -> str:
    from edge_agent.model.loader import bundle_identity

    return bundle_identity(read_bundle(bundle, require_signature=False).manifest_bytes)


def _queued_seqs(state: Path) -> set[int]:
    """The seq of every result still in ``outbox.db`` (some may be delivered but not yet deleted)."""
    db = state / "outbox.db"
    if not db.exists():
        return set()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE topic LIKE '%/evt/%'").fetchall()
    return {int(json.loads(payload)["seq"]) for (payload,) in rows}


def _dropped(health: dict[str, Any]) -> dict[str, int]:
    dropped = health.get("outbox_dropped") or health.get("outbox", {}).get("dropped") or {}
    return {str(k): int(v) for k, v in dropped.items()} if isinstance(dropped, dict) else {}


def _command(settings: MqttSettings, name: str, args: dict[str, Any], key: Path, cycle_s: float) -> str:
    """Send a signed command to the device; its final status."""
    ack = send_command(settings, DEVICE, name, args, timeout=max(20.0, cycle_s / 2), sign_key=key)
    return str((ack or {}).get("status", "no answer"))


def soak(work: Path, seconds: float) -> dict[str, Any]:
    paths = ensure_models()
    video = render_video(paths["digits_test"], CACHE / "digits32.avi", 300)
    private, public = work / "keys" / "ed25519.pem", work / "keys" / "ed25519.pub"
    private.parent.mkdir()
    generate_keypair(private, public)
    www = work / "www"
    www.mkdir()
    v1 = _signed(paths["digits_bundle"], work / "v1.bundle", "1.0.0", private)
    v2 = _signed(paths["digits_bundle"], www / "v2.bundle", "2.0.0", private)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (work / "broker").mkdir()
    port = free_port()
    broker = Mosquitto(work / "broker", plain_config(work / "broker", port), port)
    broker.start()
    collector = Collector(broker.url)
    collector.link.start()
    cycle_s = seconds / CYCLES
    frames = int(FPS * seconds)
    events: list[str] = []
    acks: dict[str, str] = {}
    state = work / "state"
    try:
        with state_disk(state) as on_tmpfs:
            subprocess.run([tool("edge-agent"), "install-model", str(v1), "--state-dir", str(state),
                            "--public-key", str(public)], check=True, capture_output=True, timeout=120)
            agent = subprocess.Popen(
                [tool("edge-agent"), "run", "--state-dir", str(state), "--public-key", str(public),
                 "--source", str(video), "--loop", "--fps", str(FPS), "--max-frames", str(frames),
                 "--events", "every", "--health-interval", "2", "--device-id", DEVICE,
                 "--broker", broker.url, "--keepalive", "5"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            watcher = RssWatcher(agent.pid, interval=1.0)
            settings = MqttSettings(broker=broker.url, keepalive=5)
            t0 = time.monotonic()
            for cycle in range(CYCLES):
                up_until = t0 + cycle_s * (cycle + 2 / 3)
                if cycle == FULL_CYCLE_UP and on_tmpfs:
                    ballast = fill(state)
                    events.append(f"cycle {cycle}: state disk full for {cycle_s / 3:.0f} s, broker up")
                    time.sleep(cycle_s / 3)
                    ballast.unlink()
                if cycle == OTA_CYCLE:
                    args = {"url": f"http://127.0.0.1:{server.server_address[1]}/v2.bundle",
                            "sha256": sha256_file(v2), "size": v2.stat().st_size, "probation_s": 2}
                    acks["update_model"] = _command(settings, "update_model", args, private, cycle_s)
                    events.append(f"cycle {cycle}: update_model to v2 → {acks['update_model']}")
                if cycle == ROLLBACK_CYCLE:
                    acks["rollback"] = _command(settings, "rollback", {}, private, cycle_s)
                    events.append(f"cycle {cycle}: rollback to v1 → {acks['rollback']}")
                time.sleep(max(0.0, up_until - time.monotonic()))
                broker.stop()
                if cycle == FULL_CYCLE_DOWN and on_tmpfs:
                    ballast = fill(state)
                    events.append(f"cycle {cycle}: state disk full during the broker outage")
                time.sleep(max(0.0, t0 + cycle_s * (cycle + 1) - time.monotonic()))
                if cycle == FULL_CYCLE_DOWN and on_tmpfs:
                    ballast.unlink()
                broker.start()
            try:
                code = agent.wait(timeout=max(120.0, seconds))
            except subprocess.TimeoutExpired:
                agent.kill()
                code = agent.wait()
            watcher.stop()
            stderr = agent.stderr.read() if agent.stderr else ""
            queued_seqs = _queued_seqs(state)
            time.sleep(3.0)  # the collector's last messages
    finally:
        collector.link.stop()
        broker.stop()
        server.shutdown()
        server.server_close()
    if code != 0:
        raise RuntimeError(f"the agent exited with {code}: {stderr[-2000:]}")
    with collector.lock:
        delivered = len(collector.results)
        queued = len(queued_seqs - set(collector.results))  # delivered rows not yet deleted count once
        by_model = {"v1": sum(1 for m in collector.results.values() if m == _identity(v1)),
                    "v2": sum(1 for m in collector.results.values() if m == _identity(v2))}
        last_health = collector.health[-1] if collector.health else {}
        duplicates = collector.duplicates
    dropped = _dropped(last_health)
    samples = [mb for t, mb in watcher.samples if t >= 10.0]
    tenth = max(1, len(samples) // 10)
    first, last = sum(samples[:tenth]) / tenth, sum(samples[-tenth:]) / tenth
    by_cycle = [round(statistics.median([mb for t, mb in watcher.samples if c * cycle_s <= t < (c + 1) * cycle_s]
                                        or [0.0]), 1) for c in range(CYCLES)]
    return {
        "seconds": round(seconds), "cycles": CYCLES, "state_on_tmpfs": on_tmpfs, "produced": frames,
        "delivered": delivered, "queued_after_exit": queued, "dropped": dropped,
        "unaccounted": frames - delivered - queued - sum(dropped.values()),
        "duplicates": duplicates, "results_by_model": by_model, "acks": acks, "events": events,
        "rss_first_tenth_mb": round(first, 1), "rss_last_tenth_mb": round(last, 1),
        "rss_change_mb": round(last - first, 1), "rss_max_mb": round(max(samples), 1),
        "rss_median_by_cycle_mb": by_cycle,
    }


def main() -> BenchResult:
    seconds = float(os.environ.get("EDGE_BENCH_SOAK_S", "300"))
    with tempfile.TemporaryDirectory() as tmp:
        f = soak(Path(tmp), seconds)
    events = "\n".join(f"- {e}" for e in f["events"])
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(f["dropped"].items())) or "none"
    markdown = f"""
The real `edge-agent run` (digits model from its store, signed bundles, `--events every` at {FPS} fps,
state directory on a {TMPFS_BYTES >> 20} MiB tmpfs: {f['state_on_tmpfs']}) for {f['seconds']} s: {f['cycles']}
cycles, each with the broker stopped for its last third, plus:
{events}

| figure | value |
|---|---|
| results produced (`--max-frames`) | {f['produced']:,} |
| delivered (unique seq) | {f['delivered']:,} |
| still queued in `outbox.db` after the agent exited | {f['queued_after_exit']:,} |
| dropped and counted by the agent (reason n) | {dropped} |
| **unaccounted (lost without a count)** | **{f['unaccounted']}** |
| duplicates delivered | {f['duplicates']} |
| results from v1 / v2 | {f['results_by_model']['v1']:,} / {f['results_by_model']['v2']:,} |
| RSS first tenth → last tenth (max) | {f['rss_first_tenth_mb']} → {f['rss_last_tenth_mb']} MB \
({f['rss_change_mb']:+} MB; max {f['rss_max_mb']}) |
| RSS median per cycle, MB | {' / '.join(str(v) for v in f['rss_median_by_cycle_mb'])} |
"""
    result = BenchResult("soak", "Soak: outages, a full disk and an update in one run", f, markdown,
                         targets={"unaccounted": "0", "rss_change_mb": "< 5"})
    result.save()
    return result


if __name__ == "__main__":
    print(main().markdown)
