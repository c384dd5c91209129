"""Per-frame results from ``edge-agent run --events every`` (JSON lines on stdout), compared.

What must match between host and emulated Pi is what the model said about each frame; times,
sequence numbers and session ids differ by nature.
"""

from __future__ import annotations

import json
from typing import Any

VOLATILE = frozenset({"boot_id", "session", "seq", "ts_ms", "ts_frame_ms", "latency_ms", "replayed"})
MAX_SHOWN = 3


def frame_results(stdout: str) -> dict[int, dict[str, Any]]:
    """frame number -> the result message (topic and payload without volatile fields)."""
    results: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        payload = message.get("payload", {})
        if isinstance(payload, dict) and "frame" in payload:
            kept = {k: v for k, v in payload.items() if k not in VOLATILE}
            results[int(payload["frame"])] = {"topic": message.get("topic"), **kept}
    return results


def compare_frames(host: dict[int, dict[str, Any]], guest: dict[int, dict[str, Any]]) -> list[str]:
    """Differences as lines (empty when every frame's result is identical)."""
    problems: list[str] = []
    if not host:
        problems.append("the host run produced no per-frame results")
    if set(host) != set(guest):
        only_host, only_guest = sorted(set(host) - set(guest)), sorted(set(guest) - set(host))
        problems.append(f"frames differ: {len(host)} on the host, {len(guest)} on the Pi"
                        f" (only host: {only_host[:5]}, only Pi: {only_guest[:5]})")
    differing = [n for n in sorted(set(host) & set(guest)) if host[n] != guest[n]]
    if differing:
        problems.append(f"{len(differing)} of {len(host)} frames give other results on the Pi")
        for n in differing[:MAX_SHOWN]:
            keys = sorted(k for k in host[n].keys() | guest[n].keys() if host[n].get(k) != guest[n].get(k))
            for key in keys[:2]:
                problems.append(f"frame {n} {key}: host {host[n].get(key)!r}, Pi {guest[n].get(key)!r}")
    return problems
