"""``edge-agent install-model``, ``rollback`` and ``models``: the model store from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeError, InstallError
from edge_agent.model.bundle import MAX_MODEL_BYTES, BundleLimits
from edge_agent.store.install import install_model, rollback
from edge_agent.store.layout import SYSTEM_TRUSTED_KEY, active_model, store_status


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-model``, ``rollback`` and ``models`` to ``edge-agent``."""
    p = subparsers.add_parser(
        "install-model", help="verify, smoke-test and activate a model bundle",
        description="Install a bundle into the model store; the previous model is kept for rollback.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    _state_dir_arg(p)
    p.add_argument("--public-key", type=Path, default=None,
                   help="Ed25519 public key (PEM); default the pinned state-dir/trusted.pub "
                        f"or {SYSTEM_TRUSTED_KEY}")
    p.add_argument("--allow-new-input", action="store_true",
                   help="accept a model whose input differs from the active model's")
    p.add_argument("--no-downgrade", action="store_true",
                   help="refuse a lower version of the active model")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads for the smoke test")
    p.add_argument("--max-model-mb", type=int, default=None,
                   help=f"largest model.tflite accepted (default {MAX_MODEL_BYTES >> 20} MiB, as the agent's "
                        "[model] max_model_mb)")
    p.add_argument("--latency-budget-ms", type=float, default=None,
                   help="this device's budget for one inference in the smoke test (default the bundle's, "
                        "set from the converting host; 0: not judged), as the agent's [model] latency_budget_ms")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=_cmd_install)

    p = subparsers.add_parser("rollback", help="activate the previous model again")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=_cmd_rollback)

    p = subparsers.add_parser("models", help="show the active and previous model")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON on stdout")
    p.set_defaults(handler=_cmd_models)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="model store (default: the agent's, see edge-agent run --help)")


def _line(model: dict[str, Any] | None) -> str:
    if not model:
        return "none"
    return f"{model['name']} {model['version']} ({model['short_sha']})"


def _cmd_install(args: argparse.Namespace) -> int:
    try:
        result = install_model(
            args.bundle, args.state_dir, args.public_key, allow_new_input=args.allow_new_input,
            allow_downgrade=not args.no_downgrade, threads=args.threads,
            limits=BundleLimits.with_model_mb(args.max_model_mb), latency_budget_ms=args.latency_budget_ms,
        )
    except EdgeError as exc:
        if not args.json:
            raise
        active = active_model(args.state_dir)
        step = exc.step if isinstance(exc, InstallError) else ""
        print(json.dumps({"ok": False, "error": str(exc), "step": step,
                          "active": active.describe() if active else None}))
        return 2
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        data = result.to_json()
        print(f"{result.status}: active {_line(data['active'])}, previous {_line(data['previous'])}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    try:
        result = rollback(args.state_dir)
    except EdgeError as exc:
        if not args.json:
            raise
        active = active_model(args.state_dir)
        print(json.dumps({"ok": False, "error": str(exc), "step": "rollback",
                          "active": active.describe() if active else None}))
        return 2
    data = result.to_json()
    if args.json:
        print(json.dumps(data))
    else:
        print(f"rolled back: active {_line(data['active'])}, previous {_line(data['previous'])}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    status = store_status(args.state_dir)
    if args.json:
        print(json.dumps(status))
    else:
        print(f"active:   {_line(status['active'])}")
        print(f"previous: {_line(status['previous'])}")
        if status["probation"]:
            left = max(0.0, status["probation"]["until"] - time.time())
            print(f"probation: {left:.0f} s left, {status['probation']['crashes']} crash(es)")
    return 0
