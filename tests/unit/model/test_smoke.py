"""The smoke test compares every output a golden vector gives, with real tiny models.

``squares.tflite`` is a 2-output detector (boxes (1, 169, 4) + scores (1, 169, 1), float);
``colours_int8.tflite`` a single-output int8 classifier (see tests/integration/agent_models.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.model.loader import LoadedModel, load_model
from edge_agent.model.manifest import GoldenVector, Manifest
from edge_agent.model.smoke import run_smoke_test
from edge_agent.preprocess import dequantize, quantize
from edge_agent.schema import ValidationError

ATOL = 0.01


@pytest.fixture
def squares(agent_models_dir: Path) -> Iterator[LoadedModel]:
    model = load_model(agent_models_dir / "squares.tflite")
    yield model
    model.runtime.close()


@pytest.fixture
def colours_int8(agent_models_dir: Path) -> Iterator[LoadedModel]:
    model = load_model(agent_models_dir / "colours_int8.tflite")
    yield model
    model.runtime.close()


def golden(model: LoadedModel, count: int = 2, seed: int = 0) -> list[GoldenVector]:
    """Vectors with every output of the model, from the interpreter itself."""
    rng = np.random.default_rng(seed)
    spec = model.runtime.inputs[0]
    vectors = []
    for _ in range(count):
        x = quantize(rng.random(spec.shape, dtype=np.float32), spec)
        outs = model.runtime.infer(x)
        vectors.append(GoldenVector(
            input_b64=GoldenVector.encode(x), expected_b64=GoldenVector.encode(outs[0]),
            expected_top1=int(np.argmax(dequantize(outs[0], model.runtime.outputs[0]))), atol=ATOL,
            more_expected_b64=[GoldenVector.encode(o) for o in outs[1:]], more_atol=[ATOL] * (len(outs) - 1),
        ))
    return vectors


def with_golden(model: LoadedModel, vectors: list[GoldenVector], **update: object) -> Manifest:
    return model.manifest.model_copy(update={"golden": vectors, **update})


def test_every_output_is_compared(squares: LoadedModel) -> None:
    vectors = golden(squares)
    assert all(len(v.more_expected_b64) == 1 for v in vectors)
    result = run_smoke_test(with_golden(squares, vectors), squares.runtime, timing_runs=2)
    assert result.passed and result.max_abs_error == 0.0, result.failures

    specs = squares.manifest.outputs
    # output 1 (scores) off by 5 tolerances in vector 1; output 0 (boxes) still exact
    scores = vectors[1].expected_arrays(specs)[1] + np.float32(5 * ATOL)
    bad = vectors[1].model_copy(update={"more_expected_b64": [GoldenVector.encode(scores)]})
    result = run_smoke_test(with_golden(squares, [vectors[0], bad]), squares.runtime, timing_runs=2)
    assert not result.passed
    assert len(result.failures) == 1 and result.failures[0].startswith("golden vector 1 output 1: max |error| 0.05")
    assert result.max_abs_error == pytest.approx(5 * ATOL, rel=1e-3)

    # within its own tolerance: passes, and the error is reported
    near = vectors[1].model_copy(update={"more_expected_b64": [GoldenVector.encode(scores - np.float32(4.5 * ATOL))]})
    result = run_smoke_test(with_golden(squares, [near]), squares.runtime, timing_runs=2)
    assert result.passed and 0 < result.max_abs_error <= ATOL


def test_each_output_has_its_own_tolerance(squares: LoadedModel) -> None:
    vector = golden(squares, count=1)[0]
    scores = vector.expected_arrays(squares.manifest.outputs)[1] + np.float32(0.03)
    moved = vector.model_copy(update={"more_expected_b64": [GoldenVector.encode(scores)]})
    loose = moved.model_copy(update={"more_atol": [0.05]})
    assert run_smoke_test(with_golden(squares, [loose]), squares.runtime, timing_runs=1).passed
    tight = moved.model_copy(update={"atol": 0.05, "more_atol": [0.01]})
    result = run_smoke_test(with_golden(squares, [tight]), squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0 output 1: max |error| 0.03 > tolerance 0.01"]
    # without more_atol, atol applies to every output
    default = moved.model_copy(update={"atol": 0.05, "more_atol": []})
    assert default.tolerances == [0.05, 0.05]
    assert run_smoke_test(with_golden(squares, [default]), squares.runtime, timing_runs=1).passed


def test_old_vectors_check_output_0_only(squares: LoadedModel) -> None:
    vector = golden(squares, count=1)[0]
    data = vector.model_dump()
    del data["more_expected_b64"], data["more_atol"]
    old = GoldenVector.model_validate(data)  # a manifest written before the fields existed
    assert old.more_expected_b64 == [] and old.tolerances == [ATOL]
    assert run_smoke_test(with_golden(squares, [old]), squares.runtime, timing_runs=1).passed
    boxes = old.expected_array(squares.manifest.outputs[0]) + np.float32(0.5)
    broken = old.model_copy(update={"expected_b64": GoldenVector.encode(boxes)})
    result = run_smoke_test(with_golden(squares, [broken]), squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0: max |error| 0.5 > tolerance 0.01"]


def test_output_count_shape_and_size_mismatches(squares: LoadedModel) -> None:
    vector = golden(squares, count=1)[0]
    specs = squares.manifest.outputs
    # a third expected output for a 2-output manifest
    three = vector.model_copy(update={"more_expected_b64": [*vector.more_expected_b64, vector.more_expected_b64[0]],
                                      "more_atol": [ATOL, ATOL]})
    result = run_smoke_test(with_golden(squares, [three]), squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0: golden vector gives 3 outputs, the manifest lists 2"]
    # a manifest listing more outputs than the model has
    manifest = with_golden(squares, [three], outputs=[*specs, specs[1]])
    result = run_smoke_test(manifest, squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0: 3 expected outputs, the model has 2"]
    # same size, other shape
    flat = specs[1].model_copy(update={"shape": [1, 169]})
    result = run_smoke_test(with_golden(squares, [vector], outputs=[specs[0], flat]), squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0 output 1: output shape (1, 169, 1), expected (1, 169)"]
    # wrong number of values
    short = vector.model_copy(update={"more_expected_b64": [GoldenVector.encode(np.zeros(10, np.float32))]})
    result = run_smoke_test(with_golden(squares, [short]), squares.runtime, timing_runs=1)
    assert result.failures == ["golden vector 0: golden vector has 10 values, tensor needs 169"]


def test_top1_only_for_single_output_classifiers(squares: LoadedModel, colours_int8: LoadedModel) -> None:
    vector = golden(squares, count=1)[0]
    wrong = vector.model_copy(update={"expected_top1": vector.expected_top1 + 1})
    assert run_smoke_test(with_golden(squares, [wrong]), squares.runtime, timing_runs=1).passed  # detect
    as_classifier = with_golden(squares, [wrong], task="classify")
    assert run_smoke_test(as_classifier, squares.runtime, timing_runs=1).passed  # 2 outputs: no top-1

    vector = golden(colours_int8, count=1)[0]
    assert vector.more_expected_b64 == []
    assert run_smoke_test(with_golden(colours_int8, [vector]), colours_int8.runtime, timing_runs=1).passed
    wrong = vector.model_copy(update={"expected_top1": (vector.expected_top1 + 1) % 3})
    result = run_smoke_test(with_golden(colours_int8, [wrong]), colours_int8.runtime, timing_runs=1)
    assert result.failures == [f"golden vector 0: top-1 {vector.expected_top1} != {wrong.expected_top1}"]


def test_golden_vector_fields_are_checked() -> None:
    base = {"input_b64": "", "expected_b64": "", "expected_top1": 0, "atol": 0.1}
    ok = GoldenVector.model_validate({**base, "more_expected_b64": ["", ""], "more_atol": [0.2, 0.3]})
    assert ok.tolerances == [0.1, 0.2, 0.3]
    with pytest.raises(ValidationError, match="one value per entry"):
        GoldenVector.model_validate({**base, "more_expected_b64": ["", ""], "more_atol": [0.2]})
    with pytest.raises(ValidationError, match="must be > 0"):
        GoldenVector.model_validate({**base, "more_expected_b64": [""], "more_atol": [0.0]})
