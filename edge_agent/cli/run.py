"""``edge-agent run`` and ``edge-agent check``.

``run`` builds the configuration (TOML file < ``EDGE_AGENT_*`` environment <
command-line options), creates the :class:`edge_agent.agent.agent.Agent` and runs it
until the source ends, a limit is reached, or SIGINT/SIGTERM; SIGHUP reloads
the configuration and the model without a restart. A one-line summary goes to
stderr at the end; results go to the publisher (JSON lines on stdout by default).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edge_agent.errors import EdgeError

EXIT_OK = 0
EXIT_FAIL = 1


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle file, installed model directory, or plain .tflite")
    parser.add_argument("--sidecar", type=Path, help="TOML/JSON describing a plain .tflite")
    parser.add_argument("--public-key", type=Path, help="pinned Ed25519 public key; bundles must be signed")
    parser.add_argument("--threads", type=int, help="interpreter threads")
    parser.add_argument("--delegate", help="external delegate library (e.g. libedgetpu.so.1)")
    parser.add_argument("--latency-budget-ms", type=float,
                        help="this device's budget for one inference (smoke tests, probation); default the "
                             "bundle's; 0: not judged")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--state-dir", type=Path, help="state directory (default $STATE_DIRECTORY, else "
                        "/var/lib/edge-agent for root or when writable, else $XDG_STATE_HOME/edge-agent or "
                        "~/.local/state/edge-agent)")


def register(subparsers: Any) -> None:
    """Add ``run`` and ``check`` to the ``edge-agent`` command line."""
    run = subparsers.add_parser("run", help="run inference on a camera, file, stream or audio source")
    _add_model_options(run)
    run.add_argument("--source", help="camera index or /dev/videoN, picamera2[:N], file, folder, rtsp/http URL, "
                                      "'exec:COMMAND' (MJPEG on its stdout), *.wav, '-' (PCM on stdin) or 'mic'")
    run.add_argument("--source-type", choices=["camera", "picamera2", "video", "stream", "exec", "folder", "wav",
                                               "stdin", "mic"],
                     help="override source auto-detection")
    run.add_argument("--sample-rate", type=int, help="sample rate of PCM on stdin / microphone")
    run.add_argument("--device-id", help="device id (one MQTT topic level)")
    run.add_argument("--max-frames", type=int, help="stop after N inferences")
    run.add_argument("--duration", type=float, help="stop after S seconds")
    run.add_argument("--fps", type=float, help="cap (live) or pace (files) the frame rate")
    run.add_argument("--loop", action="store_true", default=None, help="restart file sources at the end")
    run.add_argument("--events", help="result policy: every | change | interval:S (default change)")
    run.add_argument("--motion", action="store_true", default=None,
                     help="infer only while something moves (settings in [motion] of --config)")
    run.add_argument("--threshold", type=float, help="score threshold (overrides the manifest)")
    run.add_argument("--health-interval", type=float, help="seconds between health messages")
    run.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (publish over MQTT)")
    run.add_argument("--ca-file", type=Path, help="CA certificate for mqtts://")
    run.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    run.add_argument("--key-file", type=Path, help="client key (mutual TLS)")
    run.add_argument("--username", help="MQTT user name")
    run.add_argument("--password-file", type=Path, help="MQTT password file (or name in $CREDENTIALS_DIRECTORY)")
    run.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], help="MQTT protocol version")
    run.add_argument("--keepalive", type=int, help="MQTT keepalive (s)")
    run.add_argument("--will-delay", type=int, help="MQTT v5 will delay (s)")
    run.add_argument("--preview", metavar="[HOST:]PORT",
                     help="serve a live preview (annotated MJPEG, snapshot, results) over HTTP; "
                          "a bare PORT listens on 127.0.0.1")
    run.add_argument("--metrics", metavar="[HOST:]PORT",
                     help="serve Prometheus metrics at /metrics over HTTP; a bare PORT listens on 127.0.0.1")
    run.set_defaults(handler=cmd_run)

    check = subparsers.add_parser("check", help="smoke-test a model: golden vectors and latency")
    _add_model_options(check)
    check.add_argument("--runs", type=int, default=20, help="timed inferences")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=cmd_check)


def cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options as a nested config dict (None = not given)."""
    def get(name: str) -> Any:
        return getattr(args, name, None)

    return {
        "device_id": get("device_id"),
        "state_dir": get("state_dir"),
        "max_frames": get("max_frames"),
        "duration_s": get("duration"),
        "model": {
            "bundle": get("bundle"), "sidecar": get("sidecar"), "public_key": get("public_key"),
            "threads": get("threads"), "delegate": get("delegate"), "latency_budget_ms": get("latency_budget_ms"),
        },
        "source": {
            "uri": get("source"), "type": get("source_type"), "fps": get("fps"),
            "sample_rate": get("sample_rate"), "loop": get("loop"),
        },
        "events": {"policy": get("events"), "score_threshold": get("threshold")},
        "motion": {"enabled": get("motion")},
        "health": {"interval_s": get("health_interval")},
        "preview": {"listen": get("preview")},
        "metrics": {"listen": get("metrics")},
        "mqtt": {
            "broker": get("broker"), "ca_file": get("ca_file"), "cert_file": get("cert_file"),
            "key_file": get("key_file"), "username": get("username"), "password_file": get("password_file"),
            "protocol": get("mqtt_protocol"), "keepalive": get("keepalive"), "will_delay": get("will_delay"),
        },
    }


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent.agent import Agent
    from edge_agent.config import load_config

    cli = cli_settings(args)
    config = load_config(args.config, cli)
    agent = Agent(config, config_path=args.config, cli=cli)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        agent.request_stop(signal.Signals(signum).name)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        agent.request_reload()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    agent.start()
    try:
        agent.wait()
    finally:
        agent.stop()
    first = agent.first_result_s
    problems = agent.publisher.problems() if agent.publisher is not None else []
    print(
        f"edge-agent: {agent.exit_reason or 'stopped'}: {agent.stats.summary()}"
        + (f"; first result after {first:.2f} s" if first is not None else "")
        + "".join(f"; {problem}" for problem in problems),
        file=sys.stderr,
    )
    return EXIT_FAIL if agent.failed else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config
    from edge_agent.model.bundle import BundleLimits
    from edge_agent.model.loader import verify_model
    from edge_agent.model.smoke import run_smoke_test
    from edge_agent.model.startup import start_model

    config = load_config(args.config, cli_settings(args))
    cfg = config.model
    t0 = time.perf_counter()
    verified = verify_model(config.bundle_path, sidecar=cfg.sidecar, public_key=cfg.public_key,
                            limits=BundleLimits.with_model_mb(cfg.max_model_mb))
    started = start_model(verified, threads=cfg.threads, delegate=cfg.delegate,  # as `run` starts it
                          delegate_options=cfg.delegate_options or None, runtime_kind=cfg.runtime)
    model = started.model
    load_ms = (time.perf_counter() - t0) * 1000.0
    try:
        result = run_smoke_test(model.manifest, model.runtime, timing_runs=max(1, args.runs),
                                budget_ms=cfg.latency_budget_ms)
    except EdgeError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise EdgeError(f"smoke test could not run: {exc}") from exc
    finally:
        started.close()
    if args.json:
        print(json.dumps({
            "passed": result.passed, "vectors": result.vectors, "failures": result.failures,
            "latency_ms": round(result.latency_ms, 3), "max_abs_error": result.max_abs_error,
            "load_ms": round(load_ms, 1), "model": model.info(), "signature_verified": model.signature_verified,
        }))
    else:
        m = model.manifest
        signed = "signature verified" if model.signature_verified else "not signature-checked"
        print(f"{m.name} {m.version} ({m.task}, sha256 {model.sha256[:12]}, {signed}), loaded in {load_ms:.0f} ms")
        print(result.summary())
    return EXIT_OK if result.passed else EXIT_FAIL
