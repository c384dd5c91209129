"""A device's JSON answers, read as hostile input: depth-limited, schema-checked, printable.

``edge-agent install-model/rollback/models --json`` print one JSON object; a device may send
anything instead. :func:`parse_answer` refuses nesting past :data:`MAX_DEPTH` before
``json.loads`` sees it and checks the type and length of every field ``edge-deploy`` uses;
:func:`printable` escapes what could drive a terminal (control characters, ANSI sequences).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from edge_agent.errors import EdgeError
from edge_agent.schema import Field, Schema, ValidationError
from edge_agent.util.fs import SHA256_HEX_RE

MAX_DEPTH = 16  # the agent's answers nest 3 deep
MAX_PRINTED = 1000  # characters of one result line (a device string, or a long ssh-keygen hint)

_SIGNIFICANT = re.compile(r'[][{}"\\]')
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # as edge_agent.model.manifest.Manifest.name
_SHA256 = SHA256_HEX_RE.pattern


class AnswerError(EdgeError):
    """A device's answer is not what ``edge-agent … --json`` prints."""


class _Answer(Schema):
    """Only the fields edge-deploy reads are checked (strictly typed, bounded); others are ignored."""

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in data.items() if key in cls.model_fields}


class ModelAnswer(_Answer):
    """A model as ``InstalledModel.describe()`` gives it."""

    name: str = Field(max_length=128, pattern=_NAME)
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=_SHA256)
    bundle_sha256: str | None = Field(None, pattern=_SHA256)

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.sha256[:12]})"


class ChangeAnswer(_Answer):
    """``install-model --json`` and ``rollback --json``."""

    ok: bool
    status: str = Field("installed", max_length=32)
    step: str = Field("", max_length=32)
    error: str = Field("", max_length=4096)
    active: ModelAnswer | None = None
    previous: ModelAnswer | None = None


class StatusAnswer(_Answer):
    """``models --json``."""

    active: ModelAnswer | None = None
    previous: ModelAnswer | None = None
    probation: dict[str, Any] | None = None


_A = TypeVar("_A", bound=_Answer)


def describe_model(model: ModelAnswer | None) -> str:
    return model.describe() if model else "none"


def parse_answer(text: str, schema: type[_A]) -> tuple[_A, dict[str, Any]] | None:
    """The last JSON object line of ``text``, checked against ``schema`` and as sent; None if there is none.

    Raises:
        AnswerError: the object nests too deep or does not fit ``schema`` (one line).
    """
    value = _last_object(text)
    if value is None:
        return None
    try:
        return schema.model_validate(value), value
    except ValidationError as exc:
        raise AnswerError(f"invalid answer from the device: {exc}") from exc


def _last_object(text: str) -> dict[str, Any] | None:
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        if json_depth(line, MAX_DEPTH) > MAX_DEPTH:
            raise AnswerError(f"invalid answer from the device: JSON nested more than {MAX_DEPTH} deep")
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def json_depth(text: str, limit: int) -> int:
    """How deep ``[`` and ``{`` nest in ``text`` outside strings, counted up to ``limit + 1``.

    One linear pass without recursion, so it is safe on what ``json.loads`` would recurse into.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position a backslash escapes
    for match in _SIGNIFICANT.finditer(text):
        char, pos = match.group(), match.start()
        if in_string:
            if pos == escaped_at:
                continue
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif char in "]}":
            depth -= 1
    return deepest


def printable(text: str, limit: int = MAX_PRINTED) -> str:
    """``text`` safe for a terminal on one line: control and format characters escaped, at most ``limit``.

    Escaping ESC alone defuses every ANSI/OSC sequence; C1 controls, bidi overrides and
    line separators go too (``\\x1b``, ``\\u202e``).
    """
    if len(text) > limit:
        text = text[:limit] + "…"
    return "".join(_escape(char) for char in text)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char.isprintable():  # False for every control, format, separator (but space) and unassigned one
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
