"""Read a ``.tflite`` file without TensorFlow: tensors, operators, metadata entries and the
TFLite Model Metadata (``TFLITE_METADATA``) with the files packed next to it.

A ``.tflite`` is a FlatBuffer (schema ``tflite/schema.fbs``, identifier ``TFL3``). The
TFLite Model Metadata is a second FlatBuffer (``metadata_schema.fbs`` of tflite-support,
identifier ``M001``) stored in one of the model's buffers and named by a
``Model.metadata`` entry; its associated files (labels, vocabularies) are a zip archive
appended to the model bytes.

The file is hostile input: the small reader below checks every offset and length
against the buffer, caps the work spent on shared (DAG) structures, and reports any
problem as one :class:`~edge_agent.errors.BundleError`. Nothing here imports the 20k-line
generated schema module except :func:`op_name`, lazily, to name builtin operators.

:func:`metadata_sidecar` turns the metadata into the same fields a sidecar file gives
(see :mod:`edge_agent.model.loader`), so a model with metadata runs without a sidecar.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NoReturn

from edge_agent.errors import BundleError
from edge_agent.model.manifest import TensorSpec
from edge_agent.schema import ValidationError

MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
METADATA_NAME = "TFLITE_METADATA"
MAX_ASSOCIATED_FILE_BYTES = 16 * 1024 * 1024
MAX_LABELS = 100_000
# Element reads allowed beyond one per byte of input: shared sub-tables (legal in a
# FlatBuffer) could otherwise make a small file cost quadratic work.
_BASE_BUDGET = 100_000

# TensorType codes (tflite/schema.fbs) and the numpy names the agent uses.
TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource",
    14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16",
}
_FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16"})
_INTEGER_ACTIVATIONS = frozenset({"int8", "uint8", "int16", "int4"})
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
_CUSTOM = 32  # BuiltinOperator.CUSTOM

# Enums of metadata_schema.fbs.
ASSOCIATED_FILE_TYPES = {
    0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS",
    4: "TENSOR_AXIS_SCORE_CALIBRATION", 5: "VOCABULARY", 6: "SCANN_INDEX_FILE",
}
TENSOR_AXIS_LABELS = 2
TENSOR_VALUE_LABELS = 3
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
BOUNDING_BOX_TYPES = {0: "UNKNOWN", 1: "BOUNDARIES", 2: "UPPER_LEFT", 3: "CENTER"}
COORDINATE_TYPES = {0: "RATIO", 1: "PIXEL"}
# ContentProperties union: 0 is NONE.
_FEATURE, _IMAGE, _BOUNDING_BOX, _AUDIO = 1, 2, 3, 4
# ProcessUnitOptions union.
PROCESS_UNITS = {
    1: "NormalizationOptions", 2: "ScoreCalibrationOptions", 3: "ScoreThresholdingOptions",
    4: "BertTokenizerOptions", 5: "SentencePieceTokenizerOptions", 6: "RegexTokenizerOptions",
}
_NORMALIZATION, _SCORE_THRESHOLDING = 1, 3

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F32 = struct.Struct("<f")


# --------------------------------------------------------------------------- FlatBuffer reader


class _Buffer:
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
        return pos + int(self.unpack(_U32, pos))

    def table(self, pos: int) -> _Table:
        vtable = pos - int(self.unpack(_I32, pos))
        vtable_size = int(self.unpack(_U16, vtable))
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > self.size:
            self.fail(f"bad vtable at offset {vtable}")
        self.spend(1)
        return _Table(self, pos, vtable, vtable_size)

    def root(self, identifier: bytes) -> _Table:
        if self.size < 8 or self.data[4:8] != identifier:
            raise BundleError(f"{self.what} is not a FlatBuffer with identifier {identifier.decode()}")
        return self.table(self.deref(0))


class _Table:
    """One FlatBuffer table; fields are read by slot number (declaration order in the .fbs)."""

    def __init__(self, buf: _Buffer, pos: int, vtable: int, vtable_size: int) -> None:
        self.buf, self.pos, self.vtable, self.vtable_size = buf, pos, vtable, vtable_size

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry + 2 > self.vtable_size:
            return None
        offset = int(self.buf.unpack(_U16, self.vtable + entry))
        return self.pos + offset if offset else None

    def scalar(self, slot: int, fmt: struct.Struct, default: int = 0) -> int:
        pos = self._field(slot)
        return default if pos is None else int(self.buf.unpack(fmt, pos))

    def f32(self, slot: int, default: float = 0.0) -> float:
        pos = self._field(slot)
        return default if pos is None else float(self.buf.unpack(_F32, pos))

    def table(self, slot: int) -> _Table | None:
        pos = self._field(slot)
        return None if pos is None else self.buf.table(self.buf.deref(pos))

    def _vector(self, slot: int, element_size: int) -> tuple[int, int]:
        """(position of the first element, length); (0, 0) when the field is absent."""
        pos = self._field(slot)
        if pos is None:
            return 0, 0
        start = self.buf.deref(pos)
        length = int(self.buf.unpack(_U32, start))
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

    def tables(self, slot: int) -> list[_Table]:
        start, length = self._vector(slot, 4)
        self.buf.spend(length)
        return [self.buf.table(self.buf.deref(start + 4 * i)) for i in range(length)]

    def strings(self, slot: int) -> list[str]:
        start, length = self._vector(slot, 4)
        self.buf.spend(length)
        return [_string_at(self.buf, self.buf.deref(start + 4 * i)) for i in range(length)]

    def union(self, slot: int) -> tuple[int, _Table | None]:
        """A union takes two slots: its type (ubyte) then the value (a table)."""
        kind = self.scalar(slot, _U8)
        return kind, (self.table(slot + 1) if kind else None)


def _string_at(buf: _Buffer, start: int) -> str:
    length = int(buf.unpack(_U32, start))
    if start + 4 + length > buf.size:
        buf.fail(f"string at offset {start} runs past the end")
    try:
        return buf.data[start + 4:start + 4 + length].decode("utf-8")
    except UnicodeDecodeError:
        buf.fail(f"string at offset {start} is not UTF-8")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class TensorInfo:
    """An input or output tensor as stored in the file (any dtype, unlike TensorSpec)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    def spec(self) -> TensorSpec:
        """The agent's TensorSpec; BundleError for a dtype the agent cannot feed or read."""
        try:
            return TensorSpec(name=self.name, shape=list(self.shape), dtype=self.dtype,  # type: ignore[arg-type]
                              scale=self.scale, zero_point=self.zero_point)
        except ValidationError as exc:
            raise BundleError(f"tensor {self.name!r} has dtype {self.dtype}, which the agent does not "
                              "support (int8, uint8, int16, int32, float32)") from exc


