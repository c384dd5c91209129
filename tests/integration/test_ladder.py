"""The recovery ladder end to end: a model that plain int8 wrecks, recovered without training data.

The model (``tests/integration/ladder_model.py``) has one activation channel 400x the range of the
others, so per-tensor int8 activations crush the rest: plain PTQ falls to chance. The ladder's
calibration rung cannot fix that (the range is real, not an outlier, and batch normalisation
stands between the convolutions, so equalisation cannot move it); selective quantisation must.
The digits CNN with one Dense unit scaled 300x (``outlier_model``) is fixed by cross-layer
equalisation in the calibration rung, at no cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.model.bundle import read_bundle
from edge_agent.model.smoke import run_smoke_test
from edge_agent.runtimes.litert import LiteRTRuntime
from tests.fixtures_models import built_once, run_convert, run_python

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow, pytest.mark.sklearn]


@pytest.fixture(scope="session")
def ladder_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = built_once(tmp_path_factory, "ladder_model",
                     lambda out: run_python(["-m", "tests.integration.ladder_model", str(out)]))
    info: dict[str, Any] = json.loads((out / "info.json").read_text())
    return info


@pytest.fixture(scope="module")
def recovered(ladder_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Any, Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("ladder_ok")
    proc = run_convert(ladder_model["model"], "--calibration", ladder_model["train"],
                       "--validation", ladder_model["test"], "--output", out / "m.bundle",
                       "--report", out / "report.json", "--min-agreement", "0.99", check=False)
    return proc, out, json.loads((out / "report.json").read_text())


def test_plain_int8_is_broken_and_ladder_recovers(recovered: tuple[Any, Path, dict[str, Any]],
                                                  ladder_model: dict[str, Any]) -> None:
    proc, out, report = recovered
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ladder_model["accuracy"] >= 0.85 and ladder_model["rescale_max_abs_diff"] < 1e-4
    ladder = report["ladder"]
    plain = ladder["plain_int8"]
    assert plain["top1_agreement"] < 0.5 and plain["accuracy_drop_pp"] > 30  # PTQ really is broken
    assert ladder["recovered"] is True
    # The headline figures are the chosen model's, against the user's float model.
    assert report["top1_agreement"] >= 0.99
    assert report["accuracy_drop_pp"] <= 1.0
    chosen = ladder["chosen"]
    assert chosen["rung"] == 2 and chosen["kept_float_ops"]
    assert any("conv1" in op for op in chosen["kept_float_ops"])  # the layer with the wide channel
    attempts = ladder["attempts"]
    assert [a["rung"] for a in attempts] == sorted(a["rung"] for a in attempts)  # tried in order
    rung1 = [a for a in attempts if a["rung"] == 1]
    assert {a["status"] for a in rung1} >= {"missed", "skipped"}
    assert any(a.get("percentile") == 99.99 for a in rung1)
    assert attempts[-1]["status"] == "met" and attempts[-1]["rung"] == 2
    for attempt in attempts:
        if attempt["status"] in ("met", "missed"):
            for key in ("top1_agreement", "accuracy_int8", "size_bytes", "size_vs_int8_bytes",
                        "latency_ms_1thr", "latency_vs_int8_ms", "what"):
                assert key in attempt
    # The cost: float ops cost bytes against plain int8.
    assert chosen["size_vs_int8_bytes"] > 0
    assert report["size_int8_bytes"] == plain["size_int8_bytes"] + chosen["size_vs_int8_bytes"]
    assert "recovery ladder" in proc.stdout and "chosen: rung 2" in proc.stdout
    # The bundle holds the recovered model and passes its own smoke test.
    bundle = read_bundle(out / "m.bundle")
    bundled: dict[str, Any] = bundle.report  # type: ignore[assignment]
    assert bundled["ladder"]["chosen"] == chosen
    assert run_smoke_test(bundle.manifest, LiteRTRuntime(bundle.model_bytes)).passed


def test_ladder_exhausted_exits_3_with_attempts(ladder_model: dict[str, Any], tmp_path: Path) -> None:
    """Under --strict no op may stay float, so only calibration is tried: exit 3, every attempt listed."""
    proc = run_convert(ladder_model["model"], "--calibration", ladder_model["train"],
                       "--validation", ladder_model["test"], "--output", tmp_path / "m.bundle",
                       "--report", tmp_path / "report.json", "--strict", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:")]
    assert error and "--max-accuracy-drop" in error[0] and "recovery ladder" in error[0]
    report = json.loads((tmp_path / "report.json").read_text())
    ladder = report["ladder"]
    assert ladder["recovered"] is False and ladder["chosen"] is None
    statuses = {(a["rung"], a["status"]) for a in ladder["attempts"]}
    assert (1, "missed") in statuses and (2, "skipped") in statuses and (3, "skipped") in statuses
    assert not (tmp_path / "m.bundle").exists()


def test_equalisation_recovers_an_outlier_unit_at_no_cost(outlier_model: Path, digits_models: dict[str, Any],
                                                          tmp_path: Path) -> None:
    proc = run_convert(outlier_model, "--calibration", digits_models["train"], "--validation", digits_models["test"],
                       "--output", tmp_path / "m.bundle", "--report", tmp_path / "report.json",
                       "--min-agreement", "0.99", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    ladder = report["ladder"]
    assert ladder["plain_int8"]["top1_agreement"] < 0.95
    chosen = ladder["chosen"]
    assert chosen["rung"] == 1 and chosen["what"] == "calibration: cross-layer equalisation"
    assert chosen["kept_float_ops"] == [] and any(p["first"].startswith("dense") for p in chosen["equalized"])
    assert report["top1_agreement"] >= 0.99 and report["int8_op_coverage"] == 1.0
    # the same ops and tensors as plain int8: only the weights and ranges moved
    assert abs(chosen["size_vs_int8_bytes"]) <= 1024
    assert "equalised: " in proc.stdout


def test_qat_rung_runs_when_training_data_is_given(ladder_model: dict[str, Any], tmp_path: Path) -> None:
    """--io uint8 rules out the selective rung, so with --train-data the ladder reaches QAT: it trains,
    converts and measures that model like the others, and reports it (met or not)."""
    proc = run_convert(ladder_model["model"], "--calibration", ladder_model["train"],
                       "--validation", ladder_model["test"], "--output", tmp_path / "m.bundle",
                       "--report", tmp_path / "report.json", "--io", "uint8",
                       "--train-data", ladder_model["train"], "--epochs", "1", check=False)
    report = json.loads((tmp_path / "report.json").read_text())
    attempts = report["ladder"]["attempts"]
    assert [(a["rung"], a["status"]) for a in attempts if a["rung"] == 2] == [(2, "skipped")]
    qat = [a for a in attempts if a["rung"] == 3]
    assert len(qat) == 1 and qat[0]["status"] in ("met", "missed"), qat
    images = sum(1 for _ in Path(ladder_model["train"]).rglob("*.png"))
    assert qat[0]["epochs"] == 1 and qat[0]["train_samples"] == images
    assert qat[0]["what"] == f"quantisation-aware training (1 epoch, {images} samples)"
    assert 0.0 <= qat[0]["top1_agreement"] <= 1.0 and qat[0]["size_bytes"] > 0
    # exit 0 with the QAT model in the bundle when it met the targets, else 3 and nothing written
    assert proc.returncode == (0 if qat[0]["status"] == "met" else 3), proc.stderr[-3000:]
    assert (tmp_path / "m.bundle").exists() == (qat[0]["status"] == "met")
