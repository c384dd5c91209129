"""Per-host identity for ``edge-deploy install-agent``: device ids, per-host configs, certificates.

The device id comes from the SSH target's host part as the operator wrote it
(``pi@cam-kitchen.lan`` → ``cam-kitchen.lan``; an ``~/.ssh/config`` alias counts), made
into a device id by :func:`edge_agent.device_id.sanitize`, or from
``--device-id-template`` with ``{host}`` (that sanitised host), ``{short}`` (its part
before the first dot; all of it for an IP address) and ``{instance}`` (``--instance``; the
default is then ``{host}-{instance}``). Not the device's own ``hostname``: the id is then
known before any connection (``--dry-run`` shows it, clashes are refused before anything is
changed), and every fresh Raspberry Pi OS image calls itself ``raspberrypi``.

The per-host config is the ``--config`` file with ``device_id`` set and, as asked,
``[mqtt] broker`` and the certificate paths; comments and everything else are kept.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from deploy import certs
from deploy.pki import Pki, PkiError
from deploy.ssh import DeployError, Target
from edge_agent.device_id import is_device_id, sanitize

TEMPLATE_FIELDS = ("host", "short", "instance")
MAX_TEMPLATE = 200
_HEADER = re.compile(r"^\s*\[")


@dataclass(frozen=True)
class HostSetup:
    """What install-agent gives one host: its device id, its config file and, with ``--pki``,
    its client certificate and the CA (local files to upload)."""

    device_id: str
    config: Path
    cert: certs.CertPair | None = None
    ca: Path | None = None


def host_part(target: Target) -> str:
    """``pi@cam-01.lan`` → ``cam-01.lan`` (``[::1]`` → ``::1``)."""
    return target.host.rpartition("@")[2].strip("[]")


def check_template(template: str, instance: str | None = None) -> None:
    """Refuse a template with fields other than ``{host}``/``{short}``/``{instance}`` (this one only
    with ``--instance``) or with format specs."""
    if len(template) > MAX_TEMPLATE:
        raise DeployError(f"--device-id-template is longer than {MAX_TEMPLATE} characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DeployError(f"--device-id-template {template!r}: {exc}") from exc
    for _, field, spec, conversion in parts:
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            given = f"{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}"
            raise DeployError(f"--device-id-template {template!r}: only {{host}}, {{short}} and {{instance}} may be "
                              f"used, not {{{given}}}")
        if field == "instance" and instance is None:
            raise DeployError(f"--device-id-template {template!r}: {{instance}} needs --instance")


def device_id_for(target: Target, template: str | None = None, instance: str | None = None) -> str:
    """The device id of ``target`` (see the module docstring); :class:`DeployError` when none results.

    The default template is ``{host}``, or ``{host}-{instance}`` with ``--instance`` (several
    agents on one host each need their own id)."""
    raw = host_part(target)
    host = sanitize(raw)
    if not host:
        raise DeployError(f"{target}: the host name {raw!r} gives no usable device id; use --device-id-template")
    if template is None:
        template = "{host}-{instance}" if instance else "{host}"
    check_template(template, instance)
    try:
        ipaddress.ip_address(raw)
        short = host  # an address has no "first label"
    except ValueError:
        short = host.split(".")[0]
    device_id = template.format(host=host, short=short, instance=instance or "")
    if not is_device_id(device_id):
        raise DeployError(f"--device-id-template {template!r} gives {device_id!r} for {target}: not a device id "
                          "(1-64 letters, digits, '.', '_', '-', starting with a letter or digit)")
    return device_id


def plan_device_ids(targets: Sequence[Target], template: str | None,
                    instance: str | None = None) -> dict[Target, str]:
    """Every target's device id; refuses when two targets would share one."""
    ids = {target: device_id_for(target, template, instance) for target in targets}
    seen: dict[str, Target] = {}
    for target, device_id in ids.items():
        if device_id in seen:
            raise DeployError(f"{seen[device_id]} and {target} would both get device id {device_id!r}; "
                              "use --device-id-template with {host}")
        seen[device_id] = target
    return ids


# --------------------------------------------------------------------------- config


def set_toml_key(text: str, section: str | None, key: str, value: str) -> str:
    """``text`` with ``key = "value"`` in ``[section]`` (None: the top level), replacing the key's line
    or adding it; everything else is kept. Checked by parsing the result."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if section is not None:
        header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
        found = next((i for i, line in enumerate(lines) if header.match(line)), None)
        if found is None:
            lines += ["", f"[{section}]"]
            found = len(lines) - 1
        start = found + 1
        end = next((i for i in range(start, len(lines)) if _HEADER.match(lines[i])), len(lines))
    else:
        end = next((i for i, line in enumerate(lines) if _HEADER.match(line)), len(lines))
    assignment = f"{key} = {json.dumps(value)}"
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    hit = next((i for i in range(start, end) if pattern.match(lines[i])), None)
    if hit is not None:
        lines[hit] = assignment
    elif section is None:
        # before the first section, after a blank line so it does not join a comment block
        lines[end:end] = [assignment, ""] if end < len(lines) else [assignment]
    else:
        lines.insert(start, assignment)
    result = "\n".join(lines) + "\n"
    try:
        data: dict[str, Any] = tomllib.loads(result)
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(f"cannot set {key} in the config: {exc}") from exc
    table = data if section is None else data.get(section, {})
    if not isinstance(table, dict) or table.get(key) != value:
        raise DeployError(f"cannot set {section + '.' if section else ''}{key} in the config (a multi-line "
                          "value?); edit the --config file")
    return result


def host_config(base: str, device_id: str, *, broker: str | None = None, credentials: str | None = None) -> str:
    """The per-host config: ``base`` with ``device_id``, optionally ``[mqtt] broker`` and, with
    ``credentials`` (the service's ``$CREDENTIALS_DIRECTORY``), the client certificate paths."""
    text = set_toml_key(base, None, "device_id", device_id)
    if broker is not None:
        text = set_toml_key(text, "mqtt", "broker", broker)
    if credentials is not None:
        for key, name in (("ca_file", "mqtt-ca.crt"), ("cert_file", "mqtt-client.crt"),
                          ("key_file", "mqtt-client.key")):
            text = set_toml_key(text, "mqtt", key, f"{credentials}/{name}")
    return text


# --------------------------------------------------------------------------- certificates


def device_certificate(pki: Pki, device_id: str) -> certs.CertPair:
    """``device_id``'s valid certificate from the fleet CA, reused when its files are there, else issued."""
    pair = pki.pair(device_id)
    current = pki.active(device_id)
    if current is not None and pair.key.is_file():
        try:
            on_disk = x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number
        except (OSError, ValueError):
            on_disk = None
        if on_disk == current.serial:
            return pair
    try:
        pki.issue(device_id, force=current is not None)
    except PkiError as exc:
        raise DeployError(str(exc)) from exc
    return pair
