"""Strict JSON for files and messages from outside: no duplicate keys, no NaN or infinity, bounded
nesting, every failure a :class:`StrictJSONError` (never a ``RecursionError``)."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """The text is not JSON this project accepts; the message says why in one line."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity without passing parse_constant
        raise StrictJSONError(f"{text[:40]} is out of range")
    return value


def depth(value: Any, limit: int) -> int:
    """Nesting depth of lists and objects, computed iteratively; stops counting past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` (bytes must be UTF-8).

    Raises:
        StrictJSONError: not UTF-8, not JSON, a duplicate key, NaN/Infinity or a number out of
            range, or nested deeper than ``max_depth``.
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except StrictJSONError:
        raise
    except RecursionError as exc:
        raise StrictJSONError(f"nested deeper than {max_depth} levels") from exc
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text (byte {exc.start})") from exc
    except ValueError as exc:
        raise StrictJSONError(str(exc)) from exc
    if depth(data, max_depth) > max_depth:
        raise StrictJSONError(f"nested deeper than {max_depth} levels")
    return data
