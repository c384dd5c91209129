"""Smoke test of one bundle, run as a child process by model installs.

``python -m edge_agent.model.smoke_child BUNDLE [--threads N]`` loads the bundle
(checksums verified again), allocates the interpreter, checks that the
preprocessing and the outputs fit the model as the agent will at load, runs the
golden vectors and the latency budget, and prints one JSON line. Exit 0 only when it passes.
Running this in a child means a model that crashes or hangs the interpreter
cannot take the installer or the agent with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import EdgeError
from edge_agent.model.bundle import read_bundle
from edge_agent.model.smoke import run_smoke_test
from edge_agent.runtimes import create_runtime
from edge_agent.tasks import create_task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.model.smoke_child")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", default="litert")
    args = parser.parse_args(argv)
    try:
        bundle = read_bundle(args.bundle, require_signature=False)
        runtime = create_runtime(args.runtime, bundle.model_bytes, threads=args.threads)
        try:
            # The agent's own load-time checks: preprocessing and outputs must fit the model.
            create_task(bundle.manifest, bundle.labels, runtime.inputs, runtime.outputs)
            result = run_smoke_test(bundle.manifest, runtime)
        finally:
            runtime.close()
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
