"""Float vs int8 comparison on validation data, through the agent's own runtime.

Both models run in :class:`edge_agent.runtimes.litert.LiteRTRuntime`; inputs
are quantised with :func:`edge_agent.preprocess.quantize` using the scale and
zero-point the interpreter reports, and outputs dequantised the same way, so
the figures describe what the device will compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.data import progress
from edge_agent.preprocess import dequantize, quantize
from edge_agent.runtimes.litert import LiteRTRuntime


@dataclass(frozen=True)
class Comparison:
    """Outputs of both models (first output tensor, float view) on the same inputs."""

    float_outputs: np.ndarray
    int8_outputs: np.ndarray
    int8_raw: np.ndarray
    int8_inputs: np.ndarray


def run_model(runtime: LiteRTRuntime, x: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run every sample; returns (dequantised outputs, raw outputs, quantised inputs)."""
    in_spec, out_spec = runtime.inputs[0], runtime.outputs[0]
    shape = [1, *in_spec.shape[1:]]
    outs, raws, ins = [], [], []
    for i, sample in enumerate(x, start=1):
        tensor = quantize(sample.reshape(shape), in_spec)
        raw = runtime.infer(tensor)[0]
        ins.append(tensor[0])
        raws.append(raw[0])
        outs.append(dequantize(raw, out_spec)[0])
        progress(label, i, len(x))
    return np.stack(outs), np.stack(raws), np.stack(ins)


def compare(float_model: bytes, int8_model: bytes, x: np.ndarray) -> Comparison:
    """Run the validation inputs through the float and the int8 model."""
    float_rt = LiteRTRuntime(float_model, threads=2)
    int8_rt = LiteRTRuntime(int8_model, threads=2)
    try:
        float_out, _, _ = run_model(float_rt, x, "validation float")
        int8_out, int8_raw, int8_in = run_model(int8_rt, x, "validation int8")
    finally:
        float_rt.close()
        int8_rt.close()
    return Comparison(float_out, int8_out, int8_raw, int8_in)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a.reshape(len(a), -1), axis=1) == np.argmax(b.reshape(len(b), -1), axis=1)))


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), axis=1) == y))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity (1.0 where both vectors are zero)."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
    dot = np.sum(a2 * b2, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-12))
    return float(np.mean(cos))


def outputs_are_probabilities(outputs: np.ndarray) -> bool:
    """True when every output row is non-negative and sums to ~1 (softmax already applied)."""
    flat = outputs.reshape(len(outputs), -1)
    return bool(np.all(flat >= -1e-6) and np.allclose(flat.sum(axis=1), 1.0, atol=1e-2))


def measure_latency(model: bytes, x: np.ndarray, threads: tuple[int, ...] = (1, 2), runs: int = 50
                    ) -> dict[str, float]:
    """Mean ms per inference on this host for each thread count (keys are strings for JSON)."""
    result: dict[str, float] = {}
    for n in threads:
        runtime = LiteRTRuntime(model, threads=n)
        try:
            tensor = quantize(x[:1].reshape([1, *runtime.inputs[0].shape[1:]]), runtime.inputs[0])
            result[str(n)] = round(runtime.time_inference(tensor, runs=runs, warmup=5), 4)
        finally:
            runtime.close()
    return result


def pick_golden(comp: Comparison, y_scale: float, count: int = 4) -> list[int]:
    """Indices of validation samples with a clear top-1 margin, spread over classes.

    A clear margin (at least 8 output quantisation steps) keeps the expected
    top-1 stable across CPU kernels whose rounding differs by an LSB or two.
    """
    out = comp.int8_outputs.reshape(len(comp.int8_outputs), -1)
    if out.shape[1] < 2:
        return list(range(min(count, len(out))))
    ordered = np.sort(out, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    need = max(8 * y_scale, 1e-3)
    chosen: list[int] = []
    seen: set[int] = set()
    for i in np.argsort(-margin, kind="stable"):
        top = int(np.argmax(out[i]))
        if margin[i] >= need and top not in seen:
            chosen.append(int(i))
            seen.add(top)
        if len(chosen) == count:
            break
    if len(chosen) < count:  # fewer classes than vectors: fill with the clearest remaining
        for i in np.argsort(-margin, kind="stable"):
            if int(i) not in chosen and margin[i] >= need:
                chosen.append(int(i))
            if len(chosen) == count:
                break
    return chosen or [int(np.argmax(margin))]
