"""Which ops of a converted model run in int8, read from the flatbuffer itself.

The interpreter of ai-edge-litert exposes the op list (``_get_ops_details``) and
every tensor's dtype and quantisation (``get_tensor_details``). We load the
model *without* the default XNNPACK delegate so the list shows the model's own
ops, not delegate nodes.

An op counts as integer when none of its input or output tensors is float
(int8/int16 activations, int32 biases and shape tensors are all fine). A
QUANTIZE or DEQUANTIZE at the model's float boundary is expected when the
caller asked for float32 I/O and then counts as integer; anywhere else it marks
a float island.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_FLOAT_DTYPES = ("float32", "float16", "float64")
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class OpInfo:
    """One op of a TFLite model with the dtypes of its tensors."""

    index: int
    op: str
    inputs: list[str]
    outputs: list[str]
    integer: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interpreter(model: bytes) -> Any:
    from ai_edge_litert import interpreter as litert

    kwargs: dict[str, Any] = {"model_content": model}
    resolver = getattr(litert, "OpResolverType", None)
    if resolver is not None and hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = litert.Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def list_ops(model: bytes, float_io: bool = False) -> list[OpInfo]:
    """List the ops of a TFLite model with their input/output tensor dtypes.

    Args:
        model: the .tflite flatbuffer.
        float_io: the model was converted with float32 inputs/outputs on purpose,
            so QUANTIZE/DEQUANTIZE at its inputs/outputs are not float fallbacks.
    """
    interp = _interpreter(model)
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    model_inputs = {int(d["index"]) for d in interp.get_input_details()}
    model_outputs = {int(d["index"]) for d in interp.get_output_details()}

    def dtype(index: int) -> str:
        return np.dtype(tensors[index]["dtype"]).name if index in tensors else "unknown"

    result: list[OpInfo] = []
    for op in interp._get_ops_details():
        name = str(op["op_name"])
        if name == "DELEGATE":
            continue
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        outs = [int(i) for i in op["outputs"] if int(i) >= 0]
        in_types = [dtype(i) for i in ins]
        out_types = [dtype(i) for i in outs]
        has_float = any(t in _FLOAT_DTYPES for t in (*in_types, *out_types))
        integer = not has_float
        if has_float and float_io and name in _BOUNDARY_OPS:
            at_input = name == "QUANTIZE" and all(i in model_inputs for i in ins)
            at_output = name == "DEQUANTIZE" and all(o in model_outputs for o in outs)
            integer = at_input or at_output
        result.append(OpInfo(int(op["index"]), name, in_types, out_types, integer))
    return result


def int8_coverage(ops: list[OpInfo]) -> float:
    """Fraction of ops that run in integer arithmetic (1.0 = no float fallback)."""
    return sum(op.integer for op in ops) / len(ops) if ops else 0.0


def float_ops(ops: list[OpInfo]) -> list[str]:
    """Names of the ops left in float, unique, in model order."""
    seen: list[str] = []
    for op in ops:
        if not op.integer and op.op not in seen:
            seen.append(op.op)
    return seen


def float_compute_ops(ops: list[OpInfo]) -> list[str]:
    """Float ops other than the QUANTIZE/DEQUANTIZE pairs around them: the real culprits."""
    return [name for name in float_ops(ops) if name not in _BOUNDARY_OPS]
