"""Agent configuration: a TOML file validated into typed models, one per section.

Precedence, lowest first: defaults < TOML file < ``EDGE_AGENT_*`` environment
variables < command-line options < remote overrides (``config-overrides.json``
in the state directory, written by :meth:`edge_agent.agent.agent.Agent.apply_config`).

Environment variables name a top-level key (``EDGE_AGENT_DEVICE_ID``) or a key
inside a section with a double underscore (``EDGE_AGENT_MQTT__BROKER``,
``EDGE_AGENT_MODEL__THREADS``). Values are parsed as TOML literals when they
can be (numbers, booleans, quoted strings, arrays), else taken as strings.

Secrets never live in the file: ``mqtt.password_file`` names a file, and a
relative name is looked up in ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential``) first.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from edge_agent.device_id import DEVICE_ID_MAX, DEVICE_ID_PATTERN, default_device_id
from edge_agent.errors import ConfigError
from edge_agent.schema import Field, FieldError, Schema, ValidationError

ENV_PREFIX = "EDGE_AGENT_"
OVERRIDES_FILE = "config-overrides.json"
SERVICE_STATE_DIR = Path("/var/lib/edge-agent")  # StateDirectory=edge-agent in the shipped unit
_POLICY_RE = re.compile(r"^(every|change|interval:(\d+(\.\d+)?))$")


def default_state_dir(*, environ: Mapping[str, str] | None = None, service_dir: Path | None = None,
                      is_root: bool | None = None) -> Path:
    """The agent's state directory when none is configured; ``run``, ``install-model``, ``models``
    and ``rollback`` all use it, so they find the same store.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; the first entry
    when it lists several); else the service's store ``/var/lib/edge-agent``
    when running as root or when it exists and is writable (so ``sudo edge-agent
    install-model`` provisions the store the service will use); else
    ``$XDG_STATE_HOME/edge-agent``, else ``~/.local/state/edge-agent``. Never a
    path relative to the working directory.
    """
    environ = os.environ if environ is None else environ
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    service = SERVICE_STATE_DIR if service_dir is None else service_dir
    root = os.geteuid() == 0 if is_root is None else is_root
    if root or (service.is_dir() and os.access(service, os.W_OK | os.X_OK)):
        return service
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "edge-agent"
    return Path.home() / ".local" / "state" / "edge-agent"


class _Section(Schema):
    """A config section: unknown keys are errors (see :mod:`edge_agent.schema`)."""


def parse_event_policy(value: str) -> tuple[str, float]:
    """Split ``every`` | ``change`` | ``interval:S`` into (mode, seconds)."""
    match = _POLICY_RE.match(value.strip())
    if not match:
        raise ValueError(f"event policy {value!r} must be 'every', 'change' or 'interval:SECONDS'")
    if match.group(1).startswith("interval:"):
        seconds = float(match.group(2))
        if seconds <= 0:
            raise ValueError("interval:SECONDS needs SECONDS > 0")
        return "interval", seconds
    return match.group(1), 0.0


def _checked_policy(field: str, value: str) -> str:
    """An event policy setting, stripped; a bad one blames ``field``."""
    try:
        parse_event_policy(value)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None
    return value.strip()


class ModelSection(_Section):
    """Which model to run and how."""

    bundle: Path | None = Field(
        default=None,
        description="Bundle file, installed model directory (manifest.json + model.tflite) "
        "or plain .tflite (then `sidecar` is required). Default: <state_dir>/models/current.",
    )
    sidecar: Path | None = Field(default=None, description="TOML/JSON describing a plain .tflite model.")
    public_key: Path | None = Field(
        default=None, description="Pinned Ed25519 public key (PEM); when set, bundles must be signed by it."
    )
    runtime: Literal["litert"] = "litert"
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads.")
    delegate: str | None = Field(default=None, description="External delegate library (e.g. libedgetpu.so.1).")
    delegate_options: dict[str, str] = Field(default_factory=dict)
    max_model_mb: int = Field(
        default=256, ge=1, le=2048,
        description="Largest model.tflite the agent loads (bundles declaring more are refused before "
                    "anything is inflated).",
    )
    latency_budget_ms: float | None = Field(
        default=None, ge=0, le=600_000,
        description="This device's budget for one inference in smoke tests (check, install, OTA) and "
                    "probation; unset: the bundle's own (set by the converter from its host's speed); "
                    "0: latency is not judged.",
    )


SourceType = Literal["auto", "camera", "picamera2", "video", "stream", "exec", "folder", "wav", "stdin", "mic"]


class SourceSection(_Section):
    """Where frames or audio come from."""

    uri: str | None = Field(
        default=None,
        description="Camera index or /dev/videoN, picamera2[:N], file, folder, rtsp:// or http(s):// URL, "
        "'exec:COMMAND' (a command writing MJPEG on stdout), *.wav, '-' / 'stdin' for raw PCM, "
        "'mic' for the microphone.",
    )
    type: SourceType = "auto"
    fps: float | None = Field(default=None, gt=0, le=1000, description="Cap (live) or pace (files) the rate.")
    queue_size: int = Field(default=4, ge=1, le=1024, description="Frames waiting for inference.")
    live: bool | None = Field(default=None, description="Drop oldest when full; default depends on the type.")
    loop: bool = Field(default=False, description="Restart file sources at the end (demos).")
    sample_rate: int | None = Field(
        default=None, gt=0, le=192000, description="Rate of raw PCM on stdin / microphone (default: model's)."
    )
    width: int | None = Field(default=None, gt=0, le=8192, description="Requested camera width.")
    height: int | None = Field(default=None, gt=0, le=8192, description="Requested camera height.")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)
    read_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Live source silence before reconnect.")
    stall_timeout_s: float | None = Field(
        default=None, gt=0, le=3600,
        description="A stream connected but without a complete frame this long is 'stalled' and reconnected "
        "(default 3 x read_timeout_s).")
    max_part_bytes: int = Field(
        default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024,
        description="Largest stream frame (MJPEG part or snapshot) in bytes; a larger one is dropped.")
    max_image_pixels: int = Field(
        default=4096 * 4096, ge=64 * 64, le=16384 * 16384,
        description="Largest image (width x height, read from its header) a stream or folder frame may declare.")

    def _check(self) -> None:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise FieldError("reconnect_max_s", "must be >= reconnect_min_s")


class EventsSection(_Section):
    """When results are published and which ones."""

    policy: str = Field(default="change", description="'every', 'change' or 'interval:SECONDS'.")
    score_threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Override the manifest's score threshold."
    )
    top_k: int | None = Field(default=None, ge=1, le=100, description="Override the manifest's top-k.")

    def _check(self) -> None:
        self.policy = _checked_policy("policy", self.policy)


class MotionSection(_Section):
    """Motion gating: infer only while something moves in a fixed camera's picture.

    Each frame is compared, small and grey, with a running average of the recent
    ones (see :mod:`edge_agent.agent.motion`). Times are on the source's own clock:
    a video file's position, a live source's capture time.
    """

    enabled: bool = Field(default=False, description="Gate inference on motion (--motion).")
    threshold: int = Field(
        default=25, ge=1, le=255,
        description="Grey-level difference (0-255) from the background at which a pixel counts as changed.",
    )
    min_area_ratio: float = Field(
        default=0.002, gt=0.0, le=1.0,
        description="Share of the picture's pixels that must change for a frame to show motion.",
    )
    hold_s: float = Field(
        default=2.0, ge=0.0, le=3600.0, description="Seconds inference goes on after the last motion.",
    )
    max_interval_s: float = Field(
        default=10.0, gt=0.0, le=86400.0,
        description="Longest time without an inference: a still scene is still inferred this often.",
    )


class HealthSection(_Section):
    interval_s: float = Field(default=30.0, ge=0.05, le=86400, description="Seconds between health messages.")


class MqttSection(_Section):
    """Broker connection (used when `broker` is set).

    The one definition of the MQTT settings' defaults and limits:
    :class:`edge_agent.messaging.link.MqttSettings` is checked against this record.
    """

    broker: str | None = Field(default=None, description="mqtt://host:port or mqtts://host:port")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = Field(
        default=None, description="File holding the password; relative names look in $CREDENTIALS_DIRECTORY."
    )
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=5, le=3600)
    will_delay: int = Field(default=10, ge=0, le=3600, description="MQTT v5 will delay interval (s).")
    client_id: str | None = Field(default=None, description="Default: the device id.")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    max_inflight: int = Field(default=10, ge=1, le=1000)
    command_public_key: Path | None = Field(
        default=None, description="Pinned Ed25519 key for privileged commands (default: model.public_key)."
    )
    # QoS is not configurable: QoS 1 is the contract for everything the agent sends.
    max_payload_bytes: int = Field(
        default=128 * 1024, ge=1024, le=256 * 1024,
        description="Cap on a whole PUBLISH packet (payload + topic + header); at most the broker's "
                    "max_packet_size (256 KiB in deploy/mosquitto).",
    )
    command_rate: float = Field(default=5.0, gt=0, le=1000, description="Commands per second (token bucket rate).")
    command_burst: float = Field(default=20.0, ge=1, le=10000, description="Command burst (token bucket size).")
    homeassistant: bool = False
    duplicate_backoff_s: float = Field(
        default=30.0, ge=1, le=3600,
        description="After another client connected with this device id: reconnect after 1-2x this (s).")

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("protocol"), int | float) and not isinstance(data.get("protocol"), bool):
            data["protocol"] = str(data["protocol"])  # `protocol = 5` in TOML means "5"
        return data

    def _check(self) -> None:
        if self.broker is not None and not re.fullmatch(r"^(mqtts?|tcp|ssl)://[^/\s]+$", self.broker):
            raise FieldError("broker", "must look like mqtt://host:port or mqtts://host:port")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise FieldError("reconnect_max_s", "must be >= reconnect_min_s")

    def password_path(self) -> Path | None:
        """The password file, resolved against ``$CREDENTIALS_DIRECTORY`` when relative."""
        if self.password_file is None:
            return None
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and not self.password_file.is_absolute():
            candidate = Path(creds) / self.password_file
            if candidate.exists():
                return candidate
        return self.password_file


class OutboxSection(_Section):
    path: Path | None = Field(default=None, description="SQLite file; default <state_dir>/outbox.db")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    max_age_s: float = Field(default=7 * 86400.0, gt=0)


class OtaSection(_Section):
    """Over-the-air model updates (the ``update_model`` command)."""

    download_timeout_s: float = Field(
        default=600.0, gt=0, le=86400,
        description="Deadline for a whole download: connecting, redirects and every read together.",
    )
    read_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait for a connection or the server's next bytes.",
    )
    max_redirects: int = Field(
        default=5, ge=0, le=20, description="HTTP redirects followed (to http:// or https://, never https to http).",
    )
    file_root: Path | None = Field(
        default=None,
        description="Directory that file:// URLs may name (symlinks resolved, regular files only). "
        "Default: none, file:// URLs are refused.",
    )


_LISTEN_RE = re.compile(r"^(?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):)?(\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) as (host, port)."""
    match = _LISTEN_RE.match(value.strip())
    if not match or int(match.group(2)) > 65535:
        raise ValueError(f"{value!r} must be PORT or HOST:PORT (e.g. 8080, 127.0.0.1:8080, 0.0.0.0:8080, "
                         "[::1]:8080) with a port of 0-65535")
    host = (match.group(1) or "127.0.0.1").strip("[]")
    return host, int(match.group(2))


