"""Strict typed records: the validation layer of the manifest and the agent configuration.

A record is a dataclass declared by subclassing :class:`Schema`; fields take
constraints through :func:`Field`. Validation is strict in the way the
contracts need: unknown keys are errors (``extra="forbid"``), required keys
must be present, values must have the declared type (an integral float is
accepted for an ``int``, an ``int`` for a ``float``, a string for a ``Path``;
nothing else is coerced), and every problem is reported with its location::

    class Section(Schema):
        threads: int = Field(1, ge=1, le=64)

    Section.model_validate({"threads": 0})   # ValidationError: threads: must be >= 1

The method names follow pydantic's (``model_validate``, ``model_dump``,
``model_copy``, ``ValidationError.errors()``) so the code reads the same. Why
not pydantic itself: on the device it costs about 19 MB of resident memory
(``pydantic_core``, the plugin scan through ``importlib.metadata``, and schema
building for every record) — a quarter of the agent's 80 MB budget — for a few
dozen fields that this module validates in under 300 lines.

Records may define ``_prepare(cls, data)`` (a classmethod that rewrites the raw
mapping before validation) and ``_check(self)`` (cross-field rules after it;
raise ``ValueError`` for the whole record or :class:`FieldError` for one field).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, Union, dataclass_transform, get_args, get_origin

from edge_agent.util import strict_json

__all__ = ["Field", "FieldError", "Schema", "ValidationError"]

Loc = tuple[str | int, ...]


class ValidationError(ValueError):
    """One or more problems with a value, each with its location (``loc``), ``type``, ``msg`` and ``input``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self._errors = errors or [{"loc": (), "type": "value_error", "msg": "invalid value", "input": None}]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        super().__init__(f"{self.where('value')}: {self.first['msg']}{more}")

    @property
    def first(self) -> dict[str, Any]:
        """The first problem (the one a one-line error message shows)."""
        return self._errors[0]

    def where(self, default: str = "") -> str:
        """The first problem's location, dotted (``model.threads``), or ``default`` for the whole value."""
        return ".".join(str(p) for p in self.first["loc"]) or default

    def errors(self) -> list[dict[str, Any]]:
        return list(self._errors)

    def error_count(self) -> int:
        return len(self._errors)


