"""Smoke test of one bundle, run as a child process by model installs.

``python -m edge_agent.model.smoke_child MODEL [--threads N]`` loads the model (the unpacked
model directory an install is about to activate, checksums verified again) exactly as the agent
will at ``run`` (:func:`edge_agent.model.startup.start_model`: labels, report, interpreter,
preprocessing and outputs against the task), runs the golden vectors and the latency budget,
and prints one JSON line. Exit 0 only when it passes.
Running this in a child means a model that crashes or hangs the interpreter
cannot take the installer or the agent with it.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import EdgeError
from edge_agent.model.bundle import BundleLimits
from edge_agent.model.loader import verify_model
from edge_agent.model.smoke import run_smoke_test
from edge_agent.model.startup import start_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.model.smoke_child")
    parser.add_argument("model", type=Path, help="unpacked model directory (or bundle file)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", default="litert")
    parser.add_argument("--max-model-bytes", type=int, default=BundleLimits().model_bytes)
    parser.add_argument("--latency-budget-ms", type=float, default=None, help="the device's budget")
    args = parser.parse_args(argv)
    faulthandler.enable(all_threads=True)  # the installer reports where a native crash happened
    try:
        verified = verify_model(args.model, limits=BundleLimits(model_bytes=args.max_model_bytes))
        started = start_model(verified, threads=args.threads, runtime_kind=args.runtime)
        try:
            result = run_smoke_test(started.model.manifest, started.model.runtime,
                                    budget_ms=args.latency_budget_ms)
        finally:
            started.close()
    except (EdgeError, ValueError, TypeError) as exc:
        print(json.dumps({"passed": False, "error": str(exc)}))
        return 1
    print(json.dumps({
        "passed": result.passed,
        "summary": result.summary(),
        "vectors": result.vectors,
        "latency_ms": round(result.latency_ms, 4),
        "max_abs_error": result.max_abs_error,
        "failures": result.failures,
    }))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
