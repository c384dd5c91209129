"""Cross-layer equalisation (``converter/train/equalize.py``) on small models built in a child process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures_models import run_python

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    proc = run_python(["-m", "tests.integration.equalize_check"], timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["model"]: r for r in lines}


def _factors(result: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(d["first"], d["second"]): d["max_factor"] for d in result["done"]}


def test_a_mobilenet_like_chain_is_equalised_and_keeps_its_function(results: dict[str, dict[str, Any]]) -> None:
    mobile = results["mobile"]
    # conv -> depthwise, depthwise -> pointwise (depth multiplier 1), pointwise -> pool/flatten -> dense
    assert mobile["pairs"] == [["conv", "dw", False], ["dw", "pw", False], ["pw", "head", True]]
    factors = _factors(mobile)
    assert factors[("conv", "dw")] > 10 and factors[("dw", "pw")] > 10  # the two widened channels
    assert mobile["max_abs_diff"] <= 1e-4 * max(1.0, mobile["output_scale"])
    # the widened kernels are back within a small factor of the others (they were 300x)
    assert mobile["ranges"]["conv"] < 30 and mobile["ranges"]["dw"] < 30


def test_a_layer_read_twice_is_not_rescaled(results: dict[str, dict[str, Any]]) -> None:
    skip = results["skip"]
    firsts = {first for first, _, _ in skip["pairs"]}
    assert "conv_a" not in firsts  # read by conv_b and by the Add
    assert ["conv_b", "conv_c", False] in skip["pairs"]  # conv_c's output goes to the Add, but conv_b's does not
    assert _factors(skip)[("conv_b", "conv_c")] > 10
    assert skip["max_abs_diff"] <= 1e-4 * max(1.0, skip["output_scale"])


def test_batch_normalisation_between_two_convolutions_stops_the_pair(results: dict[str, dict[str, Any]]) -> None:
    bn = results["bn"]
    assert bn["pairs"] == [] and bn["done"] == [] and bn["max_abs_diff"] == 0.0
