"""``edge-agent`` command line: one subcommand module per job.

Each module in COMMAND_MODULES exposes ``register(subparsers)`` which adds its
subcommands and sets ``handler`` (a function taking the parsed namespace and
returning an exit code). Errors of the EdgeError family become one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.errors import EdgeError

COMMAND_MODULES = (
    "edge_agent.cli.run",
    "edge_agent.cli.models",
    "edge_agent.cli.inspect",
)

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="On-device inference agent.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # a native crash (a broken delegate or model, a CPU the runtime misdetects) leaves at least
    # the Python stack on stderr instead of a bare exit code -11
    with contextlib.suppress(ValueError, OSError):  # a stderr without a file descriptor (embedded)
        faulthandler.enable(all_threads=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return dispatch("edge-agent", args)


def dispatch(prog: str, args: argparse.Namespace) -> int:
    """Run the parsed subcommand's handler; a user error becomes one line and exit code 2.

    Shared by edge-agent, edge-fleet and edge-deploy.
    """
    try:
        code: int = args.handler(args)
    except EdgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
