"""Golden vectors: what a bundle must still compute on the device, and how closely."""

from __future__ import annotations

import numpy as np

from converter import validate
from edge_agent.model.manifest import GoldenVector, TensorSpec
from edge_agent.preprocess import dequantize
from edge_agent.runtimes.litert import LiteRTRuntime


def golden_tolerance(spec: TensorSpec, expected: np.ndarray) -> float:
    """Smoke-test tolerance of one output, given its dequantised expected values.

    A quantised output gets three quantisation steps: other CPUs' int8 kernels
    may round differently by a step or two. A float output gets 1e-3 plus 1 %
    of its largest magnitude (float kernels differ in summation order). An
    integer output without a scale (a count, class ids) must match exactly.
    """
    if spec.scale > 0:
        return 3.0 * spec.scale
    if np.dtype(spec.dtype).kind in "iu":
        return 0.5
    return 1e-3 + 0.01 * (float(np.max(np.abs(expected))) if expected.size else 0.0)


def golden_vectors(int8_model: bytes, comp: validate.Comparison
                   ) -> tuple[TensorSpec, list[TensorSpec], list[GoldenVector]]:
    """The int8 model's input spec, output specs and golden vectors picked from ``comp``."""
    int8_rt = LiteRTRuntime(int8_model)
    try:
        in_spec, outputs = int8_rt.inputs[0], list(int8_rt.outputs)
        out_spec = outputs[0]
        golden_idx = validate.pick_golden(comp, out_spec.scale)
        # The comparison keeps output 0 only; outputs 1..n of a detector come from one more run.
        more = [int8_rt.infer(comp.int8_inputs[i][None])[1:] for i in golden_idx]
    finally:
        int8_rt.close()
    atol = golden_tolerance(out_spec, comp.int8_outputs[golden_idx])
    more_atol = [golden_tolerance(spec, np.stack([dequantize(m[k], spec) for m in more]))
                 for k, spec in enumerate(outputs[1:])]
    golden = [
        GoldenVector(
            input_b64=GoldenVector.encode(comp.int8_inputs[i][None]),
            expected_b64=GoldenVector.encode(comp.int8_raw[i][None]),
            expected_top1=int(np.argmax(comp.int8_outputs[i].reshape(-1))),
            atol=atol,
            more_expected_b64=[GoldenVector.encode(array) for array in extra],
            more_atol=more_atol,
        )
        for i, extra in zip(golden_idx, more, strict=True)
    ]
    return in_spec, outputs, golden
