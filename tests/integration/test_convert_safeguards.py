"""Safeguards of ``edge-convert`` with real conversions (issue 15, item 6).

One small model serves every case (``tests/integration/safeguard_models.py``): a digit
classifier with a dynamic input ``(None, None, 1)`` and its own ``Rescaling(1/255)``
layer, built once per session (``safeguard_model`` in ``tests/fixtures_models.py``).
Without ``--input-shape`` it is refused in one line; with it, it converts; with
``--std 255`` it is normalised twice and its float accuracy falls to chance, which is
refused unless ``--allow-low-accuracy``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import cv2
import pytest

from converter.plots import CONFUSION_PNG, SCATTER_PNG
from edge_agent.model.bundle import read_bundle
from tests.fixtures_models import run_convert

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("edge-convert: error:")]


def test_dynamic_input_needs_input_shape(safeguard_model: dict[str, Any], tmp_path: Path) -> None:
    proc = run_convert(safeguard_model["keras"], "--calibration", safeguard_model["train"],
                       "--output", tmp_path / "out.bundle", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "dynamic dimensions (None, None, None, 1)" in errors[0] and "--input-shape H,W,C" in errors[0]
    assert "XNNPack" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_dynamic_input_with_input_shape_plots_and_class_figures(safeguard_model: dict[str, Any],
                                                                tmp_path: Path) -> None:
    bundle, report_path, plots = tmp_path / "dyn.bundle", tmp_path / "report.json", tmp_path / "plots"
    proc = run_convert(safeguard_model["keras"], "--calibration", safeguard_model["train"],
                       "--validation", safeguard_model["test"], "--output", bundle, "--input-shape", "32,32,1",
                       "--report", report_path, "--plots", plots, "--calibration-samples", "200")
    loaded = read_bundle(bundle)
    assert loaded.manifest.inputs[0].shape == [1, 32, 32, 1]
    report = json.loads(report_path.read_text())
    assert report["accuracy_float"] == pytest.approx(safeguard_model["accuracy"], abs=0.01)
    assert report["accuracy_float"] >= 0.9 and report["top1_agreement"] >= 0.98
    assert report["labels_source"].startswith("class folders") and report["validation_labelled"]
    # per-class figures and both confusion matrices, consistent with the headline figures
    cm = report["confusion_matrix"]
    assert cm["labels"] == [str(i) for i in range(10)]
    for kind in ("float", "int8"):
        matrix = cm[kind]
        assert sum(map(sum, matrix)) == report["validation_samples"]
        correct = sum(matrix[i][i] for i in range(10))
        assert correct / report["validation_samples"] == pytest.approx(report[f"accuracy_{kind}"], abs=1e-6)
    assert [row["support"] for row in report["per_class"]] == [sum(row) for row in cm["float"]]
    assert "confusion matrix int8 (rows true, columns predicted)" in proc.stdout
    for name in (CONFUSION_PNG, SCATTER_PNG):
        image = cv2.imread(str(plots / name))
        assert image is not None and image.size > 0
    # progress: plain step lines with elapsed seconds (stderr is not a terminal here)
    for step in ("loading keras model", "converting to float TFLite", "quantising to int8",
                 "validating float vs int8", "writing the bundle and smoke-testing it"):
        assert re.search(rf"^edge-convert: {step}.*: done in \d+\.\d s$", proc.stderr, re.M), step


def test_double_normalisation_is_refused(safeguard_model: dict[str, Any], tmp_path: Path) -> None:
    """The issue's case: a model with its own Rescaling(1/255) converted with --std 255."""
    report_path = tmp_path / "report.json"
    proc = run_convert(safeguard_model["keras"], "--calibration", safeguard_model["train"],
                       "--validation", safeguard_model["test"], "--output", tmp_path / "out.bundle",
                       "--input-shape", "32,32,1", "--std", "255", "--report", report_path,
                       "--calibration-samples", "200", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1
    assert "near chance" in errors[0] and "--std 1" in errors[0] and "--allow-low-accuracy" in errors[0]
    assert "smoke test" not in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["low_accuracy"] is True and report["accuracy_float"] <= 0.15
    assert not (tmp_path / "out.bundle").exists()


def test_flat_folder_is_unlabelled_and_says_so(safeguard_model: dict[str, Any], tmp_path: Path) -> None:
    """Flat PNG folder, SavedModel with a dynamic input: no accuracy, no silent 0..9 labels."""
    bundle = tmp_path / "flat.bundle"
    proc = run_convert(safeguard_model["savedmodel"], "--calibration", safeguard_model["flat"],
                       "--output", bundle, "--input-shape", "32,32,1")
    assert "accuracy not measured" in proc.stderr
    assert ("no label names (no --labels, no class folders): the bundle's labels are the class indices 0..9"
            in proc.stderr)
    report: dict[str, Any] = read_bundle(bundle).report
    assert report["accuracy_float"] is None and report["validation_labelled"] is False
    assert report["labels_source"].startswith("class indices")
    assert "confusion_matrix" not in report
    assert report["top1_agreement"] >= 0.9