@dataclass(frozen=True)
class TfliteModel:
    """What :func:`read_model` reads: schema version, subgraph 0's inputs/outputs, metadata."""

    schema_version: int
    description: str
    subgraph_count: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, bytes] = field(default_factory=dict)  # Model.metadata entries by name

    def input_specs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.inputs]

    def output_specs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.outputs]


@dataclass(frozen=True)
class OpSummary:
    """Operators of subgraph 0 by name, and those left computing in float."""

    counts: dict[str, int]  # op name -> count, in order of first use
    float_ops: dict[str, int]
    integer_ops: int  # ops whose tensors are all integer (int8/int16 activations, int32 biases…)
    quantized: bool  # some op computes on int8/uint8/int16 activations

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _open(data: bytes, what: str) -> tuple[_Buffer, _Table]:
    buf = _Buffer(bytes(data), what)
    if buf.size < 8 or buf.data[4:8] != MODEL_IDENTIFIER:
        raise BundleError(f"{what} is not a TFLite model (no {MODEL_IDENTIFIER.decode()} identifier)")
    return buf, buf.root(MODEL_IDENTIFIER)


def _subgraph0(buf: _Buffer, model: _Table) -> tuple[_Table, int]:
    subgraphs = model.tables(2)
    if not subgraphs:
        buf.fail("the model has no subgraph")
    return subgraphs[0], len(subgraphs)


