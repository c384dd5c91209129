"""A bounds-checked reader of FlatBuffers (the ``.tflite`` file and its metadata are two).

The file is hostile input: every offset and length is checked against the buffer, the
work spent on shared (DAG) sub-tables is capped, and any problem is one BundleError.
"""

from __future__ import annotations

import struct
from typing import Any, NoReturn

from edge_agent.errors import BundleError

# Element reads allowed beyond one per byte of input: shared sub-tables (legal in a
# FlatBuffer) could otherwise make a small file cost quadratic work.
_BASE_BUDGET = 100_000

U8 = struct.Struct("<B")
I8 = struct.Struct("<b")
U16 = struct.Struct("<H")
I32 = struct.Struct("<i")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
F32 = struct.Struct("<f")


class Buffer:
    """Bounds-checked FlatBuffer access; every problem raises BundleError naming ``what``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.size = len(data)
        self.what = what
        self.budget = self.size + _BASE_BUDGET

    def fail(self, problem: str) -> NoReturn:
        raise BundleError(f"{self.what} is malformed: {problem}")

    def unpack(self, fmt: struct.Struct, pos: int) -> Any:
        if pos < 0 or pos + fmt.size > self.size:
            self.fail(f"offset {pos} is outside the {self.size}-byte buffer")
        return fmt.unpack_from(self.data, pos)[0]

    def spend(self, count: int) -> None:
        self.budget -= count
        if self.budget < 0:
            self.fail("too many elements (shared sub-tables?)")

    def deref(self, pos: int) -> int:
        """Follow the unsigned offset stored at ``pos``."""
        return pos + int(self.unpack(U32, pos))

    def table(self, pos: int) -> Table:
        vtable = pos - int(self.unpack(I32, pos))
        vtable_size = int(self.unpack(U16, vtable))
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > self.size:
            self.fail(f"bad vtable at offset {vtable}")
        self.spend(1)
        return Table(self, pos, vtable, vtable_size)

    def root(self, identifier: bytes) -> Table:
        if self.size < 8 or self.data[4:8] != identifier:
            raise BundleError(f"{self.what} is not a FlatBuffer with identifier {identifier.decode()}")
        return self.table(self.deref(0))


class Table:
    """One FlatBuffer table; fields are read by slot number (declaration order in the .fbs)."""

    def __init__(self, buf: Buffer, pos: int, vtable: int, vtable_size: int) -> None:
        self.buf, self.pos, self.vtable, self.vtable_size = buf, pos, vtable, vtable_size

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry + 2 > self.vtable_size:
            return None
        offset = int(self.buf.unpack(U16, self.vtable + entry))
        return self.pos + offset if offset else None

    def scalar(self, slot: int, fmt: struct.Struct, default: int = 0) -> int:
        pos = self._field(slot)
        return default if pos is None else int(self.buf.unpack(fmt, pos))

    def f32(self, slot: int, default: float = 0.0) -> float:
        pos = self._field(slot)
        return default if pos is None else float(self.buf.unpack(F32, pos))

    def table(self, slot: int) -> Table | None:
        pos = self._field(slot)
        return None if pos is None else self.buf.table(self.buf.deref(pos))

    def _vector(self, slot: int, element_size: int) -> tuple[int, int]:
        """(position of the first element, length); (0, 0) when the field is absent."""
        pos = self._field(slot)
        if pos is None:
            return 0, 0
        start = self.buf.deref(pos)
        length = int(self.buf.unpack(U32, start))
        if start + 4 + length * element_size > self.buf.size:
            self.buf.fail(f"vector of {length} elements at offset {start} runs past the end")
        return start + 4, length

    def string(self, slot: int) -> str:
        start, length = self._vector(slot, 1)
        try:
            return self.buf.data[start:start + length].decode("utf-8")
        except UnicodeDecodeError:
            self.buf.fail(f"string at offset {start} is not UTF-8")

    def blob(self, slot: int) -> bytes:
        start, length = self._vector(slot, 1)
        return self.buf.data[start:start + length]

    def numbers(self, slot: int, fmt: struct.Struct) -> list[Any]:
        start, length = self._vector(slot, fmt.size)
        self.buf.spend(length)
        return [fmt.unpack_from(self.buf.data, start + i * fmt.size)[0] for i in range(length)]

    def tables(self, slot: int) -> list[Table]:
        start, length = self._vector(slot, 4)
        self.buf.spend(length)
        return [self.buf.table(self.buf.deref(start + 4 * i)) for i in range(length)]

    def strings(self, slot: int) -> list[str]:
        start, length = self._vector(slot, 4)
        self.buf.spend(length)
        return [string_at(self.buf, self.buf.deref(start + 4 * i)) for i in range(length)]

    def union(self, slot: int) -> tuple[int, Table | None]:
        """A union takes two slots: its type (ubyte) then the value (a table)."""
        kind = self.scalar(slot, U8)
        return kind, (self.table(slot + 1) if kind else None)


def string_at(buf: Buffer, start: int) -> str:
    length = int(buf.unpack(U32, start))
    if start + 4 + length > buf.size:
        buf.fail(f"string at offset {start} runs past the end")
    try:
        return buf.data[start + 4:start + 4 + length].decode("utf-8")
    except UnicodeDecodeError:
        buf.fail(f"string at offset {start} is not UTF-8")