class PreviewSection(_Section):
    """The live preview over HTTP (off unless `listen` is set)."""

    listen: str | None = Field(
        default=None,
        description="PORT (on 127.0.0.1) or HOST:PORT; 0.0.0.0:PORT serves every network the device is on, "
        "to anyone who can reach it (no authentication).")
    max_clients: int = Field(default=4, ge=1, le=64, description="Viewers of /stream.mjpg at once; more get 503.")
    max_fps: float = Field(default=10.0, gt=0, le=60, description="Frames per second sent to each viewer at most.")
    quality: int = Field(default=80, ge=10, le=100, description="JPEG quality of the preview frames.")

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        listen = data.get("listen")
        if isinstance(listen, int) and not isinstance(listen, bool):
            data["listen"] = str(listen)  # `listen = 8080` in TOML (or the environment) means "8080"
        return data

    def _check(self) -> None:
        if self.listen is not None:
            try:
                parse_listen(self.listen)
            except ValueError as exc:
                raise FieldError("listen", str(exc)) from None
            self.listen = self.listen.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when the preview is off."""
        return parse_listen(self.listen) if self.listen else None


class MetricsSection(_Section):
    """Prometheus metrics over HTTP at ``/metrics`` (off unless `listen` is set)."""

    listen: str | None = Field(
        default=None,
        description="PORT (on 127.0.0.1) or HOST:PORT; 0.0.0.0:PORT serves every network the device is on, "
        "to anyone who can reach it (no authentication).")

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return PreviewSection._prepare(data)

    def _check(self) -> None:
        if self.listen is not None:
            try:
                parse_listen(self.listen)
            except ValueError as exc:
                raise FieldError("listen", str(exc)) from None
            self.listen = self.listen.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when metrics are off."""
        return parse_listen(self.listen) if self.listen else None


