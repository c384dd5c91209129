"""Run every benchmark and write docs/benchmarks.md (``make bench``)."""

from __future__ import annotations

import importlib
import sys
import traceback

from bench.common import write_docs

BENCHES = ("bench.agent_pipeline", "bench.pi_budget", "bench.mqtt_outbox", "bench.model_update", "bench.detect",
           "bench.soak", "bench.motion", "bench.fleet_exporter")


def main(argv: list[str] | None = None) -> int:
    names = argv if argv else list(BENCHES)
    failed = 0
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"skip {name}: not present", file=sys.stderr)
                continue
            raise
        print(f"== {name}", file=sys.stderr)
        try:
            result = module.main()
            print(result.markdown)
        except Exception:
            traceback.print_exc()
            failed += 1
    print(f"wrote {write_docs()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
