"""The recovery ladder's rules that need no TensorFlow: which targets a report misses, the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.cli import build_parser, main, options_from_args
from converter.ladder import format_ladder, measured, misses
from converter.report import format_report


def test_misses_accuracy_drop_and_agreement() -> None:
    report = {"accuracy_drop_pp": 1.5, "top1_agreement": 0.985}
    assert misses(report, 1.0, None) == ["accuracy drop 1.50 pp > --max-accuracy-drop 1"]
    assert misses(report, 2.0, 0.99) == ["top-1 agreement 98.50% < --min-agreement 0.99"]
    assert len(misses(report, 1.0, 0.99)) == 2
    assert misses(report, 1.5, 0.985) == []  # the limits themselves pass
    assert misses({"accuracy_drop_pp": None, "top1_agreement": None}, 0.0, 0.99) == []  # no labels, no task


def _ladder(chosen: bool) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = [
        {"rung": 1, "what": "calibration: more samples", "status": "skipped", "reason": "all 60 used"},
        {"rung": 1, "what": "calibration: p99.99", "status": "missed", "top1_agreement": 0.5,
         "accuracy_int8": 0.4, "size_bytes": 1000, "size_vs_int8_bytes": 0, "latency_ms_1thr": 0.1,
         "latency_vs_int8_ms": 0.0},
        {"rung": 2, "what": "selective: 1", "status": "met" if chosen else "missed", "top1_agreement": 0.995,
         "accuracy_int8": None, "size_bytes": 1500, "size_vs_int8_bytes": 500, "latency_ms_1thr": 0.12,
         "latency_vs_int8_ms": 0.02, "kept_float_ops": ["CONV_2D conv1"]},
    ]
    return {
        "plain_int8": {"missed": ["top-1 agreement 50.00% < --min-agreement 0.99"]},
        "attempts": attempts,
        "chosen": {"rung": 2, "what": "selective: 1", "kept_float_ops": ["CONV_2D conv1"],
                   "size_vs_int8_bytes": 500, "latency_vs_int8_ms": 0.02} if chosen else None,
    }


def test_format_ladder_lists_every_attempt_and_the_cost() -> None:
    text = format_ladder(_ladder(True))
    lines = text.splitlines()
    assert lines[0].startswith("recovery ladder (plain int8 missed: top-1 agreement 50.00%")
    assert "skipped (all 60 used)" in lines[1]
    assert "agreement 50.00 %, accuracy 40.00 %, 1,000 B (+0 B)" in lines[2] and lines[2].endswith("missed")
    assert "accuracy n/a" in lines[3] and "(+500 B)" in lines[3] and "(+0.020 ms)" in lines[3]
    assert "ops kept in float: CONV_2D conv1" in lines[4] and "+500 B, +0.020 ms" in lines[4]
    assert "no rung met the targets" in format_ladder(_ladder(False))
    assert measured(_ladder(True)) == 2


def test_report_table_carries_the_ladder() -> None:
    assert "recovery ladder" not in format_report({})
    assert format_report({"ladder": _ladder(True)}).splitlines()[-1].startswith("  chosen: rung 2")


def test_min_agreement_out_of_range_is_refused_before_tensorflow(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"not loaded: the check comes first")
    np.save(tmp_path / "calib.npy", np.zeros((4, 8, 8, 1), np.float32))
    for value in ("1.5", "0", "-0.2"):
        code = main([str(model), "--calibration", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "x.bundle"),
                     "--min-agreement", value])
        assert code == 2
        assert "--min-agreement takes a fraction in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.bundle").exists()


def test_cli_options_reach_the_converter() -> None:
    args = build_parser().parse_args(["m.keras", "--calibration", "c", "-o", "b", "--min-agreement", "0.99",
                                      "--no-ladder"])
    opts = options_from_args(args)
    assert (opts.min_agreement, opts.ladder) == (0.99, False)
    defaults = options_from_args(build_parser().parse_args(["m.keras", "--calibration", "c", "-o", "b"]))
    assert (defaults.min_agreement, defaults.ladder) == (None, True)
