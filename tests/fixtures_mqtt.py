"""Fixtures: real Mosquitto brokers on free 127.0.0.1 ports, certificates, a message collector.

- ``mqtt_broker`` (session): plain listener, anonymous, persistence on (autosave 1 s).
- ``mqtt_broker_fn`` (function): its own broker, for tests that kill -9 and restart it.
- ``pki`` (session): CA, server cert for 127.0.0.1/localhost, client certs for two
  devices and the ``fleet`` operator, a cert from another CA, an expired cert.
- ``tls_broker`` (session): the shipped ``deploy/mosquitto`` config and ACL, rendered
  with the generated certificates, an empty CRL and a free port.
- ``digit_frames`` (session): 20 real digit PNGs for the real agent's looping source.
- ``start_agent``: starts the real ``edge-agent run --broker`` (:class:`RealAgent`).
- ``unique_id``: a fresh device id / topic level per test.

:class:`Collector` subscribes through :class:`edge_agent.messaging.link.MqttLink` (tests too go
through the link, never paho itself) and waits for messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy import certs
from deploy.broker import Mosquitto, free_port, plain_config, tls_config
from edge_agent.messaging.link import InboundMessage, MqttLink, MqttSettings
from tests.integration.mqtt_helpers import RealAgent

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    workdir = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    broker = Mosquitto(workdir, plain_config(workdir, port), port)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mqtt_broker_fn(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    port = free_port()
    broker = Mosquitto(workdir, plain_config(workdir, port), port)
    broker.start()
    yield broker
    broker.stop()


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: certs.CertPair
    server: certs.CertPair
    dev_a: certs.CertPair
    dev_b: certs.CertPair
    fleet: certs.CertPair
    foreign: certs.CertPair
    expired: certs.CertPair
    foreign_ca: certs.CertPair

    def client(self, pair: certs.CertPair, url: str, **kw: Any) -> MqttSettings:
        return MqttSettings(broker=url, ca_file=self.ca.cert, cert_file=pair.cert, key_file=pair.key,
                            keepalive=kw.pop("keepalive", 5), reconnect_max_s=kw.pop("reconnect_max_s", 2), **kw)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.create_ca(root)
    server = certs.issue(root, "localhost", server=True, dns=["localhost"], ips=["127.0.0.1"])
    dev_a = certs.issue(root, "dev-a")
    dev_b = certs.issue(root, "dev-b")
    fleet = certs.issue(root, "fleet")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = certs.issue(root, "dev-expired", not_before=past, not_after=past + dt.timedelta(days=1),
                          out_dir=root / "expired")
    other = root / "other-ca"
    foreign_ca = certs.create_ca(other, name="some other CA")
    foreign = certs.issue(other, "dev-a")  # same CN, wrong CA
    return Pki(root, ca, server, dev_a, dev_b, fleet, foreign, expired, foreign_ca)


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mosquitto]:
    """The shipped config and ACL, only paths and port replaced."""
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    port = free_port()
    crl = workdir / "crl.pem"
    certs.write_crl(pki.dir, [], crl)  # an empty CRL: the shipped crlfile line stays in
    conf = tls_config(workdir, port, pki.ca.cert, pki.server.cert, pki.server.key, crl=crl)
    broker = Mosquitto(workdir, conf, port, tls=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def digit_frames(tmp_path_factory: pytest.TempPathFactory, digits_data: Any) -> Path:
    """A folder of 20 real digit images (two of each class, in label order), for ``edge-agent run --loop``."""
    import cv2

    _, _, x_test, y_test = digits_data
    folder = tmp_path_factory.mktemp("digit-frames")
    n = 0
    for label in range(10):
        for image in x_test[y_test == label][:2]:
            assert cv2.imwrite(str(folder / f"{n:03d}-{label}.png"), image)
            n += 1
    return folder


FPS = 20  # the real agent's pace in the MQTT tests: about 20 results per second


@pytest.fixture
def start_agent(digits_bundle: Path, digit_frames: Path, tmp_path: Path) -> Iterator[Callable[..., RealAgent]]:
    """Start the real ``edge-agent run --broker`` (digits bundle, looping digit images, --fps 20,
    --events every); ``start(broker, device_id, state_dir, *extra_args, **RealAgent options)``.
    Every agent started is killed at teardown if still running."""
    # Reconnect within 1-2 s once the broker is back (the default backoff grows up to 60 s).
    config = tmp_path / "agent-mqtt.toml"
    config.write_text("[mqtt]\nreconnect_min_s = 1\nreconnect_max_s = 2\n")
    made: list[RealAgent] = []

    def start(broker: Mosquitto, device_id: str, state: Path, *extra: str, **kw: Any) -> RealAgent:
        kw.setdefault("fps", FPS)
        agent = RealAgent(broker.url, device_id, state, digits_bundle, digit_frames, "--config", str(config),
                          *extra, **kw)
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.close()


@pytest.fixture
def unique_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Collector:
    """Subscribes to topic filters and keeps every message; thread-safe waits."""

    def __init__(self, settings: MqttSettings, filters: tuple[str, ...], client_id: str | None = None,
                 session_expiry_s: int = 0) -> None:
        self.messages: list[InboundMessage] = []
        self.suback: list[list[int]] = []
        self._cond = threading.Condition()
        self.link = MqttLink(settings, client_id or f"col-{uuid.uuid4().hex[:8]}", subscriptions=filters,
                             session_expiry_s=session_expiry_s, clean_first=session_expiry_s == 0)
        self.link.callbacks.on_message = self._on_message
        self.link.callbacks.on_subscribed = self._on_suback

    def _on_message(self, message: InboundMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _on_suback(self, mid: int, codes: list[int]) -> None:
        with self._cond:
            self.suback.append(codes)
            self._cond.notify_all()

    def start(self, timeout: float = 60.0) -> Collector:  # a bound on a hang; returns when subscribed
        self.link.start()
        assert self.link.wait_connected(timeout), "collector could not connect"
        self.wait(lambda: bool(self.suback), timeout)
        return self

    def stop(self) -> None:
        self.link.stop()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def on(self, suffix: str) -> list[InboundMessage]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def json(self, suffix: str) -> list[dict[str, Any]]:
        out = []
        for m in self.on(suffix):
            with contextlib.suppress(ValueError):
                out.append(json.loads(m.payload))
        return out


@pytest.fixture
def collector_factory() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(settings: MqttSettings, *filters: str, **kw: Any) -> Collector:
        col = Collector(settings, tuple(filters), **kw).start()
        made.append(col)
        return col

    yield make
    for col in made:
        col.stop()


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