def _tensor_info(tensor: _Table) -> TensorInfo:
    type_code = tensor.scalar(1, _I8)
    scale, zero_point = 0.0, 0
    quantization = tensor.table(4)
    if quantization is not None:
        scales = quantization.numbers(2, _F32)
        zero_points = quantization.numbers(3, _I64)
        # The interpreter reports per-tensor parameters only (per-channel shows as 0, 0).
        if len(scales) == 1:
            scale = float(scales[0])
            zero_point = int(zero_points[0]) if zero_points else 0
    return TensorInfo(
        name=tensor.string(3),
        dtype=TENSOR_TYPES.get(type_code, f"type{type_code}"),
        shape=tuple(int(d) for d in tensor.numbers(0, _I32)),
        scale=scale,
        zero_point=zero_point,
    )


def _buffer_bytes(buf: _Buffer, buffers: list[_Table], index: int) -> bytes:
    if not 0 <= index < len(buffers):
        buf.fail(f"metadata names buffer {index} of {len(buffers)}")
    entry = buffers[index]
    offset, size = entry.scalar(1, _U64), entry.scalar(2, _U64)
    if offset > 1:  # data stored after the FlatBuffer (models over 2 GB); offset from the file start
        if offset + size > buf.size:
            buf.fail(f"buffer {index} ({size} bytes at {offset}) runs past the end")
        return buf.data[offset:offset + size]
    return entry.blob(0)


def read_model(data: bytes, what: str = "model") -> TfliteModel:
    """Read subgraph 0's inputs/outputs and the metadata entries of a ``.tflite``.

    Raises:
        BundleError: not a TFLite FlatBuffer, or a malformed one.
    """
    buf, model = _open(data, what)
    subgraph, count = _subgraph0(buf, model)
    tensors = subgraph.tables(0)

    def io_tensors(slot: int) -> tuple[TensorInfo, ...]:
        out = []
        for index in subgraph.numbers(slot, _I32):
            if not 0 <= index < len(tensors):
                buf.fail(f"subgraph 0 names tensor {index} of {len(tensors)}")
            out.append(_tensor_info(tensors[index]))
        return tuple(out)

    buffers = model.tables(4)
    metadata: dict[str, bytes] = {}
    for entry in model.tables(6):
        metadata[entry.string(0)] = _buffer_bytes(buf, buffers, entry.scalar(1, _U32))
    return TfliteModel(
        schema_version=model.scalar(0, _U32),
        description=model.string(3),
        subgraph_count=count,
        inputs=io_tensors(1),
        outputs=io_tensors(2),
        metadata=metadata,
    )


@functools.cache
def _builtin_names() -> dict[int, str]:
    try:  # the generated schema is 20k lines: only imported when a name is wanted
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return {}
    return {value: name for name, value in vars(schema.BuiltinOperator).items()
            if not name.startswith("_") and isinstance(value, int)}


def op_name(code: int) -> str:
    """Name of a builtin operator code (``BUILTIN_<code>`` when the schema module is missing)."""
    return _builtin_names().get(code, f"BUILTIN_{code}")


