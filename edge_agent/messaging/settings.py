"""MQTT connection settings: the broker URL, TLS files, credentials and the link's limits.

Plain values with no paho import (the deploy tools and the config use them too);
defaults and limits come from :class:`edge_agent.config.MqttSection`, the one definition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from edge_agent.config import MqttSection, format_error
from edge_agent.errors import EdgeError
from edge_agent.schema import ValidationError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "tcp": 1883, "ssl": 8883}
TLS_SCHEMES = frozenset({"mqtts", "ssl"})


class MqttError(EdgeError):
    """MQTT settings are invalid or a credential file cannot be read."""


def _default(name: str) -> Any:
    """The ``[mqtt]`` config section's default for ``name`` (defined once, there)."""
    return MqttSection.model_fields[name].default


@dataclass
class MqttSettings:
    """Connection settings: the link's part of the ``[mqtt]`` config section, as plain values.

    Defaults and limits are those of :class:`edge_agent.config.MqttSection` (the one
    definition); :meth:`validate` checks the values against it. ``broker`` is
    ``mqtt://host[:port]`` or ``mqtts://host[:port]``. ``password_file`` may be
    absolute, or a bare name resolved in ``$CREDENTIALS_DIRECTORY`` (systemd
    ``LoadCredential``). ``client_id`` defaults to the device id.
    """

    broker: str = "mqtt://localhost:1883"  # the section's default is None: no broker, no MQTT
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = _default("protocol")
    keepalive: int = _default("keepalive")
    will_delay: int = _default("will_delay")
    client_id: str | None = None
    reconnect_min_s: float = _default("reconnect_min_s")
    reconnect_max_s: float = _default("reconnect_max_s")
    max_inflight: int = _default("max_inflight")
    # Compared with the whole PUBLISH packet (payload + topic + PACKET_OVERHEAD), and kept
    # clearly below the shipped broker's ``max_packet_size 262144``.
    max_payload_bytes: int = _default("max_payload_bytes")
    homeassistant: bool = _default("homeassistant")
    duplicate_backoff_s: float = _default("duplicate_backoff_s")

    @classmethod
    def from_any(cls, value: MqttSettings | Any | None = None, **overrides: Any) -> MqttSettings:
        """Build from an MqttSettings, any object with the same attribute names
        (e.g. the ``mqtt`` config section), a dict, or keyword arguments."""
        data: dict[str, Any] = {}
        names = cls.__dataclass_fields__.keys()
        if isinstance(value, dict):
            data.update({k: v for k, v in value.items() if k in names})
        elif value is not None:
            for name in names:
                if hasattr(value, name):
                    data[name] = getattr(value, name)
        data.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        if "protocol" in data:
            data["protocol"] = _normalise_protocol(str(data["protocol"]))
        settings = cls(**data)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the values against the ``[mqtt]`` section's limits; raises MqttError (one line)."""
        parse_broker_url(self.broker)
        try:
            MqttSection.model_validate({name: getattr(self, name) for name in self.__dataclass_fields__})
        except ValidationError as exc:
            # A cross-field rule has no single setting to name.
            message = format_error(exc, "mqtt settings") if exc.where() else f"mqtt settings: {exc.first['msg']}"
            raise MqttError(message) from exc
        if self.cert_file is not None and not parse_broker_url(self.broker).tls:
            raise MqttError("a client certificate needs a TLS broker URL (mqtts://host:port)")


def _normalise_protocol(value: str) -> Literal["5", "3.1.1"]:
    text = value.strip().lower().removeprefix("v").removeprefix("mqttv").removeprefix("mqtt")
    if text in ("5", "5.0"):
        return "5"
    if text in ("3.1.1", "311", "4"):
        return "3.1.1"
    raise MqttError(f"mqtt protocol must be '5' or '3.1.1', got {value!r}")


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` / ``mqtts://host:port`` → address; raises MqttError."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise MqttError(f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise MqttError(f"broker URL {url!r}: give credentials with --username/--password-file, not in the URL")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise MqttError(f"broker URL {url!r}: {exc}") from exc
    return BrokerAddress(tls=parts.scheme in TLS_SCHEMES, host=parts.hostname, port=port)


def read_password(path: Path | None) -> str | None:
    """Read a password file; a relative name is looked up in ``$CREDENTIALS_DIRECTORY``."""
    if path is None:
        return None
    candidate = path
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        candidate = Path(creds) / path
    try:
        return candidate.read_text().rstrip("\r\n")
    except OSError as exc:
        raise MqttError(f"cannot read MQTT password file {candidate}: {exc.strerror}") from exc


