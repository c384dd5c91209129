"""The agent's ``window`` audio events with a multi-label (sigmoid) model, end to end.

The model (``tests/integration/multilabel_audio.py``) hears 0-3 of four spoken
words in each 2 s window; the scene holds one 2 s segment per window, spoken by
voices the model never heard in training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_helpers import events, run_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
]

THRESHOLD = 0.5  # score_threshold in the sidecar


def _run(model: dict[str, Any], sidecar: Path, state: Path) -> list[dict[str, Any]]:
    code, messages, stderr = run_agent("--bundle", model["model"], "--sidecar", sidecar,
                                       "--source", model["scene"], "--events", "every", "--state-dir", state)
    assert code == 0, stderr
    assert events(messages, "health")[-1]["frames_inferred"] == 5
    return events(messages, "evt/audio")


def _edit_sidecar(source: Path, target: Path, replacements: dict[str, str]) -> Path:
    text = source.read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} not once in the sidecar"
        text = text.replace(old, new)
    target.write_text(text)
    return target


def test_held_out_metrics_of_the_int8_model(multilabel_audio: dict[str, Any]) -> None:
    metrics = multilabel_audio["info"]["int8"]
    assert metrics["mean_ap"] >= 0.9, metrics
    assert metrics["exact_match"] >= 0.8, metrics
    for label, m in metrics["per_label"].items():
        assert m["precision"] >= 0.8 and m["recall"] >= 0.8, (label, m)


def test_one_event_per_window_with_every_label_heard(multilabel_audio: dict[str, Any], tmp_path: Path) -> None:
    truth: list[list[str]] = json.loads(multilabel_audio["scene_truth"].read_text())["windows"]
    labels: list[str] = multilabel_audio["labels"]
    found = _run(multilabel_audio, multilabel_audio["sidecar"], tmp_path / "s")

    heard: dict[int, set[str]] = {}
    for event in found:
        assert {"window", "t_start_s", "t_end_s", "classes"} <= event.keys(), event
        assert "label" not in event  # that is the keyword mode's field
        window = event["window"]
        assert window not in heard, f"two events for window {window}"
        assert event["t_start_s"] == pytest.approx(2.0 * window)
        assert event["t_end_s"] == pytest.approx(2.0 * window + 2.0)
        classes = event["classes"]
        assert 1 <= len(classes) <= len(labels), event  # windows with nothing heard publish nothing
        scores = [c["score"] for c in classes]
        assert scores == sorted(scores, reverse=True), event
        assert all(THRESHOLD <= s <= 1.0 for s in scores), event
        names = [c["label"] for c in classes]
        assert set(names) <= set(labels) and len(set(names)) == len(names), event
        heard[window] = set(names)

    assert set(heard) <= set(range(len(truth)))
    wrong = [i for i, expected in enumerate(truth) if heard.get(i, set()) != set(expected)]
    assert len(wrong) <= 1, f"windows {wrong} wrong: heard {heard}, expected {truth}"
    assert any(len(names) >= 2 for names in heard.values()), heard  # several labels in one event


def test_keyword_mode_of_the_same_model_reports_single_words(multilabel_audio: dict[str, Any],
                                                             tmp_path: Path) -> None:
    window_events = _run(multilabel_audio, multilabel_audio["sidecar"], tmp_path / "w")
    sidecar = _edit_sidecar(multilabel_audio["sidecar"], tmp_path / "keyword.toml", {
        'audio_events = "window"': 'audio_events = "keyword"',
        'activation = "sigmoid"': 'activation = "none"',
    })
    found = _run(multilabel_audio, sidecar, tmp_path / "k")

    assert found, "the keyword mode fired nothing"
    heard_by_window = [{c["label"] for c in e["classes"]} for e in window_events]
    assert [{e["label"]} for e in found] != heard_by_window
    labels = multilabel_audio["labels"]
    for event in found:
        # One word per event, the top one; classes are ranked but not cut at the threshold.
        assert event["label"] in labels
        assert event["classes"][0]["label"] == event["label"]
        assert sorted(c["label"] for c in event["classes"]) == sorted(labels)
        scores = [c["score"] for c in event["classes"]]
        # activation "none": raw logits, so scores outside [0, 1] (a word not heard is negative)
        assert min(scores) < 0.0 or max(scores) > 1.0, event
    # Keyword spotting fires at most once per window and never twice for one window.
    assert len(found) <= 5 and len({e["window"] for e in found}) == len(found)


def test_labels_not_matching_the_output_are_refused(multilabel_audio: dict[str, Any], tmp_path: Path) -> None:
    sidecar = _edit_sidecar(multilabel_audio["sidecar"], tmp_path / "three.toml", {
        'labels = ["red", "green", "blue", "stop"]': 'labels = ["red", "green", "blue"]',
    })
    code, messages, stderr = run_agent("--bundle", multilabel_audio["model"], "--sidecar", sidecar,
                                       "--source", multilabel_audio["scene"], "--state-dir", tmp_path / "s")
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "[1, 4]" in lines[0] and "3 labels" in lines[0], stderr
    assert events(messages, "evt/audio") == []
