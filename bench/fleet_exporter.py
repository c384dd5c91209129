"""Fleet exporter capacity: the largest simulated fleet one exporter (and a share group of two)
keeps up with at 1 health message per device per second, with no message lost.

Per step, on a fresh local Mosquitto: the real ``edge-fleet exporter`` (one, or two members of a
share group) as child processes, then the real ``edge-fleet simulate --devices N --rate 1``
for ``EDGE_BENCH_FLEET_S`` seconds (default 20). A step is kept up with when every health
message the broker acknowledged to the simulator was counted by the exporter(s) within
``DRAIN_S`` seconds after the simulator finished and no seq is missing; the fleet size
doubles (500, 1000, 2000, …) until a step is not kept up with. The simulator, the broker and
the exporters share this machine's cores, so the figure is a floor for an exporter with a
machine of its own; exporter CPU is reported as the share of one core it used.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchResult, local_broker

STEPS = (500, 1000, 2000, 4000, 8000, 16000)
DURATION_S = float(os.environ.get("EDGE_BENCH_FLEET_S", "20"))
DRAIN_S = 10.0  # after the simulator ends, how long the exporters may take to catch up
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _fleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "deploy.fleet", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _scrape(port: int) -> dict[str, float]:
    """Sums over devices of the metrics the bench reads."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {"health": 0.0, "missing": 0.0, "duplicates": 0.0, "gaps": 0.0, "peers": 0.0}
    for line in text.splitlines():
        if line.startswith('edge_fleet_messages_total{kind="health"}'):
            out["health"] = float(line.split()[-1])
        elif line.startswith("edge_device_seq_missing{"):
            out["missing"] += float(line.split()[-1])
        elif line.startswith("edge_device_duplicates_total{"):
            out["duplicates"] += float(line.split()[-1])
        elif line.startswith("edge_device_seq_gaps_total{"):
            out["gaps"] += float(line.split()[-1])
        elif line.startswith("edge_exporter_peers "):
            out["peers"] = float(line.split()[-1])
    return out


def _start_exporter(url: str, group: str | None, member: int) -> tuple[subprocess.Popen[str], int]:
    extra = ["--share-group", group, "--member", f"m{member}", "--digest-s", "1"] if group else []
    proc = subprocess.Popen(_fleet("exporter", "--broker", url, "--listen", "127.0.0.1:0", *extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stderr.readline() if proc.stderr else ""), daemon=True)
    reader.start()
    reader.join(60)
    found = re.search(r"serving http://[^:]+:(\d+)/metrics", line[0] if line else "")
    if not found:
        proc.kill()
        raise RuntimeError(f"exporter did not start: {line}")
    return proc, int(found.group(1))


def step(n: int, members: int) -> dict[str, Any]:
    """One fleet size through one exporter (members=1) or a share group of ``members``."""
    with local_broker("bench-fleet-") as (broker, _):
        group = "bench" if members > 1 else None
        exporters = [_start_exporter(broker.url, group, m) for m in range(members)]
        try:
            cpu0 = [_cpu_s(p.pid) for p, _ in exporters]
            t0 = time.monotonic()
            sim = subprocess.run(_fleet("simulate", "--broker", broker.url, "--devices", str(n), "--rate", "1",
                                        "--duration", str(DURATION_S), "--prefix", "b-", "--leave-online"),
                                 capture_output=True, text=True, env=_env(), cwd=ROOT, check=False)
            if sim.returncode != 0:
                raise RuntimeError(f"simulate failed: {sim.stderr[-2000:]}")
            report = json.loads(sim.stdout.strip().splitlines()[-1])
            sim_end = time.monotonic()
            published = report["published"]["health"]
            received = 0.0
            while True:
                figures = [_scrape(port) for _, port in exporters]
                received = sum(f["health"] for f in figures)
                if received >= published or time.monotonic() - sim_end > DRAIN_S:
                    break
                time.sleep(0.25)
            lag_s = time.monotonic() - sim_end
            wall = time.monotonic() - t0
            cpu = [(_cpu_s(p.pid) - c) / wall for (p, _), c in zip(exporters, cpu0, strict=True)]
            rss = [_rss_mb(p.pid) for p, _ in exporters]
            time.sleep(2.5)  # two digests: the members' views converge before missing seqs are read
            figures = [_scrape(port) for _, port in exporters]
        finally:
            for proc, _ in exporters:
                proc.terminate()
                proc.wait(30)
    missing = max(f["missing"] for f in figures)
    lost = published - received
    return {
        "devices": n, "members": members, "published": published, "received": int(received), "lost": int(lost),
        "missing_seqs": int(missing), "drain_s": round(lag_s, 2), "late_ticks": report["late_ticks"],
        "sim_s": round(report["seconds"], 1), "exporter_cpu": [round(c, 2) for c in cpu],
        "exporter_rss_mb": [round(r, 1) for r in rss], "per_member": [int(f["health"]) for f in figures],
        "kept_up": lost == 0 and missing == 0 and lag_s <= DRAIN_S and report["late_ticks"] == 0,
        "generator_late": report["late_ticks"] > 0,
    }


