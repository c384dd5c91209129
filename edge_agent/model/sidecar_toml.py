"""The suggested sidecar as TOML: a small hand-written TOML writer (tomllib only reads),
the check that the agent accepts what was written, and the atomic write of the file.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from edge_agent.errors import BundleError, ConfigError
from edge_agent.model.inspect import Inspection
from edge_agent.util.fs import atomic_write

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        items = [_toml_value(v) for v in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 100:
            return one_line
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(lines: list[str], header: str, table: dict[str, Any], notes: list[str]) -> None:
    """Scalars of ``table`` under ``[header]``, then its sub-tables as ``[header.key]``."""
    if header:
        lines.extend(["", f"[{header}]"])
    lines.extend(f"# {note}" for note in notes)
    for key, value in table.items():
        if not isinstance(value, dict):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _toml_table(lines, f"{header}.{_toml_key(key)}" if header else _toml_key(key), value, [])


def sidecar_toml(inspection: Inspection, target: Path | None = None) -> str:
    """The suggested sidecar as TOML text (parses back with tomllib); ``target`` is where it goes."""
    sidecar = inspection.sidecar
    fields = dict(sidecar.fields)
    origin = ("the model's TFLite metadata" if sidecar.source == "metadata"
              else "tensor shapes only: check every value")
    lines = [f"# Sidecar for {inspection.path.name}, written by `edge-agent inspect` from {origin}.",
             f"# Run: edge-agent run --bundle {inspection.path} --sidecar {target or 'FILE'}"]
    top = {k: v for k, v in fields.items() if not isinstance(v, dict)}
    labels = top.pop("labels", None)
    _toml_table(lines, "", top, sidecar.notes.get("", []))
    if labels is not None:
        lines.append(f"labels = {_toml_value(labels)}")
    else:
        classes = _class_count(inspection)
        lines.append(f'# labels = ["first", "second"]  # one per class{f" ({classes})" if classes else ""}, '
                     'or labels_file = "labels.txt" (relative to this file)')
    for key, value in fields.items():
        if isinstance(value, dict):
            _toml_table(lines, _toml_key(key), value, sidecar.notes.get(key, []))
    if "output" not in fields:
        lines.extend(["", "[output]", "# score_threshold = 0.5"])
    return "\n".join(lines) + "\n"


def _class_count(inspection: Inspection) -> int:
    if inspection.guess.task != "classify" or not inspection.outputs:
        return 0
    shape = [d for d in inspection.outputs[0].shape if d != 1]
    return shape[-1] if shape else 0


def check_sidecar(text: str, inspection: Inspection) -> str | None:
    """Why the sidecar would not run as written (None when the agent accepts it)."""
    from edge_agent.model.loader import sidecar_manifest

    fields = tomllib.loads(text)  # a failure here is a bug in the writer: let it show
    try:
        sidecar_manifest(fields, inspection.data, inspection.inputs, inspection.outputs, inspection.path,
                         inspection.path.stem, source="the written sidecar")
    except BundleError as exc:
        return str(exc)
    return None


def check_target(target: Path, force: bool) -> None:
    """Refuse a --write-sidecar target before any work: not *.toml, or existing without --force."""
    if target.suffix != ".toml":
        raise ConfigError(f"--write-sidecar writes TOML: name the file *.toml, not {target.name}")
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; use --force to overwrite it")


def write_sidecar(target: Path, text: str, force: bool) -> None:
    """Write the sidecar atomically (see :func:`check_target` for what is refused)."""
    check_target(target, force)
    try:
        atomic_write(target, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