def read_operators(data: bytes, what: str = "model") -> OpSummary:
    """Count subgraph 0's operators by name and find the ones left computing in float.

    An op is integer when none of its tensors is float; QUANTIZE at a model input and
    DEQUANTIZE at a model output are the expected float boundary and count as integer
    (the same rule as the converter's report).

    Raises:
        BundleError: not a TFLite FlatBuffer, or a malformed one.
    """
    buf, model = _open(data, what)
    subgraph, _ = _subgraph0(buf, model)
    names = []
    for code in model.tables(1):
        custom = code.string(1)
        # builtin_code (int32) replaced deprecated_builtin_code (byte) at 127; writers fill both.
        builtin = max(code.scalar(0, _I8), code.scalar(3, _I32))
        names.append(custom if custom and builtin == _CUSTOM else op_name(builtin))
    types = [TENSOR_TYPES.get(t.scalar(1, _I8), "unknown") for t in subgraph.tables(0)]
    model_inputs, model_outputs = set(subgraph.numbers(1, _I32)), set(subgraph.numbers(2, _I32))
    counts: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    integer_ops, quantized = 0, False
    for op in subgraph.tables(3):
        index = op.scalar(0, _U32)
        if index >= len(names):
            buf.fail(f"operator uses opcode {index} of {len(names)}")
        name = names[index]
        ins = [i for i in op.numbers(1, _I32) if i >= 0]  # -1 marks an omitted optional input
        outs = [i for i in op.numbers(2, _I32) if i >= 0]
        if any(i >= len(types) for i in (*ins, *outs)):
            buf.fail(f"operator {name} names a tensor beyond the {len(types)} of subgraph 0")
        dtypes = {types[i] for i in (*ins, *outs)}
        counts[name] += 1
        if name not in _BOUNDARY_OPS and dtypes & _INTEGER_ACTIVATIONS:
            quantized = True
        boundary = (name == "QUANTIZE" and set(ins) <= model_inputs) or (
            name == "DEQUANTIZE" and set(outs) <= model_outputs)
        if dtypes & _FLOAT_TYPES and not boundary:
            float_ops[name] += 1
        else:
            integer_ops += 1
    return OpSummary(dict(counts), dict(float_ops), integer_ops, quantized)


# --------------------------------------------------------------------------- TFLite Model Metadata


@dataclass(frozen=True)
class AssociatedFile:
    name: str
    type: str  # TENSOR_AXIS_LABELS, ...
    description: str = ""
    locale: str = ""


@dataclass(frozen=True)
class ImageProperties:
    color_space: str  # UNKNOWN | RGB | GRAYSCALE
    default_size: tuple[int, int] | None = None  # (width, height)


@dataclass(frozen=True)
class AudioProperties:
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class BoundingBoxProperties:
    index: tuple[int, ...]  # positions of left, top, right, bottom (BOUNDARIES) in the last axis
    type: str
    coordinate_type: str  # RATIO | PIXEL


Content = ImageProperties | AudioProperties | BoundingBoxProperties


@dataclass(frozen=True)
class TensorMetadata:
    name: str = ""
    description: str = ""
    content: Content | None = None
    value_range: tuple[int, int] | None = None
    process_units: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # NormalizationOptions: (value - mean) / std
    std: tuple[float, ...] = ()
    score_threshold: float | None = None  # ScoreThresholdingOptions
    stats_min: tuple[float, ...] = ()
    stats_max: tuple[float, ...] = ()
    associated_files: tuple[AssociatedFile, ...] = ()


@dataclass(frozen=True)
class ModelMetadata:
    name: str = ""
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    min_parser_version: str = ""
    inputs: tuple[TensorMetadata, ...] = ()  # of subgraph 0
    outputs: tuple[TensorMetadata, ...] = ()
    associated_files: tuple[AssociatedFile, ...] = ()  # model and subgraph level

    def files(self) -> list[AssociatedFile]:
        """Every associated file, model, subgraph and tensor level."""
        found = list(self.associated_files)
        for tensor in (*self.inputs, *self.outputs):
            found.extend(tensor.associated_files)
        return found


def _associated_files(table: _Table, slot: int) -> tuple[AssociatedFile, ...]:
    return tuple(
        AssociatedFile(name=f.string(0), description=f.string(1),
                       type=ASSOCIATED_FILE_TYPES.get(f.scalar(2, _I8), "UNKNOWN"), locale=f.string(3))
        for f in table.tables(slot)
    )