def ladder(members: int) -> list[dict[str, Any]]:
    rows = []
    for n in STEPS:
        row = step(n, members)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        if not row["kept_up"]:
            break
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| devices | health published | received | lost | missing seqs | drain after end (s) | "
             "generator late rounds | exporter CPU (cores) | exporter RSS (MB) | kept up |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['published']} | {r['received']} | {r['lost']} | {r['missing_seqs']} | "
                     f"{r['drain_s']} | {r['late_ticks']} | {' + '.join(str(c) for c in r['exporter_cpu'])} | "
                     f"{' + '.join(str(m) for m in r['exporter_rss_mb'])} | {'yes' if r['kept_up'] else 'no'} |")
    return "\n".join(lines)


def main() -> BenchResult:
    one = ladder(1)
    two = ladder(2)
    best_one = max((r["devices"] for r in one if r["kept_up"]), default=0)
    best_two = max((r["devices"] for r in two if r["kept_up"]), default=0)
    limit_one, limit_two = one[-1], two[-1]

    def why(row: dict[str, Any]) -> str:
        if row["kept_up"]:
            return f"every step up to {row['devices']} kept up (the ladder ends there)"
        if row["generator_late"]:
            return (f"at {row['devices']} devices the simulator itself fell behind ({row['late_ticks']} late rounds) "
                    "on this shared machine")
        return (f"at {row['devices']} devices {row['lost']} messages were not counted within {DRAIN_S:g} s "
                f"and {row['missing_seqs']} seqs were missing")

    markdown = f"""
Component figure: the real `edge-fleet simulate` (health at 1 Hz per device, the real envelope,
QoS 1 through 2 connections) and the real `edge-fleet exporter` as child processes, with a local
Mosquitto, all on this 2-core machine. Each step runs {DURATION_S:g} s; a step is kept up with when
every health message the broker acknowledged was counted by the exporter(s) within {DRAIN_S:g} s of the
end and no seq was missing. The simulator, the broker and the exporters compete for the same two
cores, so these are floors for an exporter on a machine of its own.

- **One exporter**: largest fleet kept up with **{best_one}** devices at 1 health/s; {why(limit_one)}.
- **Share group of two**: **{best_two}** devices; {why(limit_two)}.

One exporter:

{_table(one)}

Share group of two (`--share-group`, digests every 1 s; CPU and RSS per member):

{_table(two)}
"""
    result = BenchResult("fleet_exporter", "Fleet exporter capacity (edge-fleet exporter + simulate)",
                         {"max_devices_one": best_one, "max_devices_group_of_two": best_two,
                          "duration_s": DURATION_S, "one": one, "group_of_two": two}, markdown)
    result.save()
    return result


if __name__ == "__main__":
    from bench.common import write_docs

    print(main().markdown)
    print(f"wrote {write_docs()}", file=sys.stderr)
