"""``edge-agent inspect MODEL.tflite``: what a plain model is and how to run it.

``--write-sidecar FILE`` writes a starting sidecar TOML from the report, for
``edge-agent run --bundle MODEL --sidecar FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.model.inspect import format_report, inspect_model, report_json
from edge_agent.model.sidecar_toml import check_sidecar, check_target, sidecar_toml, write_sidecar

EXIT_OK = 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.write_sidecar is not None:
        check_target(args.write_sidecar, args.force)
    ins = inspect_model(args.model)
    print(json.dumps(report_json(ins), indent=2) if args.json else format_report(ins))
    if args.write_sidecar is not None:
        text = sidecar_toml(ins, args.write_sidecar)
        problem = check_sidecar(text, ins)
        write_sidecar(args.write_sidecar, text, args.force)
        hint = f"edit it, then: edge-agent run --bundle {args.model} --sidecar {args.write_sidecar}"
        status = f"needs editing before it runs ({problem})" if problem else "check it"
        print(f"wrote {args.write_sidecar}: {status}; {hint}", file=sys.stderr)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``inspect`` to the ``edge-agent`` command line."""
    parser = subparsers.add_parser(
        "inspect", help="show a .tflite model's tensors, ops, metadata and output format")
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .tflite file")
    parser.add_argument("--write-sidecar", type=Path, metavar="FILE",
                        help="write a starting sidecar TOML for `edge-agent run --sidecar FILE`")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --write-sidecar file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=cmd_inspect)
