"""A local Mosquitto for development, demos and tests, configured like production.

The TLS variant renders the shipped ``deploy/mosquitto/mosquitto.conf`` and
``edge.acl`` with only paths and the port replaced, so what a demo or a test
exercises is the configuration operators deploy.

``python -m deploy.broker --dir DIR [--tls] [--port P]`` creates certificates
(TLS), writes the configuration and runs the broker in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from deploy import certs

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SHIPPED_DIR = Path(str(resources.files("deploy") / "mosquitto"))  # package data
SHIPPED_CONF = SHIPPED_DIR / "mosquitto.conf"
SHIPPED_ACL = SHIPPED_DIR / "edge.acl"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(template: str, values: dict[str, str | None]) -> str:
    """Replace ``key value`` lines of a mosquitto.conf by key; append keys not present; drop keys
    whose value is None."""
    out: list[str] = []
    seen: set[str] = set()
    for line in template.splitlines():
        key = line.split(" ", 1)[0] if line and not line.startswith("#") else ""
        if key in values:
            value = values[key]
            if value is not None:
                out.append(f"{key} {value}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{k} {v}" for k, v in values.items() if k not in seen and v is not None]
    return "\n".join(out) + "\n"


def run_as_user() -> str:
    """Mosquitto started as root drops to user ``mosquitto``, which cannot read private temp dirs."""
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")


def plain_config(workdir: Path, port: int) -> str:
    """Anonymous plain listener on 127.0.0.1 (development only), persistence on."""
    return "\n".join([
        f"user {run_as_user()}",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        "max_queued_messages 100000",
        "max_inflight_messages 20",
        "max_packet_size 262144",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "",
    ])


def tls_config(workdir: Path, port: int, ca: Path, server_cert: Path, server_key: Path,
               crl: Path | None = None) -> str:
    """The shipped TLS + client-certificate + ACL config, with local paths and port; without ``crl``
    the ``crlfile`` line is left out (Mosquitto refuses to start on a missing CRL)."""
    workdir = Path(workdir).resolve()
    acl = workdir / "edge.acl"
    shutil.copy(SHIPPED_ACL, acl)
    return render_config(SHIPPED_CONF.read_text(), {
        "user": run_as_user(),
        "listener": f"{port} 127.0.0.1",
        "acl_file": str(acl),
        "persistence_location": f"{workdir}/",
        "cafile": str(ca),
        "certfile": str(server_cert),
        "keyfile": str(server_key),
        "crlfile": str(crl) if crl is not None else None,
    })


class Mosquitto:
    """A mosquitto process on a fixed port that can be killed and restarted."""

    def __init__(self, workdir: Path, conf_text: str, port: int, tls: bool = False) -> None:
        self.workdir = workdir = Path(workdir).resolve()
        self.port = port
        self.tls = tls
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(conf_text)
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until the port accepts connections (retries while the port is busy)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log.open("ab")
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log,
                                         cwd=self.workdir)
            log.close()
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # e.g. port still in use right after a kill: retry
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not start; log:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9: no clean shutdown, no final persistence save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass(frozen=True)
class LocalPki:
    """Certificates for a local TLS broker: CA, server (127.0.0.1/localhost), clients by CN."""

    dir: Path
    ca: certs.CertPair
    server: certs.CertPair
    clients: dict[str, certs.CertPair]


def make_pki(directory: Path, clients: Sequence[str]) -> LocalPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.create_ca(directory)
    server = certs.issue(directory, "localhost", server=True, dns=["localhost"], ips=["127.0.0.1"])
    issued = {name: certs.issue(directory, name) for name in clients}
    certs.write_crl(directory, [], directory / "crl.pem")  # the shipped config reads a CRL
    return LocalPki(directory, ca, server, issued)


def start_tls_broker(workdir: Path, pki: LocalPki, port: int | None = None) -> Mosquitto:
    """Start the shipped TLS configuration on 127.0.0.1."""
    port = port or free_port()
    conf = tls_config(workdir, port, pki.ca.cert, pki.server.cert, pki.server.key, crl=pki.dir / "crl.pem")
    broker = Mosquitto(workdir, conf, port, tls=True)
    broker.start()
    return broker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.broker", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="working directory (config, certs, data)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="shipped TLS + ACL config with generated certs")
    parser.add_argument("--client", action="append", default=[], help="client certificate CN to issue (TLS)")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    if args.tls:
        pki = make_pki(args.dir / "pki", [*args.client, "fleet"])
        broker = start_tls_broker(args.dir, pki, port)
        print(f"broker {broker.url}; CA {pki.ca.cert}; client certs under {pki.dir}", flush=True)
    else:
        broker = Mosquitto(args.dir, plain_config(args.dir, port), port)
        broker.start()
        print(f"broker {broker.url} (plain, anonymous, development only)", flush=True)
    try:
        while broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