class AgentConfig(_Section):
    """The whole agent configuration."""

    device_id: str = Field(
        default_factory=default_device_id, min_length=1, max_length=DEVICE_ID_MAX, pattern=DEVICE_ID_PATTERN,
        description="One MQTT topic level: letters, digits, '_', '.', '-'. Default: derived from the machine, "
        "<hostname>-<first 8 hex digits of /etc/machine-id> (edge_agent/device_id.py).",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Default: $STATE_DIRECTORY (systemd StateDirectory=), else /var/lib/edge-agent for "
        "root or when writable, else $XDG_STATE_HOME/edge-agent (~/.local/state/edge-agent).",
    )
    max_frames: int | None = Field(default=None, ge=1, description="Stop after this many inferences.")
    duration_s: float | None = Field(default=None, gt=0, description="Stop after this many seconds.")
    publisher: Literal["auto", "stdout", "mqtt"] = "auto"
    model: ModelSection = Field(default_factory=ModelSection)
    source: SourceSection = Field(default_factory=SourceSection)
    events: EventsSection = Field(default_factory=EventsSection)
    motion: MotionSection = Field(default_factory=MotionSection)
    health: HealthSection = Field(default_factory=HealthSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    ota: OtaSection = Field(default_factory=OtaSection)
    preview: PreviewSection = Field(default_factory=PreviewSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("state_dir", 0) in (None, ""):
            del data["state_dir"]  # empty means "the default"
        return data

    @property
    def publisher_kind(self) -> str:
        if self.publisher != "auto":
            return self.publisher
        return "mqtt" if self.mqtt.broker else "stdout"

    @property
    def bundle_path(self) -> Path:
        return self.model.bundle or self.state_dir / "models" / "current"


# --------------------------------------------------------------------------- loading


def format_error(exc: ValidationError, origin: str) -> str:
    """One line naming the setting, the problem and the value (the first problem of ``exc``)."""
    first, where = exc.first, exc.where("config")
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown setting '{where}' (check the spelling; see the config reference)"
    msg = str(first["msg"])
    value = first.get("input")
    shown = "" if value is None or isinstance(value, dict | list) else f" (got {value!r})"
    more = f" and {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
    return f"{origin}: invalid '{where}': {msg}{shown}{more}"


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, converting every failure into one ConfigError line."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested settings from ``EDGE_AGENT_*`` variables (see the module docstring)."""
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another EDGE_AGENT_ variable")
        node[path[-1]] = _env_value(raw)
    return result


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (None values in ``update`` are skipped)."""
    out = dict(base)
    for key, value in update.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            base_value = out.get(key)
            out[key] = merge(base_value if isinstance(base_value, dict) else {}, value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Build the validated configuration from file, environment and CLI options.

    Raises:
        ConfigError: unreadable file, unknown key or invalid value (one line).
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    origin = str(path) if path is not None else "configuration"
    data = merge(data, env_overrides(environ))
    data = merge(data, cli or {})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, origin)) from exc


# --------------------------------------------------------------------------- remote overrides


class RuntimeSettings(_Section):
    """Settings a remote ``set_config`` may change on a running agent."""

    events: str | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=100)
    fps: float | None = Field(default=None, gt=0, le=1000)
    health_interval_s: float | None = Field(default=None, ge=0.05, le=86400)
    version: int | None = Field(default=None, ge=0, description="Config version from config/desired.")

    def _check(self) -> None:
        if self.events is not None:
            self.events = _checked_policy("events", self.events)


def validate_settings(changes: Mapping[str, Any]) -> RuntimeSettings:
    """Validate remote changes; raises ConfigError with one line."""
    if not isinstance(changes, Mapping):
        raise ConfigError("config changes must be a JSON object")
    try:
        return RuntimeSettings.model_validate(dict(changes))
    except ValidationError as exc:
        raise ConfigError(format_error(exc, "set_config")) from exc
