"""On-device smoke test: golden vectors within tolerance and a latency budget.

Used by ``edge-agent check``, by model installs (in a child process) and by the
converter to prove a freshly written bundle runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.model.manifest import Manifest
from edge_agent.preprocess import dequantize
from edge_agent.runtimes import Runtime


@dataclass
class SmokeResult:
    passed: bool
    vectors: int
    failures: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    max_abs_error: float = 0.0

    def summary(self) -> str:
        state = "PASS" if self.passed else "FAIL"
        text = (
            f"{state}: {self.vectors} golden vector(s), max |error| {self.max_abs_error:.4g}, "
            f"{self.latency_ms:.2f} ms per inference"
        )
        return text if self.passed else text + "; " + "; ".join(self.failures)


def run_smoke_test(manifest: Manifest, runtime: Runtime, timing_runs: int = 10,
                   budget_ms: float | None = None) -> SmokeResult:
    """Check the runtime reproduces the manifest's golden outputs and meets its latency budget.

    Every output a golden vector gives is compared (shape, and max |error| of the
    dequantised values within that output's tolerance). The top-1 class is also
    checked for single-output classifiers, where it is what a user sees. ``budget_ms`` is the
    device's latency budget (``[model] latency_budget_ms``); None: the manifest's; 0: not judged.
    """
    result = SmokeResult(passed=True, vectors=len(manifest.golden))
    in_spec = runtime.inputs[0]
    if list(in_spec.shape) != list(manifest.inputs[0].shape) or in_spec.dtype != manifest.inputs[0].dtype:
        result.failures.append(
            f"model input is {in_spec.dtype}{in_spec.shape}, manifest says "
            f"{manifest.inputs[0].dtype}{manifest.inputs[0].shape}"
        )
    check_top1 = manifest.task in ("classify", "audio_classify") and len(manifest.outputs) == 1
    last_input: np.ndarray | None = None
    for i, vector in enumerate(manifest.golden):
        try:
            tensor = vector.input_array(manifest.inputs[0])
            expected = vector.expected_arrays(manifest.outputs)
        except ValueError as exc:
            result.failures.append(f"golden vector {i}: {exc}")
            continue
        outputs = runtime.infer(tensor)
        last_input = tensor
        if len(expected) > len(outputs):
            result.failures.append(f"golden vector {i}: {len(expected)} expected outputs, the model has "
                                   f"{len(outputs)}")
            continue
        for k, (want, atol) in enumerate(zip(expected, vector.tolerances, strict=True)):
            where = f"golden vector {i}" + (f" output {k}" if len(expected) > 1 else "")
            got = dequantize(outputs[k], runtime.outputs[k])
            want_f = dequantize(want, manifest.outputs[k])
            if got.shape != want_f.shape:
                result.failures.append(f"{where}: output shape {got.shape}, expected {want_f.shape}")
                continue
            err = float(np.max(np.abs(got.astype(np.float32) - want_f))) if got.size else 0.0
            result.max_abs_error = max(result.max_abs_error, err)
            if not err <= atol:  # also catches NaN
                result.failures.append(f"{where}: max |error| {err:.4g} > tolerance {atol:.4g}")
            if k == 0 and check_top1 and got.size and int(np.argmax(got.reshape(-1))) != vector.expected_top1:
                result.failures.append(f"{where}: top-1 {int(np.argmax(got))} != {vector.expected_top1}")
    if last_input is None:
        dtype = np.dtype(in_spec.dtype)
        last_input = np.zeros(in_spec.shape, dtype=dtype)
    for _ in range(2):
        runtime.infer(last_input)
    # The median of single runs: a run the scheduler preempted (a busy board) does not fail a
    # model whose typical latency is within budget, as a mean would.
    times: list[float] = []
    for _ in range(max(1, timing_runs)):
        start = time.perf_counter()
        runtime.infer(last_input)
        times.append(time.perf_counter() - start)
    result.latency_ms = statistics.median(times) * 1000.0
    budget = manifest.latency_budget_ms if budget_ms is None else budget_ms
    if budget > 0 and result.latency_ms > budget:
        result.failures.append(f"latency {result.latency_ms:.2f} ms exceeds the budget of {budget:.2f} ms")
    result.passed = not result.failures
    return result
