"""Compression options and the pure parts of the fine-tuning modules (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.compress import CompressOptions, mode_of
from converter.errors import ConvertError
from converter.report import format_report
from converter.train.distill import narrow_config
from converter.train.prune import block_mask, polynomial_sparsity


def test_plain_ptq_without_compression_options() -> None:
    assert mode_of(CompressOptions(), "keras") is None


@pytest.mark.parametrize(("options", "message"), [
    (CompressOptions(qat=True), "needs --train-data"),
    (CompressOptions(epochs=3), "need --train-data and --qat"),
    (CompressOptions(train_data=Path("/nonexistent/data")), "not found"),
    (CompressOptions(qat=True, prune=0.5, train_data=Path(".")), "choose one"),
    (CompressOptions(prune=1.5, train_data=Path(".")), "between 0 and 1"),
    (CompressOptions(prune=0.5, prune_block=0, train_data=Path(".")), "--prune-block takes 1 to 64"),
    (CompressOptions(prune=0.5, prune_block=65, train_data=Path(".")), "--prune-block takes 1 to 64"),
    (CompressOptions(student_width=0.0, train_data=Path(".")), "between 0 and 1"),
    (CompressOptions(qat=True, epochs=0, train_data=Path(".")), "--epochs"),
    (CompressOptions(qat=True, train_data=Path("/nonexistent/data")), "not found"),
])
def test_inconsistent_options_are_refused(options: CompressOptions, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        mode_of(options, "keras")


def test_savedmodel_cannot_be_fine_tuned(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="Keras model"):
        mode_of(CompressOptions(qat=True, train_data=tmp_path), "savedmodel")


def test_training_data_alone_is_for_the_ladder(tmp_path: Path) -> None:
    assert mode_of(CompressOptions(train_data=tmp_path, epochs=2), "keras") is None


def test_modes(tmp_path: Path) -> None:
    assert mode_of(CompressOptions(qat=True, train_data=tmp_path), "keras") == "qat"
    assert mode_of(CompressOptions(prune=0.5, train_data=tmp_path), "h5") == "prune"
    assert mode_of(CompressOptions(student_width=0.25, train_data=tmp_path), "keras") == "distill"


def test_polynomial_schedule() -> None:
    assert polynomial_sparsity(0, 100, 0.5) == 0.0
    assert polynomial_sparsity(100, 100, 0.5) == pytest.approx(0.5)
    assert polynomial_sparsity(500, 100, 0.5) == pytest.approx(0.5)
    assert polynomial_sparsity(50, 100, 0.5) == pytest.approx(0.5 * (1 - 0.5**3))


def test_narrow_config_keeps_the_output_layer() -> None:
    config = {"layers": [{"class_name": "Conv2D", "config": {"filters": 32}},
                         {"class_name": "Flatten", "config": {}},
                         {"class_name": "Dense", "config": {"units": 64}},
                         {"class_name": "Dense", "config": {"units": 10}}]}
    narrowed = narrow_config(config, 0.25)
    assert [layer["config"].get("filters", layer["config"].get("units")) for layer in narrowed["layers"]] == \
        [8, None, 16, 10]
    assert config["layers"][0]["config"]["filters"] == 32  # the teacher's config is untouched


def test_report_table_shows_ptq_and_qat_side_by_side() -> None:
    figures = {"accuracy": 0.9, "top1_agreement": 0.85, "size_bytes": 1000, "gzip_bytes": 900,
               "latency_ms_1_thread": 0.1}
    report = {"compression": {"mode": "qat", "ptq": figures, "qat": {**figures, "accuracy": 0.97}}}
    lines = {line.split("  ")[0]: line for line in format_report(report).splitlines()}
    assert "accuracy 90.00 %, agreement 85.00 %" in lines["plain PTQ int8"]
    assert "accuracy 97.00 %, agreement 85.00 %" in lines["QAT int8"]
    pruned = format_report({"compression": {"mode": "prune", "prune": figures, "sparsity": 0.5,
                                            "gzip_reduction_vs_ptq": 0.28}})
    assert "50.00 % (gzip 28.00 % smaller" in pruned


def test_block_mask_zeroes_runs_of_input_channels_with_the_smallest_mean() -> None:
    """A Dense kernel (in 8, out 2): per output unit, blocks of 4 consecutive inputs; the half with the
    smallest mean magnitude goes, whatever single weights are larger or smaller elsewhere."""
    kernel = np.array([[1, 9], [1, 9], [1, 9], [9, 0.5],      # inputs 0-3
                       [5, 0.1], [5, 0.1], [5, 0.1], [0.2, 0.1],  # inputs 4-7
                       ], np.float32)
    mask = block_mask(kernel, 0.5, 4)
    # unit 0: block 0-3 mean 3.0 < block 4-7 mean 3.8; unit 1: block 4-7 mean 0.1 < 6.875
    assert mask[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert mask[:, 1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    unstructured = block_mask(kernel, 0.5, 1)  # plain magnitude pruning keeps the single 9 of block 0-3
    assert unstructured[3, 0] == 1 and unstructured.sum() == 8


def test_block_mask_on_a_conv_kernel_keeps_the_layout_and_the_fraction() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 8, 5)).astype(np.float32)
    mask = block_mask(kernel, 0.5, 4)
    assert mask.shape == kernel.shape and mask.sum() == kernel.size // 2
    runs = np.moveaxis(mask, -2, -1).reshape(-1, 2, 4)  # (h, w, out) x 2 blocks x 4 inputs
    assert set(np.unique(runs.min(axis=-1) == runs.max(axis=-1))) == {True}  # every block all 0 or all 1