class FieldError(ValueError):
    """Raised by ``_check`` to blame one field of the record."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def Field(  # noqa: N802 - named like the field specifier it replaces
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    description: str = "",
) -> Any:
    """A record field with a default and constraints (bounds on numbers, lengths, a regex on strings)."""
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_length": min_length, "max_length": max_length,
              "pattern": re.compile(pattern) if pattern is not None else None}
    metadata: dict[str, Any] = {key: value for key, value in limits.items() if value is not None}
    metadata["description"] = description
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _error(errors: list[dict[str, Any]], loc: Loc, kind: str, msg: str, value: Any) -> None:
    errors.append({"loc": loc, "type": kind, "msg": msg, "input": value})


def _type_name(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


_BOUNDS: tuple[tuple[str, str, Callable[[Any, Any], bool]], ...] = (
    ("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b),
)


def _constrain(value: Any, meta: Mapping[str, Any], loc: Loc, errors: list[dict[str, Any]]) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, symbol, ok in _BOUNDS:
            if key in meta and not ok(value, meta[key]):
                _error(errors, loc, f"{key}_bound", f"must be {symbol} {meta[key]}", value)
                return
    if isinstance(value, str | list | dict):
        unit = "characters" if isinstance(value, str) else "items"
        if "min_length" in meta and len(value) < meta["min_length"]:
            _error(errors, loc, "too_short", f"needs at least {meta['min_length']} {unit}", value)
        elif "max_length" in meta and len(value) > meta["max_length"]:
            _error(errors, loc, "too_long", f"allows at most {meta['max_length']} {unit}", value)
    if isinstance(value, str) and "pattern" in meta and not meta["pattern"].search(value):
        _error(errors, loc, "pattern_mismatch", f"must match {meta['pattern'].pattern}", value)


def _convert(tp: Any, value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    """``value`` as type ``tp``; problems are appended to ``errors`` (and ``value`` is returned as is)."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(get_args(tp), value, loc, errors)
    if origin is Literal:
        choices = get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        shown = ", ".join(repr(c) for c in choices)
        _error(errors, loc, "literal_error", f"must be one of {shown}", value)
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            _error(errors, loc, "list_type", f"must be an array, got {_type_name(value)}", value)
            return value
        (item,) = get_args(tp)
        return [_convert(item, v, (*loc, i), errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            _error(errors, loc, "dict_type", f"must be a table, got {_type_name(value)}", value)
            return value
        key_tp, value_tp = get_args(tp)
        return {_convert(key_tp, k, (*loc, str(k)), errors): _convert(value_tp, v, (*loc, str(k)), errors)
                for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Schema):
        return tp._build(value, loc, errors)
    return _convert_scalar(tp, value, loc, errors)


def _convert_union(members: tuple[Any, ...], value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if value is None:
        if type(None) in members:
            return None
        _error(errors, loc, "missing", "is required", value)
        return value
    options = [m for m in members if m is not type(None)]
    if len(options) == 1:
        return _convert(options[0], value, loc, errors)
    records = [m for m in options if isinstance(m, type) and issubclass(m, Schema)]
    if len(records) == len(options):  # tagged union: the `kind` field names the record
        for record in records:
            if isinstance(value, record):
                return value
        tags = {get_args(record._hints()["kind"])[0]: record for record in records}
        kind = value.get("kind") if isinstance(value, Mapping) else None
        if kind not in tags:
            shown = ", ".join(repr(t) for t in tags)
            _error(errors, (*loc, "kind"), "union_tag_invalid", f"must be one of {shown}", kind)
            return value
        return tags[kind]._build(value, loc, errors)
    for option in options:
        trial: list[dict[str, Any]] = []
        result = _convert(option, value, loc, trial)
        if not trial:
            return result
    _error(errors, loc, "union_type", f"has the wrong type ({_type_name(value)})", value)
    return value


def _convert_scalar(tp: Any, value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        _error(errors, loc, "bool_type", f"must be true or false, got {_type_name(value)}", value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        _error(errors, loc, "int_type", f"must be an integer, got {_type_name(value)}", value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        _error(errors, loc, "float_type", f"must be a number, got {_type_name(value)}", value)
    elif tp is str:
        if isinstance(value, str):
            return value
        _error(errors, loc, "string_type", f"must be a string, got {_type_name(value)}", value)
    elif tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        _error(errors, loc, "path_type", f"must be a path string, got {_type_name(value)}", value)
    else:  # pragma: no cover - a declaration error, not an input error
        raise TypeError(f"unsupported field type {tp!r}")
    return value


def _dump(value: Any, json_mode: bool, exclude_none: bool) -> Any:
    if isinstance(value, Schema):
        return value.model_dump(mode="json" if json_mode else "python", exclude_none=exclude_none)
    if isinstance(value, list | tuple):
        return [_dump(v, json_mode, exclude_none) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v, json_mode, exclude_none) for k, v in value.items()}
    if json_mode and isinstance(value, Path):
        return str(value)
    return value


@dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
class Schema:
    """Base of every record; subclasses become keyword-only dataclasses validated on construction."""

    model_fields: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, *, frozen: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(cls, frozen=frozen, kw_only=True)
        cls.model_fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        hints = cls.__dict__.get("_resolved_hints")
        if hints is None:
            hints = typing.get_type_hints(cls)
            cls._resolved_hints = hints  # type: ignore[attr-defined]
        return hints

    def __post_init__(self) -> None:
        errors: list[dict[str, Any]] = []
        hints = self._hints()
        for name, spec in self.model_fields.items():
            value = getattr(self, name)
            field_errors: list[dict[str, Any]] = []
            converted = _convert(hints[name], value, (name,), field_errors)
            if not field_errors and converted is not None:
                _constrain(converted, spec.metadata, (name,), field_errors)
            errors.extend(field_errors)
            object.__setattr__(self, name, converted)
        if not errors:
            try:
                self._check()
            except FieldError as exc:
                _error(errors, (exc.field,), "value_error", str(exc), getattr(self, exc.field, None))
            except ValueError as exc:
                _error(errors, (), "value_error", str(exc), None)
        if errors:
            raise ValidationError(errors)

    def _check(self) -> None:
        """Cross-field rules; override to add some."""

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rewrite the raw mapping before validation; override when a field accepts a legacy form."""
        return data

    @classmethod
    def _build(cls, data: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            _error(errors, loc, "model_type", f"must be a table, got {_type_name(data)}", data)
            return data
        data = cls._prepare(dict(data))
        problems: list[dict[str, Any]] = []
        for key in data:
            if key not in cls.model_fields or not cls.model_fields[key].init:
                _error(problems, (*loc, key), "extra_forbidden", "unknown field", data[key])
        for name, spec in cls.model_fields.items():
            required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            if required and name not in data:
                _error(problems, (*loc, name), "missing", "is required", None)
        if problems:
            errors.extend(problems)
            return data
        try:
            return cls(**data)
        except ValidationError as exc:
            errors.extend({**e, "loc": (*loc, *e["loc"])} for e in exc.errors())
            return data

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """A record from a mapping (or the record itself); raises :class:`ValidationError`."""
        errors: list[dict[str, Any]] = []
        result = cls._build(data, (), errors)
        if errors:
            raise ValidationError(errors)
        return typing.cast(Self, result)

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        """A record from strict JSON text (:func:`edge_agent.util.strict_json.loads`: no duplicate
        keys, NaN, infinity or deep nesting); invalid JSON is a :class:`ValidationError` too."""
        try:
            data = strict_json.loads(text)
        except strict_json.StrictJSONError as exc:
            raise ValidationError([{"loc": (), "type": "json_invalid", "msg": f"invalid JSON: {exc}",
                                    "input": None}]) from exc
        return cls.model_validate(data)

    def model_dump(self, *, mode: Literal["python", "json"] = "python", exclude_none: bool = False,
                   exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The record as plain data (nested records as dicts; paths as strings in ``json`` mode)."""
        out: dict[str, Any] = {}
        for name in self.model_fields:
            value = getattr(self, name)
            if name in exclude or (exclude_none and value is None):
                continue
            out[name] = _dump(value, mode == "json", exclude_none)
        return out

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with some fields replaced; the copy is validated like a new record."""
        copy: Self = dataclasses.replace(typing.cast(Any, self), **dict(update or {}))
        return copy


def validate_as(tp: Any, value: Any) -> Any:
    """Validate ``value`` against a field type (e.g. a union of records); raises :class:`ValidationError`."""
    errors: list[dict[str, Any]] = []
    result = _convert(tp, value, (), errors)
    if errors:
        raise ValidationError(errors)
    return result