def _content(table: _Table | None) -> tuple[Content | None, tuple[int, int] | None]:
    if table is None:
        return None, None
    kind, props = table.union(0)  # content_properties: slots 0 (type) and 1 (value)
    content: Content | None = None
    if props is not None and kind == _IMAGE:
        size = props.table(1)
        content = ImageProperties(
            color_space=COLOR_SPACES.get(props.scalar(0, _I8), "UNKNOWN"),
            default_size=(size.scalar(0, _U32), size.scalar(1, _U32)) if size is not None else None,
        )
    elif props is not None and kind == _AUDIO:
        content = AudioProperties(sample_rate=props.scalar(0, _U32), channels=props.scalar(1, _U32))
    elif props is not None and kind == _BOUNDING_BOX:
        content = BoundingBoxProperties(
            index=tuple(int(i) for i in props.numbers(0, _U32)),
            type=BOUNDING_BOX_TYPES.get(props.scalar(1, _I8), "UNKNOWN"),
            coordinate_type=COORDINATE_TYPES.get(props.scalar(2, _I8), "RATIO"),
        )
    value_range = table.table(2)
    return content, (None if value_range is None else (value_range.scalar(0, _I32), value_range.scalar(1, _I32)))


def _tensor_metadata(table: _Table) -> TensorMetadata:
    content, value_range = _content(table.table(3))
    units: list[str] = []
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    threshold: float | None = None
    for unit in table.tables(4):
        kind, options = unit.union(0)
        units.append(PROCESS_UNITS.get(kind, f"unknown({kind})"))
        if options is not None and kind == _NORMALIZATION:
            mean = tuple(float(v) for v in options.numbers(0, _F32))
            std = tuple(float(v) for v in options.numbers(1, _F32))
        elif options is not None and kind == _SCORE_THRESHOLDING:
            threshold = options.f32(0)
    stats = table.table(5)
    return TensorMetadata(
        name=table.string(0),
        description=table.string(1),
        content=content,
        value_range=value_range,
        process_units=tuple(units),
        mean=mean,
        std=std,
        score_threshold=threshold,
        stats_max=tuple(float(v) for v in stats.numbers(0, _F32)) if stats else (),
        stats_min=tuple(float(v) for v in stats.numbers(1, _F32)) if stats else (),
        associated_files=_associated_files(table, 6),
    )


def parse_model_metadata(data: bytes, what: str = "TFLite metadata") -> ModelMetadata:
    """Parse a ``TFLITE_METADATA`` buffer (ModelMetadata, identifier M001).

    Raises:
        BundleError: not a ModelMetadata FlatBuffer, or a malformed one.
    """
    buf = _Buffer(bytes(data), what)
    root = buf.root(METADATA_IDENTIFIER)
    subgraphs = root.tables(3)
    files = list(_associated_files(root, 6))
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    if subgraphs:
        inputs = tuple(_tensor_metadata(t) for t in subgraphs[0].tables(2))
        outputs = tuple(_tensor_metadata(t) for t in subgraphs[0].tables(3))
        files.extend(_associated_files(subgraphs[0], 4))
    return ModelMetadata(
        name=root.string(0),
        description=root.string(1),
        version=root.string(2),
        author=root.string(4),
        license=root.string(5),
        min_parser_version=root.string(7),
        inputs=inputs,
        outputs=outputs,
        associated_files=tuple(files),
    )


def model_metadata(model: TfliteModel, what: str = "model") -> ModelMetadata | None:
    """The model's TFLite Model Metadata, or None when it has none."""
    raw = model.metadata.get(METADATA_NAME)
    return None if raw is None else parse_model_metadata(raw, f"{what}: {METADATA_NAME}")


