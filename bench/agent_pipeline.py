"""Agent pipeline benchmark: throughput vs a bare interpreter loop, peak RSS, time to first result.

Throughput ratio = frames/s of ``edge-agent run`` on a video file (decode,
preprocess, quantise, invoke, decode, publish JSON lines) ÷ frames/s of a bare
``set_tensor``/``invoke``/``get_tensor`` loop on the same model and thread count,
taken within each round of alternating rounds; the headline is the median of the
per-round ratios with its range. The bare loop runs at least as many inferences,
and at least as long, as the agent's timed span in the same round.

Peak RSS is measured on the real agent in both publishing modes: JSON lines to
stdout, and MQTT (QoS 1 through the outbox) to a local Mosquitto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import (
    CACHE,
    BenchResult,
    RssWatcher,
    Spread,
    alternate,
    evict_shared_libraries,
    local_broker,
    spread,
    tool,
)
from bench.models import ensure_models

FRAMES = 1200  # per agent round: ~4 s of inference on digits_big at 1 thread
ROUNDS = 5
RSS_FRAMES = 600  # memory runs: 600 frames paced at 50 fps, 12 s, in each publishing mode
RSS_FPS = 50


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot read {path}")
    return image


def render_video(test_dir: Path, path: Path, frames: int) -> Path:
    """Write held-out digit images (cycled) into an MJPEG AVI."""
    files = sorted(test_dir.rglob("*.png"))
    height, width = _imread(files[0]).shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (width, height))
    for i in range(frames):
        writer.write(_imread(files[i % len(files)]))
    writer.release()
    return path


def raw_loop_fps(bundle: Path, threads: int, iterations: int, min_seconds: float = 0.0) -> float:
    """Frames/s of the bare interpreter loop on the bundle's model (inputs pre-quantised).

    Runs ``iterations`` inferences, and more (in blocks of ``iterations``) until at
    least ``min_seconds`` have passed, so the bare side is not a shorter, noisier sample
    than the agent run it is compared with.
    """
    from ai_edge_litert.interpreter import Interpreter

    from edge_agent.model.bundle import read_bundle

    model = read_bundle(bundle).model_bytes
    interp = Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    rng = np.random.default_rng(0)
    info = np.iinfo(inp["dtype"])
    tensors = [rng.integers(info.min, info.max, size=inp["shape"], dtype=inp["dtype"]) for _ in range(8)]
    for t in tensors:
        interp.set_tensor(inp["index"], t)
        interp.invoke()
    start = time.perf_counter()
    done = 0
    while done < iterations or time.perf_counter() - start < min_seconds:
        for i in range(iterations):
            interp.set_tensor(inp["index"], tensors[i % len(tensors)])
            interp.invoke()
            interp.get_tensor(out["index"])
        done += iterations
    return done / (time.perf_counter() - start)


_IMPORT_PROBE = """
import importlib, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return 0.0
out = [('interpreter start', rss())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    out.append((name, rss()))
print(json.dumps(out))
"""
IMPORT_STEPS = ("numpy", "cv2", "ai_edge_litert.interpreter", "edge_agent.model.manifest", "edge_agent.config",
                "edge_agent.agent.agent", "edge_agent.cli.run")


def import_costs() -> list[tuple[str, float]]:
    """Resident memory added by each import on the agent's path, in import order (MB)."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *IMPORT_STEPS], capture_output=True, text=True,
                          check=True)
    steps = [(str(name), float(mb)) for name, mb in json.loads(proc.stdout)]
    costs, previous = [], 0.0
    for name, value in steps:
        costs.append((name, value - previous))
        previous = value
    return costs


