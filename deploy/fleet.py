"""``edge-fleet``: the operator's view of the fleet over MQTT.

    edge-fleet status --broker URL [DEVICE ...] [--json] [--wait S]
    edge-fleet exporter --broker URL --listen HOST:PORT [--share-group NAME] [--settle-s S]
    edge-fleet simulate --broker URL --devices N --rate HZ --duration S [--prefix sim-]
    edge-fleet watch  --broker URL [--interval S] [--duration S] [--json]
    edge-fleet send DEVICE [DEVICE…] COMMAND [--args JSON] [--timeout S] [--sign-key KEY] [--json]
    edge-fleet send --all COMMAND [--wait S] …   (every device whose retained status says online)
    edge-fleet send DEVICE snapshot --output FILE

Every device seen under ``edge/v1/+/…``: online/offline (retained ``status``),
model, fps, p95 latency, CPU temperature and outbox depth (from ``health``),
last seen, and per device the messages received, gaps and duplicates computed
from the envelope ``seq``. Duplicates are dropped by ``(device_id, boot_id, seq)``;
gaps are counted per agent session (``seq`` may jump forward after a crash
because the counter reserves blocks on disk, which is not a loss); that bookkeeping is
:mod:`deploy.fleet_state`, sending commands is :mod:`deploy.commands`, and this module is the
fleet monitor, the table and the command line.

``status`` shows ``stale`` for a device whose retained status says ``online`` but whose
health stopped (none for 2.5 × its ``health_interval_s``), and exits 1 when an asked
device is not online, or, with no DEVICE given, when any device seen is offline or stale.

TLS options are the agent's: ``--ca-file``, ``--cert-file``/``--key-file``
(the operator certificate, CN ``fleet`` with the shipped ACL), ``--username``,
``--password-file``. The broker URL may also come from ``$EDGE_FLEET_BROKER``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploy.commands import DEVICE_ID_RE, TERMINAL, CommandOutput, online_devices, send_command, send_many
from deploy.fleet_state import STALE_FACTOR, DeviceView, FleetState
from deploy.snapshots import SNAPSHOT_KIND, save_snapshot
from edge_agent.cli.main import dispatch
from edge_agent.errors import EdgeError
from edge_agent.messaging.envelope import TOPIC_ROOT
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_UNHEALTHY = 1  # status: a device offline, stale or unknown
EXIT_ERROR = 2
EXIT_TIMEOUT = 3


class FleetMonitor:
    """Subscribes to the whole fleet and keeps a :class:`FleetState`."""

    def __init__(self, settings: MqttSettings, client_id: str | None = None, session_expiry_s: int = 0) -> None:
        self.state = FleetState()
        self.link = MqttLink(settings, client_id or f"fleet-{uuid.uuid4().hex[:8]}",
                             subscriptions=(f"{TOPIC_ROOT}/+/#",), session_expiry_s=session_expiry_s,
                             clean_first=session_expiry_s == 0)
        self.link.callbacks.on_message = self._on_message

    def _on_message(self, message: InboundMessage) -> None:
        self.state.handle(message.topic, message.payload, message.retain)

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()


# ---- presentation -----------------------------------------------------------------------
COLUMNS = (
    ("DEVICE", "device_id", 16), ("STATE", "state", 8), ("MODEL", "model", 18), ("FPS", "fps", 6),
    ("P95ms", "p95_ms", 7), ("TEMP", "cpu_temp_c", 5), ("OUTBOX", "outbox_depth", 6),
    ("SEEN", "last_seen_ago_s", 7), ("MSGS", "messages", 6), ("GAPS", "gaps", 5), ("DUPS", "duplicates", 5),
)


def render_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    lines = [" ".join(f"{title:<{width}}" for title, _, width in COLUMNS)]
    for row in rows:
        lines.append(" ".join(f"{cell(row.get(key))[:width]:<{width}}" for _, key, width in COLUMNS))
    if not rows:
        lines.append("(no devices seen)")
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> MqttSettings:
    broker = args.broker or os.environ.get("EDGE_FLEET_BROKER")
    if not broker:
        raise EdgeError("no broker: pass --broker mqtt(s)://host:port or set EDGE_FLEET_BROKER")
    return MqttSettings.from_any(
        None, broker=broker, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
        username=args.username, password_file=args.password_file, protocol=args.protocol,
        keepalive=args.keepalive, reconnect_max_s=5.0,
    )


MIN_LISTEN_S = 1.0  # retained status messages arrive right after subscribing
MAX_AUTO_WAIT_S = 120.0


def _auto_wait(views: list[DeviceView]) -> float:
    """How long ``status`` may listen without ``--wait``: long enough to see an online device go
    stale (STALE_FACTOR × its health interval, plus a second), at most MAX_AUTO_WAIT_S."""
    online = [v.interval_s * STALE_FACTOR + 1.0 for v in views if v.state == "online"]
    return min(MAX_AUTO_WAIT_S, max([MIN_LISTEN_S, *online]))


def status_exit_code(rows: list[dict[str, Any]], asked: Sequence[str]) -> int:
    """1 when an asked device is not ``online`` (offline, stale or unknown), or, with none
    asked, when any device seen is offline or stale; else 0."""
    if asked:
        return EXIT_UNHEALTHY if any(r["state"] != "online" for r in rows) else EXIT_OK
    return EXIT_UNHEALTHY if any(r["state"] in ("offline", "stale") for r in rows) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    monitor = FleetMonitor(_settings(args), args.client_id)
    state = monitor.state
    asked: list[str] = list(dict.fromkeys(args.devices))
    monitor.start()
    try:
        if not monitor.link.wait_connected((args.wait or 0) + 5):
            print(f"edge-fleet: error: cannot connect to {monitor.link.settings.broker}", file=sys.stderr)
            return EXIT_ERROR
        since = state.clock()
        while True:
            time.sleep(0.1)
            now = state.clock()
            with state.lock:
                views = [state.devices[d] for d in (asked or state.devices) if d in state.devices]
                decided = all(v.decided(since, now) for v in views)
                limit = args.wait if args.wait is not None else _auto_wait(views)
            # Stop once every (asked) device is known: not online, stale, or sent health since we listen.
            if now - since >= limit or (now - since >= MIN_LISTEN_S and decided):
                break
    finally:
        monitor.stop()
    rows = state.snapshot()
    if asked:
        by_id = {r["device_id"]: r for r in rows}
        rows = [by_id.get(d) or {"device_id": d, "state": "unknown"} for d in asked]
    code = status_exit_code(rows, asked)
    print(json.dumps({"devices": rows, "ok": code == EXIT_OK}, indent=2) if args.json else render_table(rows))
    return code


def cmd_watch(args: argparse.Namespace) -> int:
    monitor = FleetMonitor(_settings(args), args.client_id, session_expiry_s=args.session_expiry)
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    monitor.start()
    end = time.monotonic() + args.duration if args.duration else None
    try:
        while end is None or time.monotonic() < end:
            if stop.wait(args.interval if end is None else min(args.interval, max(0.0, end - time.monotonic()))):
                break
            if not args.json:
                state = "connected" if monitor.link.connected else "reconnecting"
                sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n")
                sys.stdout.write(f"edge-fleet watch — {monitor.link.settings.broker} ({state})  "
                                 f"{time.strftime('%H:%M:%S')}\n")
                sys.stdout.write(render_table(monitor.state.snapshot()) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
        restore()
    if args.json:
        print(json.dumps({"devices": monitor.state.snapshot()}, indent=2))
    return EXIT_OK


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT (Ctrl-C) and SIGTERM end ``watch`` cleanly, with its report.

    Installed explicitly: a process started from a script's background job inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt. Returns what puts the old handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def cmd_exporter(args: argparse.Namespace) -> int:
    from deploy import exporter

    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        return exporter.run(_settings(args), args, stop)
    finally:
        restore()


def cmd_simulate(args: argparse.Namespace) -> int:
    from deploy.simulate import simulate

    report = simulate(_settings(args), args.devices, args.rate, args.duration, prefix=args.prefix,
                      connections=args.connections, drop_every=args.drop_every, duplicate_every=args.duplicate_every,
                      leave_online=args.leave_online)
    print(json.dumps(report.to_json()))
    return EXIT_OK if report.refused == 0 else EXIT_ERROR


def _send_targets(args: argparse.Namespace) -> tuple[list[str], str]:
    """(devices, command) from ``DEVICE [DEVICE…] COMMAND`` or ``--all COMMAND``; EdgeError when wrong."""
    *devices, command = args.targets
    if args.all and devices:
        raise EdgeError("give either --all or device ids, not both")
    if not args.all and not devices:
        raise EdgeError("name the device(s) before the command, or use --all")
    for device in devices:
        if not DEVICE_ID_RE.fullmatch(device):
            raise EdgeError(f"{device!r} is not a device id (one topic level: letters, digits, '_', '.', '-')")
    if len(set(devices)) != len(devices):
        raise EdgeError("a device is named twice")
    if not re.fullmatch(r"^[A-Za-z0-9_.-]{1,64}$", command):  # one topic level
        raise EdgeError(f"{command!r} is not a command name")
    if args.output is not None and (args.all or len(devices) != 1):
        raise EdgeError("--output saves one device's picture: name exactly one device")
    return devices, command


def cmd_send(args: argparse.Namespace) -> int:
    try:
        cmd_args = json.loads(args.args) if args.args else {}
    except ValueError as exc:
        raise EdgeError(f"--args is not valid JSON: {exc}") from exc
    if not isinstance(cmd_args, dict):
        raise EdgeError("--args must be a JSON object")
    devices, command = _send_targets(args)
    if args.output is not None and command != "snapshot":
        raise EdgeError("--output saves a picture: only the snapshot command sends one")
    settings = _settings(args)
    if args.all:
        devices = online_devices(settings, args.wait)
        if not devices:
            print(f"edge-fleet: no device is online (retained status) on {settings.broker}", file=sys.stderr)
            return EXIT_ERROR
    if len(devices) == 1 and not args.all and not args.json:
        return _send_one(args, settings, devices[0], command, cmd_args)
    acks = send_many(settings, devices, command, cmd_args, timeout=args.timeout, sign_key=args.sign_key,
                     on_ack=None if args.json else _print_progress)
    rows = [_outcome(device, acks[device], args.timeout) for device in devices]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(device) for device in devices)
        for row in rows:
            print(f"{row['device']:<{width}}  {row['status']:<10} {row['reason']}".rstrip())
    statuses = {row["status"] for row in rows}
    if statuses & {"rejected", "failed"}:
        return EXIT_REJECTED
    if "timeout" in statuses:
        return EXIT_TIMEOUT
    return EXIT_OK


def _print_progress(device: str, ack: dict[str, Any]) -> None:
    if ack.get("status") not in TERMINAL:
        print(f"{device}: {ack.get('status')} {ack.get('reason') or ''}".rstrip(), file=sys.stderr)


def _outcome(device: str, ack: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """One device's line of the report: device, status (the ack's, or ``timeout``), reason, ack."""
    if ack is None:
        return {"device": device, "status": "timeout", "reason": f"no final ack within {timeout:g} s", "ack": None}
    reason = ack.get("reason")
    return {"device": device, "status": str(ack.get("status")), "reason": reason if isinstance(reason, str) else "",
            "ack": ack}


def _send_one(args: argparse.Namespace, settings: MqttSettings, device: str, command: str,
              cmd_args: dict[str, Any]) -> int:
    """One device: intermediate acks as JSON lines, the final ack last (and a snapshot's picture)."""
    output = CommandOutput(SNAPSHOT_KIND) if args.output is not None else None
    ack = send_command(
        settings, device, command, cmd_args, timeout=args.timeout,
        sign_key=args.sign_key, on_ack=lambda a: None if a.get("status") in TERMINAL else print(json.dumps(a)),
        output=output,
    )
    if ack is None:
        print(f"edge-fleet: no ack from {device} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(ack))
    if ack.get("status") not in ("accepted", "succeeded"):
        return EXIT_REJECTED
    if output is not None:
        return _save_output(output, args.output, device, args.timeout)
    return EXIT_OK


def _save_output(output: CommandOutput, path: Path, device: str, timeout: float) -> int:
    if output.payload is None:
        ignored = f" ({output.ignored} other message(s) on {output.kind} ignored)" if output.ignored else ""
        print(f"edge-fleet: {device} acknowledged the snapshot but its picture did not arrive within "
              f"{timeout:g} s{ignored}", file=sys.stderr)
        return EXIT_TIMEOUT
    try:
        width, height = save_snapshot(output.payload, path)
    except EdgeError as exc:
        raise EdgeError(f"refusing the snapshot from {device}, nothing written: {exc}") from exc
    print(f"edge-fleet: saved {width}x{height} JPEG to {path}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default $EDGE_FLEET_BROKER)")
    common.add_argument("--ca-file", type=Path, help="CA certificate that signed the broker's certificate")
    common.add_argument("--cert-file", type=Path, help="operator client certificate (mutual TLS)")
    common.add_argument("--key-file", type=Path, help="key of the client certificate")
    common.add_argument("--username")
    common.add_argument("--password-file", type=Path, help="file with the password ($CREDENTIALS_DIRECTORY aware)")
    common.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    common.add_argument("--keepalive", type=int, default=30)
    common.add_argument("--client-id", help="MQTT client id (default: random fleet-…)")
    parser = argparse.ArgumentParser(prog="edge-fleet", description="Watch and steer the edge fleet over MQTT.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("status", parents=[common], help="one snapshot of every device seen (exit 1: offline/stale)")
    p.add_argument("devices", nargs="*", metavar="DEVICE",
                   help="only these devices; exit 1 unless every one is online (not stale)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=float, default=None,
                   help="listen at most S seconds (default: until every online device sent health, or at most "
                        f"{STALE_FACTOR:g} x its health interval, so a stale one shows as stale)")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("watch", parents=[common], help="live table (Ctrl-C to stop)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print the final state as JSON instead of a live table")
    p.add_argument("--session-expiry", type=int, default=0,
                   help="keep the MQTT session this long (with --client-id) so nothing is missed while away")
    p.set_defaults(handler=cmd_watch)
    p = sub.add_parser("send", parents=[common], help="send a command to devices and report each ack",
                       usage="edge-fleet send [options] (DEVICE [DEVICE ...] | --all) COMMAND")
    p.add_argument("targets", nargs="+", metavar="DEVICE… COMMAND", help="device ids, then the command")
    p.add_argument("--all", action="store_true", help="every device whose retained status says online")
    p.add_argument("--wait", type=float, default=3.0,
                   help="--all: seconds at most to read the retained statuses (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON array: one object per device")
    p.add_argument("--args", help="JSON object of arguments")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for every final ack")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key for privileged commands")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="snapshot: save the picture to FILE (checked first; written atomically)")
    p.set_defaults(handler=cmd_send)
    from deploy import simulate

    p = sub.add_parser("exporter", parents=[common], help="serve the fleet as Prometheus metrics")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to serve /metrics (port 0: any)")
    p.add_argument("--share-group", metavar="NAME", help="MQTT 5 share group: several exporters split the load")
    p.add_argument("--settle-s", type=float, default=10.0,
                   help="a missing seq counts as a gap after this many seconds (default 10)")
    p.add_argument("--digest-s", type=float, default=1.0, help="share group: digest period (default 1 s)")
    p.add_argument("--member", help="share group: this member's name (default random)")
    p.set_defaults(handler=cmd_exporter)
    p = sub.add_parser("simulate", parents=[common], help="simulated devices publishing status and health (load)")
    simulate.add_arguments(p)
    p.set_defaults(handler=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="edge-fleet: %(message)s", stream=sys.stderr)
    return dispatch("edge-fleet", args)


if __name__ == "__main__":
    sys.exit(main())