def associated_file(model_bytes: bytes, name: str, limit: int = MAX_ASSOCIATED_FILE_BYTES,
                    what: str = "model") -> bytes:
    """Read an associated file from the zip archive the metadata populator appends to the model.

    Raises:
        BundleError: no archive, no such member, larger than ``limit``, or a broken archive.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise BundleError(f"{what}: metadata names {name!r} but the file is not packed in "
                                  "the model") from None
            if info.file_size > limit:
                raise BundleError(f"{what}: associated file {name!r} is larger than {limit} bytes")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleError(f"{what}: associated file {name!r} uses an unsupported compression")
            with archive.open(info) as member:
                content = member.read(limit + 1)  # the header's size may lie
    except BundleError:
        raise
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{what}: metadata names {name!r} but the model has no readable packed "
                          f"files ({exc})") from exc
    except (OSError, ValueError, EOFError, NotImplementedError, RuntimeError, OverflowError, struct.error,
            zlib.error) as exc:
        raise BundleError(f"{what}: cannot read associated file {name!r}: {exc}") from exc
    if len(content) > limit:
        raise BundleError(f"{what}: associated file {name!r} is larger than {limit} bytes")
    return content


def label_file(metadata: ModelMetadata) -> AssociatedFile | None:
    """The labels of the outputs: axis labels first (classifiers), then value labels
    (detectors' class tensor); a file without locale is preferred over translations."""
    for kind in ("TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS"):
        files = [f for t in metadata.outputs for f in t.associated_files if f.type == kind]
        if files:
            return next((f for f in files if not f.locale), files[0])
    return None


def metadata_labels(model_bytes: bytes, metadata: ModelMetadata, what: str = "model") -> list[str] | None:
    """The output labels from the packed labels file, or None when the metadata names none."""
    found = label_file(metadata)
    if found is None:
        return None
    raw = associated_file(model_bytes, found.name, what=what)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{what}: labels file {found.name!r} is not UTF-8") from exc
    labels = text.splitlines()
    if len(labels) > MAX_LABELS:
        raise BundleError(f"{what}: labels file {found.name!r} has more than {MAX_LABELS} lines")
    return labels


# --------------------------------------------------------------------------- sidecar from metadata


def _sidecar_name(name: str) -> str | None:
    """A manifest-valid name from free text ("MobileNet V1 (quant)" -> "MobileNet-V1-quant")."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:128]
    return cleaned or None


def _image_size(spec: TensorSpec, props: ImageProperties | None) -> tuple[int, int, int]:
    """(width, height, channels) from an NHWC input shape, else the metadata's default size."""
    shape = list(spec.shape)
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4:
        raise BundleError(f"input {spec.name!r} has shape {spec.shape}; an image input needs [1, H, W, C]")
    _, height, width, channels = shape
    if (width <= 1 or height <= 1) and props is not None and props.default_size is not None:
        width, height = props.default_size
    return int(width), int(height), int(channels)


def image_normalization(spec: TensorSpec, meta: TensorMetadata | None = None) -> tuple[list[float], list[float]]:
    """mean/std for ``(pixel - mean) / std``, before quantisation with the tensor's own parameters.

    A uint8 input takes raw pixels, as the TFLite Task Library feeds it (it ignores
    NormalizationOptions there): mean = zero point and std = 1 / scale make our
    quantisation step give back exactly the pixel value. Float and int8 inputs use the
    metadata's NormalizationOptions, which are in the 0..255 pixel domain.
    """
    if spec.dtype == "uint8" and spec.scale > 0:
        return [float(spec.zero_point)], [float(f"{1.0 / spec.scale:.7g}")]  # 7 digits: still exact per pixel
    meta = meta or TensorMetadata()
    return list(meta.mean or (0.0,)), list(meta.std or (1.0,))


def _image_task(outputs: list[TensorSpec], n_labels: int, what: str) -> tuple[str, dict[str, Any]]:
    """(task, [output] keys) of an image model with metadata.

    Four outputs shaped like boxes, classes, scores and count are the Task Library's SSD
    detector (TFLite_Detection_PostProcess); one output is its classifier unless the shape is
    a YOLO head. Raw boxes and anchors need settings only a sidecar gives.
    """
    from edge_agent.tasks.formats import recognise_outputs

    guess = recognise_outputs(outputs, n_labels)
    if guess.detection_format in ("tflite_postprocess", "yolo"):
        return "detect", dict(guess.output)
    if len(outputs) == 1:
        return "classify", {}
    raise BundleError(
        f"{what}: the TFLite metadata describes an image model whose outputs look like {guess.summary}; "
        "write a sidecar (`edge-agent inspect MODEL --write-sidecar FILE` starts one)"
    )


def metadata_sidecar(model_bytes: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     what: str = "model") -> dict[str, Any] | None:
    """Sidecar fields (name, version, task, labels, preprocess, output) from the model's TFLite
    Model Metadata; None when the model has no metadata.

    The task follows the Task Library's model kinds: an image input with one output is
    ``classify``; with four outputs (boxes, classes, scores, count of
    ``TFLite_Detection_PostProcess``) it is ``detect`` with ``tflite_postprocess``; an audio
    input is ``audio_classify`` on the raw waveform.

    Raises:
        BundleError: malformed model or metadata, a missing labels file, or metadata that
            does not say how to run the model.
    """
    metadata = model_metadata(read_model(model_bytes, what), what)
    if metadata is None:
        return None
    if not inputs or not outputs:
        raise BundleError(f"{what}: the model has no input or no output tensor")
    sidecar: dict[str, Any] = {}
    name = _sidecar_name(metadata.name)
    if name:
        sidecar["name"] = name
    if metadata.version:
        sidecar["version"] = metadata.version[:64]
    labels = metadata_labels(model_bytes, metadata, what)
    in_meta = metadata.inputs[0] if metadata.inputs else TensorMetadata()
    content = in_meta.content
    spec = inputs[0]
    output: dict[str, Any] = {}
    thresholds = [t.score_threshold for t in metadata.outputs if t.score_threshold is not None]
    if thresholds and 0.0 <= thresholds[0] <= 1.0:
        output["score_threshold"] = thresholds[0]
    if isinstance(content, AudioProperties):
        samples = math.prod(d for d in spec.shape if d > 0)
        rate = content.sample_rate or 16000
        channels = max(1, content.channels)
        preprocess: dict[str, Any] = {
            "kind": "audio", "feature": "waveform", "sample_rate": rate,
            "window_s": samples / channels / rate, "hop_s": min(0.25, samples / channels / rate),
        }
        if rate / 2 < 7600:  # the default log-mel band would exceed Nyquist (unused for waveform)
            preprocess["fmax"] = rate / 2
        task = "audio_classify"
    elif isinstance(content, ImageProperties) or len(spec.shape) in (3, 4):
        props = content if isinstance(content, ImageProperties) else None
        width, height, channels = _image_size(spec, props)
        gray = (props is not None and props.color_space == "GRAYSCALE") or channels == 1
        mean, std = image_normalization(spec, in_meta)
        preprocess = {"kind": "image", "width": width, "height": height, "channels": 1 if gray else 3,
                      "color": "gray" if gray else "rgb", "mean": mean, "std": std}
        task, formats = _image_task(outputs, len(labels or ()), what)
        output = {**formats, **output}
    else:
        raise BundleError(
            f"{what}: the TFLite metadata does not describe an image or audio input (input shape "
            f"{spec.shape}); write a sidecar (`edge-agent inspect MODEL --write-sidecar FILE` starts one)"
        )
    sidecar["task"] = task
    if labels is not None:
        sidecar["labels"] = labels
    sidecar["preprocess"] = preprocess
    if output:
        sidecar["output"] = output
    return sidecar
