"""Device ids: the rules (one MQTT topic level) and the default derived from the machine.

A device id is the topic level in ``edge/v1/{device_id}/…``, the MQTT client id and,
with client certificates, the certificate's CN (the broker ACL's ``%u``). So it is
1-64 of letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit: never
``+``, ``#``, ``/``, spaces or control characters.

When the configuration names none, :func:`default_device_id` derives one from the
machine: ``<hostname>-<first 8 hex digits of /etc/machine-id>`` (``raspberrypi-3f2a9c1e``).
The host name alone is not enough (every Raspberry Pi OS image boots as
``raspberrypi``); the machine id is unique per installation and stable across reboots.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from pathlib import Path

DEVICE_ID_MAX = 64
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z"
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NOT_ALLOWED = re.compile(r"[^a-z0-9_.-]+")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_MACHINE_ID_RE = re.compile(r"[0-9a-f]{32}")
FALLBACK_ID = "edge-device"

log = logging.getLogger(__name__)


def is_device_id(text: str) -> bool:
    """True when ``text`` is a valid device id (the whole string, no trailing newline)."""
    return _DEVICE_ID_RE.fullmatch(text) is not None


def sanitize(text: str, max_length: int = DEVICE_ID_MAX) -> str:
    """``text`` made into a device id: lower case, runs of other characters become ``-``,
    leading and trailing separators dropped, at most ``max_length`` characters; ``""`` when
    nothing usable is left."""
    cleaned = _NOT_ALLOWED.sub("-", text.strip().lower())
    cleaned = cleaned.lstrip("_.-")[:max_length].rstrip("_.-")
    return cleaned if is_device_id(cleaned) else ""


def machine_id(files: Sequence[Path] = MACHINE_ID_FILES) -> str:
    """The systemd/D-Bus machine id (32 lower-case hex digits), or ``""`` when there is none."""
    for path in files:
        try:
            text = path.read_text(encoding="ascii", errors="replace")[:64].strip()
        except OSError:
            continue
        if _MACHINE_ID_RE.fullmatch(text):
            return text
    return ""


def derive_device_id(hostname: str, machine: str) -> tuple[str, str]:
    """(device id, where it came from) for a host name and a machine id (either may be empty)."""
    suffix = machine[:8]
    host = sanitize(hostname, DEVICE_ID_MAX - len(suffix) - 1)
    if host and suffix:
        return f"{host}-{suffix}", "host name and machine id"
    if suffix:
        return f"edge-{suffix}", "machine id (no usable host name)"
    if host:
        return host, "host name (no machine id)"
    return FALLBACK_ID, "nothing (no usable host name or machine id)"


def default_device_id() -> str:
    """The device id used when none is configured; logs how it was derived."""
    device_id, source = derive_device_id(socket.gethostname(), machine_id())
    log.info("device_id not configured: using %r, derived from the %s; set device_id to choose one",
             device_id, source)
    return device_id
