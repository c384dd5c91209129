"""How long each device unit test file takes on an emulated Pi, and dealing the files to the CPUs.

The two emulated CPUs run their shares at once, so the step lasts as long as the slower share.
Dealt round-robin, one share took 317 s and the other 173 s: a few files (Hypothesis fuzzing,
smoke-test child processes) weigh most. So the files are dealt by their measured seconds, the
longest first to the share with the least so far (LPT), as pytest-split does with its committed
``.test_durations``. The figures live in ``unit_durations.json`` beside this module, written by
``python -m tools.pi_check --store-durations`` from the JUnit XML of a run. A file not in it
(a new test file) weighs the median; stale figures only make the split less even, never wrong.
"""

from __future__ import annotations

import json
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_agent.util.fs import atomic_write
from tools.pi_check.steps import StepError

DURATIONS_FILE = Path(__file__).with_name("unit_durations.json")


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """File (relative to the project) -> seconds; {} when there is no file yet.

    Raises:
        StepError: the file exists but is not a JSON object of file -> non-negative seconds.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StepError(f"{path}: not readable JSON ({exc}); delete it or run with --store-durations") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for k, v in data.items()):
        raise StepError(f"{path}: must map test files to seconds; delete it or run with --store-durations")
    return {k: float(v) for k, v in data.items()}


def junit_durations(xml: str | bytes) -> dict[str, float]:
    """Seconds per test file from pytest's JUnit XML (``classname`` is the module, maybe a class)."""
    totals: dict[str, float] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        while parts and parts[-1][:1].isupper():  # tests.unit.x.test_y.TestZ -> tests.unit.x.test_y
            parts.pop()
        if not parts or not parts[-1].startswith("test_"):
            continue
        name = "/".join(parts) + ".py"
        totals[name] = totals.get(name, 0.0) + float(case.get("time") or 0.0)
    return totals


def store_durations(durations: Mapping[str, float], path: Path = DURATIONS_FILE) -> None:
    """Write the figures (sorted, to 0.1 s) atomically."""
    text = json.dumps({k: round(v, 1) for k, v in sorted(durations.items())}, indent=1) + "\n"
    atomic_write(path, text.encode())


def deal(files: Sequence[str], shares: int, durations: Mapping[str, float]) -> list[list[str]]:
    """The files in ``shares`` lists of about equal measured time (longest first to the lightest).

    With no figures every file weighs the same, which deals them round-robin in name order.
    Each share keeps name order, so a run is easy to repeat by hand.
    """
    known = [durations[f] for f in files if f in durations]
    default = statistics.median(known) if known else 1.0
    weight = {f: durations.get(f, default) for f in files}
    out: list[list[str]] = [[] for _ in range(shares)]
    load = [0.0] * shares
    for f in sorted(files, key=lambda f: (-weight[f], f)):
        lightest = min(range(shares), key=lambda i: (load[i], i))
        out[lightest].append(f)
        load[lightest] += weight[f]
    return [sorted(share) for share in out]