def run_agent(bundle: Path, video: Path, threads: int, frames: int, extra: tuple[str, ...] = (),
              state_dir: Path | None = None, prefix: tuple[str, ...] = ()) -> dict[str, float]:
    """Run the agent on a video, results as JSON lines on stdout (``extra``: more options).

    Returns fps (first→last result, by the results' own timestamps) and that span,
    first-result latency (arrival on the pipe), peak RSS, and the mean time of each
    pipeline stage from the agent's last health message (``stage_<name>_ms``) and, from its
    summary line, the time from the pipeline's start to its first result (``pipeline_first_result_s``).
    ``prefix`` goes before the command (e.g. ``taskset -c 0``, which execs it: same PID).
    """
    cmd = [*prefix, tool("edge-agent"), "run", "--bundle", str(bundle), "--source", str(video), "--events", "every",
           "--threads", str(threads), "--max-frames", str(frames), "--health-interval", "3600",
           "--state-dir", str(state_dir or CACHE / "agent-state"), *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = RssWatcher(proc.pid)
    first_result = None
    stamps: list[float] = []
    stages: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("topic", "").endswith("/health"):
            stages = _stage_means(msg["payload"])
            continue
        if "/evt/" not in msg.get("topic", ""):
            continue
        if first_result is None:
            first_result = time.monotonic() - start
        # The result's own creation time (envelope ts_ms), not when the line reached this pipe:
        # the agent's writer thread flushes in batches when it falls behind, so arrival times
        # would bunch up and misstate the inference rate.
        stamps.append(msg["payload"]["ts_ms"] / 1000.0)
    proc.wait()
    watcher.stop()
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or len(stamps) < 2:
        raise RuntimeError(f"agent failed ({proc.returncode}, {len(stamps)} results): {err[-2000:]}")
    fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    pipeline_first = re.search(r"first result after ([0-9.]+) s", err)  # the agent's own summary line
    if pipeline_first:
        stages["pipeline_first_result_s"] = float(pipeline_first[1])
    return {"fps": fps, "span_s": stamps[-1] - stamps[0], "first_result_s": first_result or 0.0,
            "peak_rss_mb": watcher.peak_mb,
            "results": float(len(stamps)), "rss_anon_mb": watcher.peak_sample.get("RssAnon", 0.0),
            "rss_file_mb": watcher.peak_sample.get("RssFile", 0.0), "rss_anon_max_mb": watcher.peak_anon_mb,
            **stages}


def _stage_means(health: dict[str, object]) -> dict[str, float]:
    """``stage_<name>_ms``: the mean of each stage the health message reports (ms)."""
    latency = health.get("latency_ms")
    if not isinstance(latency, dict):
        return {}
    return {f"stage_{name}_ms": float(fig["mean"]) for name, fig in latency.items()
            if isinstance(fig, dict) and fig.get("mean") is not None}


def run_agent_mqtt(bundle: Path, video: Path, frames: int, broker_url: str, state_dir: Path,
                   prefix: tuple[str, ...] = ()) -> dict[str, float]:
    """Run the agent publishing every result over MQTT (broker up); returns peak RSS (MB)."""
    cmd = [*prefix, tool("edge-agent"), "run", "--bundle", str(bundle), "--source", str(video), "--events", "every",
           "--threads", "1", "--max-frames", str(frames), "--fps", str(RSS_FPS), "--health-interval", "5",
           "--device-id", "bench-rss", "--state-dir", str(state_dir), "--broker", broker_url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = RssWatcher(proc.pid)
    _, err = proc.communicate(timeout=frames / RSS_FPS + 60)
    watcher.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"agent over MQTT failed ({proc.returncode}): {err[-2000:]}")
    return {"peak_rss_mb": watcher.peak_mb, "rss_anon_mb": watcher.peak_sample.get("RssAnon", 0.0),
            "rss_file_mb": watcher.peak_sample.get("RssFile", 0.0), "rss_anon_max_mb": watcher.peak_anon_mb}


def memory(paths: dict[str, Path], video32: Path) -> dict[str, float]:
    """Peak RSS of the real agent, cold start, publishing to stdout and over MQTT (same frames and pace)."""
    bundle = paths["digits_bundle"]
    pace = ("--fps", str(RSS_FPS))
    as_found = run_agent(bundle, video32, 1, RSS_FRAMES, pace)  # page cache as it happens to be
    evict_shared_libraries()
    stdout = run_agent(bundle, video32, 1, RSS_FRAMES, pace)  # shared libraries read from disk: a cold start
    with local_broker("bench-rss-") as (broker, work):
        evict_shared_libraries()
        mqtt = run_agent_mqtt(bundle, video32, RSS_FRAMES, broker.url, work / "state")
    return {"digits_peak_rss_mb": round(stdout["peak_rss_mb"], 1),
            "digits_rss_anon_mb": round(stdout["rss_anon_mb"], 1),
            "digits_rss_file_mb": round(stdout["rss_file_mb"], 1),
            "digits_peak_rss_as_found_mb": round(as_found["peak_rss_mb"], 1),
            "digits_peak_rss_mqtt_mb": round(mqtt["peak_rss_mb"], 1),
            "digits_rss_anon_mqtt_mb": round(mqtt["rss_anon_mb"], 1),
            "digits_rss_file_mqtt_mb": round(mqtt["rss_file_mb"], 1)}


def first_result(paths: dict[str, Path], video32: Path) -> float:
    """Process start to first result (stdout mode, cold start), seconds."""
    evict_shared_libraries()
    return run_agent(paths["digits_bundle"], video32, 1, 300)["first_result_s"]


def throughput(bundle: Path, video: Path, threads: int) -> dict[str, Spread]:
    """Agent and bare loop in alternating rounds; per-round ratios and each side's spread."""
    span = [FRAMES / 250.0]  # until the first agent round has measured its own span

    def agent_side() -> float:
        result = run_agent(bundle, video, threads, FRAMES)
        span[0] = result["span_s"]
        return result["fps"]

    def raw_side() -> float:
        return raw_loop_fps(bundle, threads, FRAMES, min_seconds=span[0])

    pairs = alternate(ROUNDS, agent_side, raw_side)
    return {"agent": spread([a for a, _ in pairs]), "raw": spread([r for _, r in pairs]),
            "ratio": spread([a / r for a, r in pairs])}


def _above_one(figures: dict[str, object]) -> str:
    """What a median ratio above 1 means, said only when one was measured."""
    above = [t for t in (1, 2) if float(str(figures[f"throughput_ratio_t{t}"])) > 1.0]
    if not above:
        return ""
    return (
        "A median ratio above 1 (here with " + " and ".join(f"{t} thread{'s' if t > 1 else ''}" for t in above)
        + ") does not mean the agent's interpreter is faster than the bare one (same model, same "
        "`num_threads`, same LiteRT): the bare loop runs in the benchmark's own process on random int8 inputs, "
        "and on this loaded host it ran slower than the agent's `invoke`, for a reason this benchmark does "
        "not establish. Read such a run as \"the agent is not slower than the bare loop here\", not as a "
        "measure of the agent's overhead; compare the two sides' own ranges."
    )


def main() -> BenchResult:
    paths = ensure_models()
    video_big = render_video(paths["test_big"], CACHE / "digits_big.avi", FRAMES)
    video32 = render_video(paths["digits_test"], CACHE / "digits32.avi", 300)
    rows = []
    figures: dict[str, object] = {}
    load_before = os.getloadavg()[0]
    for threads in (1, 2):
        t = throughput(paths["digits_big_bundle"], video_big, threads)
        ratio, raw, agent = t["ratio"], t["raw"], t["agent"]
        raw_spread_pct = 100.0 * (raw.high - raw.low) / raw.median
        rows.append(f"| digits_big int8 | {threads} | {1000 / raw.median:.2f} | {raw.text('.0f')} "
                    f"| {raw_spread_pct:.0f} % | {agent.text('.0f')} | **{ratio.text()}** |")
        figures.update(ratio.figures(f"throughput_ratio_t{threads}"))
        figures.update(raw.figures(f"raw_fps_t{threads}", 1))
        figures.update(agent.figures(f"agent_fps_t{threads}", 1))
        figures[f"raw_spread_pct_t{threads}"] = round(raw_spread_pct, 1)
    load_after = os.getloadavg()[0]
    figures["load_1min_before"], figures["load_1min_after"] = round(load_before, 2), round(load_after, 2)
    figures.update(memory(paths, video32))
    figures["digits_first_result_s"] = round(first_result(paths, video32), 3)
    evict_shared_libraries()
    costs = import_costs()
    cost_rows = "\n".join(f"| `{name}` | {mb:.1f} |" for name, mb in costs)
    libraries_mb = sum(mb for name, mb in costs if name in ("numpy", "cv2", "ai_edge_litert.interpreter"))
    f = figures
    md = (
        "Agent (`edge-agent run --events every`, video file of "
        f"{FRAMES} frames, JSON lines to a pipe) against a bare `set_tensor`/`invoke`/`get_tensor` loop on "
        f"the same int8 model and thread count, in {ROUNDS} rounds that alternate which side goes first. "
        "The agent's rate is taken from its first to its last result, by the creation time each result "
        "carries (envelope `ts_ms`), not by when it reached the pipe; the bare loop runs at least as many "
        "inferences, and at least as long, as the agent's timed span in the same round. **The headline is the "
        "median of the per-round ratios** (agent ÷ bare of the same round), with their range; each side's "
        "median and range are shown too, and the bare loop's own spread across rounds (max − min ÷ median) "
        "says how much of the ratio's range is this shared host rather than the agent. `digits_big` is a CNN "
        "of ~880 M multiply-adds on 192x192 RGB digits (see `bench/models.py`).\n\n"
        "| model | threads | bare ms/inference (median) | bare fps, median (range) | bare loop's spread "
        "| agent fps, median (range) | **agent ÷ bare, median of per-round ratios (range)** |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"The host's 1-minute load average was {load_before:.2f} before these rounds and {load_after:.2f} "
        "after (2 CPUs shared with other jobs). Target: agent ÷ bare ≥ 0.9 for a model of at least 2 ms per "
        "inference. With one interpreter thread, decoding and preprocessing run on the other core while the "
        "interpreter works, so the agent can keep up with the bare loop. With 2 interpreter "
        "threads both cores are taken by `invoke`, and capture competes with it. " + _above_one(figures) + "\n\n"
        "Memory, measured on the real agent: digits bundle (32x32 grey), "
        f"{RSS_FRAMES} frames paced at {RSS_FPS} fps ({RSS_FRAMES // RSS_FPS} s), every result published, "
        "cold start, peak RSS (VmHWM) sampled every 20 ms:\n\n"
        "| publishing | peak RSS | private (anon) at the peak | mapped files at the peak |\n"
        "|---|---|---|---|\n"
        f"| JSON lines to stdout | **{f['digits_peak_rss_mb']:.1f} MB** | {f['digits_rss_anon_mb']:.1f} MB "
        f"| {f['digits_rss_file_mb']:.1f} MB |\n"
        f"| MQTT, QoS 1 through the SQLite outbox, to a local Mosquitto (broker up) "
        f"| **{f['digits_peak_rss_mqtt_mb']:.1f} MB** | {f['digits_rss_anon_mqtt_mb']:.1f} MB "
        f"| {f['digits_rss_file_mqtt_mb']:.1f} MB |\n\n"
        "The MQTT mode adds paho-mqtt, SQLite, the outbox and the command handler. For RSS over MQTT while "
        "the broker is away (a 60 s outage), see the MQTT section. Target: ≤ 80 MB. Process start to first "
        f"result (stdout, cold): **{f['digits_first_result_s']:.2f} s** (target ≤ 1.5 s).\n\n"
        "Cold start means the environment's shared libraries were dropped from the page cache first "
        "(`posix_fadvise(DONTNEED)`, see `bench/common.py`), as on a device starting from its SD card. "
        "File-backed pages count in RSS, and how many a process maps depends on the page cache: on this "
        "host's kernel (large page-cache folios on ext4), libraries just written by `pip install` are mapped "
        "in pieces of up to 2 MB, which can add tens of MB of shared, clean library pages that are not agent "
        f"memory. With the page cache as found, the stdout run measured **{f['digits_peak_rss_as_found_mb']:.1f} "
        "MB**.\n\n"
        "Where the resident memory goes (RSS added by each import, cold, cumulative order):\n\n"
        "| step | MB |\n|---|---|\n" + cost_rows + "\n\n"
        "The manifest and configuration are validated by `edge_agent.schema` (strict typed records, "
        "unknown keys are errors) instead of pydantic, which cost about 19 MB here (its core library, "
        "the plugin scan through `importlib.metadata` and schema building; measured when the switch was "
        f"made, not in this run). NumPy, OpenCV and LiteRT account for {libraries_mb:.0f} MB before the "
        "agent does any work.\n"
    )
    result = BenchResult("agent_pipeline", "Agent pipeline throughput, memory and start-up", figures, md,
                         {"throughput_ratio": ">= 0.9 (median of per-round ratios)", "peak_rss_mb": "<= 80",
                          "first_result_s": "<= 1.5"})
    result.save()
    return result


if __name__ == "__main__":
    res = main()
    print(res.markdown)
    sys.exit(0)
