"""The converter's int8 digits bundle run by the agent on a video of held-out digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.model.bundle import read_bundle, write_bundle
from edge_agent.model.manifest import GoldenVector
from tests.integration.agent_helpers import events, run_agent

pytestmark = pytest.mark.integration


def render_video(images: np.ndarray, path: Path, scale: int = 2) -> Path:
    """Lossless FFV1 video, each digit upscaled (nearest) so INTER_AREA gives it back exactly."""
    h, w = images.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (w * scale, h * scale))
    for image in images:
        big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_video_accuracy_matches_converter_int8_accuracy(
    digits_data: tuple[np.ndarray, ...], digits_bundle: Path, digits_report: dict[str, Any], tmp_path: Path
) -> None:
    _, _, x_test, y_test = digits_data
    video = render_video(x_test, tmp_path / "digits.mkv")
    code, messages, stderr = run_agent("--bundle", digits_bundle, "--source", video, "--events", "every",
                                       "--state-dir", tmp_path / "state", timeout=120)
    assert code == 0, stderr
    results = events(messages, "evt/classification")
    assert [r["frame"] for r in results] == list(range(len(x_test)))  # every frame, in order
    predicted = np.array([int(r["classes"][0]["label"]) for r in results])
    accuracy = float(np.mean(predicted == y_test))
    expected = float(digits_report["accuracy_int8"])
    assert abs(accuracy - expected) <= 0.01, (accuracy, expected)
    assert accuracy > 0.9
    health = events(messages, "health")[-1]
    assert health["frames_dropped"] == 0 and health["frames_inferred"] == len(x_test)
    assert health["model_sha256"] == read_bundle(digits_bundle).manifest.model.sha256


def test_check_passes_and_fails_on_golden_vectors(digits_bundle: Path, tmp_path: Path) -> None:
    code, _, stderr = run_agent("--bundle", digits_bundle, command="check")
    assert code == 0, stderr
    bundle = read_bundle(digits_bundle)
    golden = bundle.manifest.golden[0]
    wrong = GoldenVector.model_validate({**golden.model_dump(), "expected_top1": (golden.expected_top1 + 1) % 10})
    manifest = bundle.manifest.model_copy(update={"golden": [wrong, *bundle.manifest.golden[1:]]})
    broken = tmp_path / "broken.bundle"
    write_bundle(broken, manifest, bundle.model_bytes, dict(bundle.files))
    code, _, stderr = run_agent("--bundle", broken, command="check")
    assert code == 1


def test_digits_in_an_image_folder_quick_form(digits_data: tuple[np.ndarray, ...], digits_bundle: Path,
                                               tmp_path: Path) -> None:
    _, _, x_test, y_test = digits_data
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(20):
        cv2.imwrite(str(folder / f"{i:04d}.png"), x_test[i])
    code, messages, stderr = run_agent("--bundle", digits_bundle, "--source", folder, "--events", "every",
                                       "--threads", "2", "--state-dir", tmp_path / "s")
    assert code == 0, stderr
    predicted = [int(r["classes"][0]["label"]) for r in events(messages, "evt/classification")]
    assert np.mean(np.array(predicted) == y_test[:20]) >= 0.9
