"""Agent pipeline benchmark: throughput vs a bare interpreter loop, peak RSS, time to first result.

Throughput ratio = frames/s of ``edge-agent run`` on a video file (decode,
preprocess, quantise, invoke, decode, publish JSON lines) ÷ frames/s of a bare
``set_tensor``/``invoke``/``get_tensor`` loop on the same model and thread count,
both measured in this run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import CACHE, BenchResult, RssWatcher, evict_shared_libraries, tool
from bench.models import ensure_models

FRAMES = 600
ROUNDS = 5


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


def raw_loop_fps(bundle: Path, threads: int, iterations: int) -> float:
    """Frames/s of the bare interpreter loop on the bundle's model (inputs pre-quantised)."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_agent.bundle import read_bundle

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
    for i in range(iterations):
        interp.set_tensor(inp["index"], tensors[i % len(tensors)])
        interp.invoke()
        interp.get_tensor(out["index"])
    return iterations / (time.perf_counter() - start)


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
IMPORT_STEPS = ("numpy", "cv2", "ai_edge_litert.interpreter", "edge_agent.manifest", "edge_agent.config",
                "edge_agent.pipeline", "edge_agent.app")


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


def run_agent(bundle: Path, video: Path, threads: int, frames: int) -> dict[str, float]:
    """Run the agent on a video; returns fps (first→last result), first-result latency, peak RSS."""
    cmd = [tool("edge-agent"), "run", "--bundle", str(bundle), "--source", str(video), "--events", "every",
           "--threads", str(threads), "--max-frames", str(frames), "--health-interval", "3600",
           "--state-dir", str(CACHE / "agent-state")]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = RssWatcher(proc.pid)
    first_result = None
    stamps: list[float] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "/evt/" not in msg.get("topic", ""):
            continue
        now = time.monotonic()
        if first_result is None:
            first_result = now - start
        stamps.append(now)
    proc.wait()
    watcher.stop()
    if proc.returncode != 0 or len(stamps) < 2:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"agent failed ({proc.returncode}, {len(stamps)} results): {err[-2000:]}")
    fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"fps": fps, "first_result_s": first_result or 0.0, "peak_rss_mb": watcher.peak_mb,
            "results": float(len(stamps)), "rss_anon_mb": watcher.peak_sample.get("RssAnon", 0.0),
            "rss_file_mb": watcher.peak_sample.get("RssFile", 0.0)}


def main() -> BenchResult:
    paths = ensure_models()
    video_big = render_video(paths["test_big"], CACHE / "digits_big.avi", FRAMES)
    video32 = render_video(paths["digits_test"], CACHE / "digits32.avi", 300)
    rows = []
    figures: dict[str, object] = {}
    for threads in (1, 2):
        # Alternate the two measurements and keep each one's best round, so a burst of
        # load from elsewhere on the machine does not favour either side.
        raws, agents = [], []
        for _ in range(ROUNDS):
            raws.append(raw_loop_fps(paths["digits_big_bundle"], threads, FRAMES))
            agents.append(run_agent(paths["digits_big_bundle"], video_big, threads, FRAMES)["fps"])
        raw, agent_fps = max(raws), max(agents)
        ratio = agent_fps / raw
        paired = sorted(a / r for a, r in zip(agents, raws, strict=True))
        median = paired[len(paired) // 2]
        rows.append(f"| digits_big int8 | {threads} | {1000 / raw:.2f} | {raw:.0f} | {agent_fps:.0f} | "
                    f"**{ratio:.2f}** | {median:.2f} ({paired[0]:.2f}–{paired[-1]:.2f}) |")
        figures[f"throughput_ratio_t{threads}"] = round(ratio, 3)
        figures[f"throughput_ratio_median_t{threads}"] = round(median, 3)
        figures[f"raw_fps_t{threads}"] = round(raw, 1)
        figures[f"agent_fps_t{threads}"] = round(agent_fps, 1)
    as_found = run_agent(paths["digits_bundle"], video32, 1, 300)  # page cache as it happens to be
    evict_shared_libraries()
    small = run_agent(paths["digits_bundle"], video32, 1, 300)  # shared libraries read from disk: a cold start
    figures["digits_peak_rss_mb"] = round(small["peak_rss_mb"], 1)
    figures["digits_rss_anon_mb"] = round(small["rss_anon_mb"], 1)
    figures["digits_rss_file_mb"] = round(small["rss_file_mb"], 1)
    figures["digits_peak_rss_as_found_mb"] = round(as_found["peak_rss_mb"], 1)
    figures["digits_first_result_s"] = round(small["first_result_s"], 3)
    evict_shared_libraries()
    costs = import_costs()
    cost_rows = "\n".join(f"| `{name}` | {mb:.1f} |" for name, mb in costs)
    md = (
        "Agent (`edge-agent run --events every`, video file, JSON lines to a pipe) against a bare "
        "`set_tensor`/`invoke`/`get_tensor` loop on the same int8 model and thread count; best of "
        f"{ROUNDS} alternating rounds each. `digits_big` is a CNN of ~880 M multiply-adds on 192x192 RGB "
        "digits (see `bench/models.py`).\n\n"
        "| model | threads | raw ms/inference | raw fps | agent fps | agent ÷ raw (best ÷ best) "
        "| median (range) of the per-round ratios |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Digits bundle (32x32 grey), 300 frames, cold start: peak RSS **{small['peak_rss_mb']:.1f} MB** "
        f"(target ≤ 80 MB; at the peak {small['rss_anon_mb']:.1f} MB private, {small['rss_file_mb']:.1f} MB "
        f"mapped shared libraries), process start to first result **{small['first_result_s']:.2f} s** "
        "(target ≤ 1.5 s).\n\n"
        "Cold start means the environment's shared libraries were dropped from the page cache first "
        "(`posix_fadvise(DONTNEED)`, see `bench/common.py`), as on a device starting from its SD card. "
        "File-backed pages count in RSS, and how many a process maps depends on the page cache: on this "
        "host's kernel (large page-cache folios on ext4), libraries just written by `pip install` are mapped "
        "in pieces of up to 2 MB, which can add tens of MB of shared, clean library pages that are not agent "
        f"memory. With the page cache as found, the same run measured **{as_found['peak_rss_mb']:.1f} MB**.\n\n"
        "Target: agent ÷ raw ≥ 0.9 for a model of at least 2 ms per inference. With one interpreter thread "
        "on this 2-core host, decoding and preprocessing run on the other core while the interpreter works, "
        "so the agent keeps up with the bare loop; a ratio slightly above 1 is run-to-run noise of this "
        "shared host (compare the raw ms/inference between runs), not a faster interpreter. With 2 "
        "interpreter threads both cores are taken by `invoke`, and capture competes with it.\n\n"
        "Where the resident memory goes (RSS added by each import, cold, cumulative order):\n\n"
        "| step | MB |\n|---|---|\n" + cost_rows + "\n\n"
        "The manifest and configuration are validated by `edge_agent.schema` (strict typed records, "
        "unknown keys are errors) instead of pydantic, which cost about 19 MB here (its core library, "
        "the plugin scan through `importlib.metadata` and schema building). NumPy, OpenCV and LiteRT "
        "account for about 40 MB before the agent does any work.\n"
    )
    result = BenchResult("agent_pipeline", "Agent pipeline throughput, memory and start-up", figures, md,
                         {"throughput_ratio": ">= 0.9", "peak_rss_mb": "<= 80", "first_result_s": "<= 1.5"})
    result.save()
    return result


if __name__ == "__main__":
    res = main()
    print(res.markdown)
    sys.exit(0)
