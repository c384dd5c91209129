"""A ``.tflite`` model (FlatBuffer ``tflite/schema.fbs``, identifier ``TFL3``): subgraph 0's
tensors, the operators it runs and the model's metadata entries, without TensorFlow.

Nothing here imports the 20k-line generated schema module except :func:`op_name`,
lazily, to name builtin operators.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from edge_agent.errors import BundleError
from edge_agent.model.manifest import TensorSpec
from edge_agent.model.tflite.flatbuffer import F32, I8, I32, I64, U32, U64, Buffer, Table
from edge_agent.schema import ValidationError

MODEL_IDENTIFIER = b"TFL3"

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


def _open(data: bytes, what: str) -> tuple[Buffer, Table]:
    buf = Buffer(bytes(data), what)
    if buf.size < 8 or buf.data[4:8] != MODEL_IDENTIFIER:
        raise BundleError(f"{what} is not a TFLite model (no {MODEL_IDENTIFIER.decode()} identifier)")
    return buf, buf.root(MODEL_IDENTIFIER)


def _subgraph0(buf: Buffer, model: Table) -> tuple[Table, int]:
    subgraphs = model.tables(2)
    if not subgraphs:
        buf.fail("the model has no subgraph")
    return subgraphs[0], len(subgraphs)


def _tensor_info(tensor: Table) -> TensorInfo:
    type_code = tensor.scalar(1, I8)
    scale, zero_point = 0.0, 0
    quantization = tensor.table(4)
    if quantization is not None:
        scales = quantization.numbers(2, F32)
        zero_points = quantization.numbers(3, I64)
        # The interpreter reports per-tensor parameters only (per-channel shows as 0, 0).
        if len(scales) == 1:
            scale = float(scales[0])
            zero_point = int(zero_points[0]) if zero_points else 0
    return TensorInfo(
        name=tensor.string(3),
        dtype=TENSOR_TYPES.get(type_code, f"type{type_code}"),
        shape=tuple(int(d) for d in tensor.numbers(0, I32)),
        scale=scale,
        zero_point=zero_point,
    )


def _buffer_bytes(buf: Buffer, buffers: list[Table], index: int) -> bytes:
    if not 0 <= index < len(buffers):
        buf.fail(f"metadata names buffer {index} of {len(buffers)}")
    entry = buffers[index]
    offset, size = entry.scalar(1, U64), entry.scalar(2, U64)
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
        for index in subgraph.numbers(slot, I32):
            if not 0 <= index < len(tensors):
                buf.fail(f"subgraph 0 names tensor {index} of {len(tensors)}")
            out.append(_tensor_info(tensors[index]))
        return tuple(out)

    buffers = model.tables(4)
    metadata: dict[str, bytes] = {}
    for entry in model.tables(6):
        metadata[entry.string(0)] = _buffer_bytes(buf, buffers, entry.scalar(1, U32))
    return TfliteModel(
        schema_version=model.scalar(0, U32),
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
        builtin = max(code.scalar(0, I8), code.scalar(3, I32))
        names.append(custom if custom and builtin == _CUSTOM else op_name(builtin))
    types = [TENSOR_TYPES.get(t.scalar(1, I8), "unknown") for t in subgraph.tables(0)]
    model_inputs, model_outputs = set(subgraph.numbers(1, I32)), set(subgraph.numbers(2, I32))
    counts: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    integer_ops, quantized = 0, False
    for op in subgraph.tables(3):
        index = op.scalar(0, U32)
        if index >= len(names):
            buf.fail(f"operator uses opcode {index} of {len(names)}")
        name = names[index]
        ins = [i for i in op.numbers(1, I32) if i >= 0]  # -1 marks an omitted optional input
        outs = [i for i in op.numbers(2, I32) if i >= 0]
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
