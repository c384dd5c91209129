"""Model update figures: inference gap during a swap, update_model → succeeded, rollback time.

- Swap gap (real agent): ``edge-agent run`` on a looping video file (results on a
  pipe), a new bundle installed with ``edge_agent.store.install.install_model`` (the function
  behind ``edge-agent install-model``) and picked up on SIGHUP; the largest interval
  between consecutive results around the swap against the median interval.
- update_model → succeeded (component figure): :class:`edge_agent.remote.ota.OtaUpdater`
  in this process (download over local HTTP, checks, smoke test in a child process,
  atomic swap, reload) driving an in-process stand-in host (``_Host``: an interpreter
  loop over the store's active model), not the agent over MQTT; probation 0 s,
  median of several updates.
- Rollback: the updater's rollback against the same stand-in host (component
  figure), and ``edge-agent rollback`` as a process against the store (wall time).
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.agent_pipeline import render_video
from bench.common import CACHE, BenchResult, tool
from bench.models import ensure_models
from edge_agent.control import ProbeSample
from edge_agent.model.bundle import read_bundle, write_bundle
from edge_agent.remote import ota
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.util.fs import sha256_file

UPDATES = 5


def _repack(source: Path, target: Path, version: str) -> Path:
    bundle = read_bundle(source, require_signature=False)
    manifest = bundle.manifest.model_copy(update={"version": version})
    write_bundle(target, manifest, bundle.model_bytes, dict(bundle.files))
    return target


def swap_gap(bundle: Path, video: Path, work: Path) -> dict[str, float]:
    state = work / "swap-state"
    store_install.install_model(bundle, state)
    new = _repack(bundle, work / "swap-v2.bundle", "9.0.0")
    proc = subprocess.Popen(
        [tool("edge-agent"), "run", "--state-dir", str(state), "--source", str(video), "--loop",
         "--events", "every"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stamps: list[float] = []  # result creation times (envelope ts_ms), seconds
    swapped: list[float] = []  # ts of the status message announcing the new version

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            payload = message.get("payload", {})
            if "/evt/" in message.get("topic", ""):
                stamps.append(payload["ts_ms"] / 1000.0)
            elif message.get("topic", "").endswith("/status") and \
                    payload.get("model", {}).get("version") == "9.0.0":
                swapped.append(payload["ts_ms"] / 1000.0)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while len(stamps) < 200:
        time.sleep(0.05)
    t0 = time.perf_counter()
    result = store_install.install_model(new, state)
    install_s = time.perf_counter() - t0
    if not result.agent_signalled:
        proc.send_signal(signal.SIGHUP)
    time.sleep(3.0)
    proc.terminate()
    proc.wait(10)
    reader.join(5)
    if not swapped:
        raise RuntimeError("the agent never reported the new model")
    t_swap = swapped[0]
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    around = [b - a for a, b in itertools.pairwise(stamps) if -1.0 < a - t_swap < 0.5]
    return {"median_interval_ms": statistics.median(intervals) * 1000,
            "max_gap_ms": max(around) * 1000 if around else float("nan"),
            "install_s": install_s}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Host:
    """A running interpreter loop over the store's active model (like the agent's)."""

    def __init__(self, state: Path) -> None:
        from edge_agent.runtimes import create_runtime

        self.state_dir, self.bundle_key = state, None
        self._create = create_runtime
        self.inferences = 0
        self._runtime = self._load()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _load(self) -> Any:
        model = store_layout.active_model(self.state_dir)
        assert model is not None
        return self._create("litert", read_bundle(model.bundle_path).model_bytes)

    def _loop(self) -> None:
        import numpy as np

        spec = self._runtime.inputs[0]
        x = np.zeros(spec.shape, dtype=np.dtype(spec.dtype))
        while not self._stop.wait(0.002):
            self._runtime.infer(x)
            self.inferences += 1

    def reload_model(self) -> dict[str, str]:
        """Load the store's active model; report its identity as the agent's reload does."""
        self._runtime = self._load()
        model = store_layout.active_model(self.state_dir)
        assert model is not None
        return {k: v for k, v in ota.describe(model).items() if isinstance(v, str)}

    def probe(self) -> ProbeSample:
        return ProbeSample(self.inferences, 0, None)

    def stop(self) -> None:
        self._stop.set()


def update_times(bundle: Path, work: Path) -> dict[str, float]:
    state = work / "ota-state"
    store_install.install_model(bundle, state)
    www = work / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = _Host(state)
    updater = ota.OtaUpdater(host)  # type: ignore[arg-type]
    totals, rollbacks = [], []
    try:
        for i in range(UPDATES):
            path = _repack(bundle, www / f"v{i}.bundle", f"2.0.{i}")
            args = {"url": f"http://127.0.0.1:{server.server_address[1]}/{path.name}",
                    "sha256": sha256_file(path), "size": path.stat().st_size, "probation_s": 0}
            acks: list[Any] = []
            t0 = time.perf_counter()
            updater.start_update(ota.parse_update_args(args), f"u{i}", acks.append)
            updater.join(120)
            totals.append(time.perf_counter() - t0)
            assert acks[-1].status == "succeeded", acks[-1]
            t0 = time.perf_counter()
            ack = updater.rollback(f"r{i}")
            rollbacks.append(time.perf_counter() - t0)
            assert ack.status == "succeeded", ack
            store_install.install_model(path, state)  # forward again for the next round
            host.reload_model()
    finally:
        host.stop()
        server.shutdown()
        server.server_close()
    cli = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([tool("edge-agent"), "rollback", "--state-dir", str(state)], check=True,
                       capture_output=True)
        cli.append(time.perf_counter() - t0)
    return {"update_s": statistics.median(totals), "update_max_s": max(totals),
            "rollback_reload_ms": statistics.median(rollbacks) * 1000,
            "rollback_cli_ms": statistics.median(cli) * 1000}


def main() -> BenchResult:
    paths = ensure_models()
    bundle = paths["digits_big_bundle"]
    video = render_video(paths["test_big"], CACHE / "digits_big.avi", 600)
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        gap = swap_gap(bundle, video, work)
        upd = update_times(bundle, work)
    figures = {k: round(v, 3) for k, v in {**gap, **upd}.items()}
    size_kb = bundle.stat().st_size / 1024
    md = (
        f"digits_big int8 bundle ({size_kb:.0f} KiB), 1 thread. The first row is measured on the real "
        "agent; the rows marked *component figure* are not: they drive `edge_agent.remote.ota.OtaUpdater` in the "
        "benchmark's own process against an in-process stand-in host (an interpreter loop over the store's "
        "active model, `bench/model_update.py::_Host`), with no MQTT, no command parsing and no agent "
        "around it. They time the update machinery itself (download, checks, child smoke test, swap, "
        "reload); the command's path through the broker and the agent adds to them.\n\n"
        "| figure | measured on | value |\n|---|---|---|\n"
        f"| inference gap during a model swap (largest interval between results around the swap ÷ median "
        f"interval) | real agent (`edge-agent run`, new bundle installed, SIGHUP) | **{gap['max_gap_ms']:.1f} ms** ÷ "
        f"{gap['median_interval_ms']:.1f} ms = {gap['max_gap_ms'] / gap['median_interval_ms']:.1f} |\n"
        f"| `store.install.install_model`, the function behind `edge-agent install-model` (copy, verify, "
        f"smoke test in a child, swap) | component figure: in the benchmark's process, one run | "
        f"{gap['install_s']:.2f} s |\n"
        f"| `update_model` → `succeeded` (HTTP download, checks, child smoke test, swap, reload; "
        f"probation 0 s), median of {UPDATES} | component figure: install/rollback against an in-process "
        f"stand-in host, not the agent over MQTT | **{upd['update_s']:.2f} s** (max {upd['update_max_s']:.2f} s) |\n"
        f"| rollback: store swap + reload into the running interpreter, median of {UPDATES} | component "
        f"figure: in-process stand-in host, not the agent over MQTT | **{upd['rollback_reload_ms']:.1f} ms** |\n"
        f"| rollback: `edge-agent rollback` process, wall time, median of 3 | the CLI against the model "
        f"store (no running agent) | {upd['rollback_cli_ms']:.0f} ms |\n\n"
        "The agent builds the new interpreter while the old one keeps inferring, then swaps one "
        "reference between two inferences; the gap is the time the inference thread is held up "
        "(GIL, 2 cores) while the new model loads, not a stop of the pipeline. "
        "`update_model` → `succeeded` adds the probation period chosen in the command "
        "(default 60 s).\n"
    )
    result = BenchResult("model_update", "Model updates: swap gap, update time, rollback", figures, md)
    result.save()
    return result


if __name__ == "__main__":
    res = main()
    print(res.markdown)
    print(json.dumps(res.figures), file=sys.stderr)
    sys.exit(0)
