"""Audio classification over sliding windows, in one of two event modes.

``keyword`` (spoken words): one word spans several overlapping windows; scores
are averaged over the last ``smoothing_windows`` windows, and an event fires when
a non-background label becomes the top label above the threshold, at most once
per activation and never within ``refractory_s`` of the previous event.

``window`` (multi-label species and sound-event models, BirdNET and YAMNet style):
every window with at least one label at or above the threshold is one event
listing those labels, best first.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from edge_agent.model.manifest import AudioPreprocess, Manifest, TensorSpec
from edge_agent.preprocess import audio_feature_shape, audio_features, fit_to_tensor, quantize
from edge_agent.sources.base import AudioWindow, Item
from edge_agent.tasks.base import (
    ClassScore,
    Result,
    Task,
    _check_input_size,
    default_labels,
    get_scores,
    label_of,
    score_shape,
)


class ScoreSmoother:
    """Mean of the last ``n`` score vectors."""

    def __init__(self, n: int) -> None:
        self._window: deque[np.ndarray] = deque(maxlen=max(1, n))

    def update(self, scores: np.ndarray) -> np.ndarray:
        self._window.append(scores)
        result: np.ndarray = np.mean(np.stack(tuple(self._window)), axis=0)
        return result

    def reset(self) -> None:
        self._window.clear()


class KeywordSpotter:
    """Turns smoothed per-window scores into discrete events."""

    def __init__(self, threshold: float, refractory_s: float, background: set[int]) -> None:
        self.threshold = threshold
        self.refractory_s = refractory_s
        self.background = background
        self._active: int | None = None
        self._last_event_t: float | None = None

    def update(self, t: float, scores: np.ndarray) -> int | None:
        """Index of a label that fires at time ``t``, or None."""
        top = int(np.argmax(scores))
        if top in self.background or scores[top] < self.threshold:
            self._active = None  # re-armed: the next word may fire
            return None
        if top == self._active:
            return None
        self._active = top
        if self._last_event_t is not None and t - self._last_event_t < self.refractory_s:
            return None
        self._last_event_t = t
        return top


class AudioTask(Task):
    event_type = "audio"

    def __init__(self, manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        super().__init__(manifest, labels, inputs, outputs)
        if not isinstance(manifest.preprocess, AudioPreprocess):
            raise TypeError("audio task needs an audio preprocess spec")
        self.preprocess_spec: AudioPreprocess = manifest.preprocess
        _check_input_size(audio_feature_shape(self.preprocess_spec), self.input_spec)
        self.num_classes = score_shape(outputs[0], len(labels), "audio classification")
        self.labels = labels = default_labels(labels, self.num_classes)
        spec = manifest.output
        self.mode = spec.audio_events
        background = {i for i, name in enumerate(labels) if name in set(spec.background_labels)}
        self.smoother = ScoreSmoother(spec.smoothing_windows)
        self.spotter = KeywordSpotter(self.threshold, spec.refractory_s, background)

    def configure(self, threshold: float | None = None, top_k: int | None = None) -> None:
        super().configure(threshold, top_k)
        self.spotter.threshold = self.threshold

    def prepare(self, item: Item) -> tuple[np.ndarray, Any]:
        if not isinstance(item, AudioWindow):
            raise TypeError("audio task got an image")
        features = audio_features(item.samples, self.preprocess_spec)
        tensor = quantize(fit_to_tensor(features, self.input_spec.shape), self.input_spec)
        return tensor, None

    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        assert isinstance(item, AudioWindow)
        scores = get_scores(outputs[0], self.output_specs[0], self.activation, self.num_classes)
        if self.mode == "window":
            return self._window_event(scores, item)
        smoothed = self.smoother.update(scores)
        fired = self.spotter.update(item.t_start_s, smoothed)
        if fired is None:
            return None
        ranked = [
            ClassScore(label_of(self.labels, int(i)), float(smoothed[i]))
            for i in np.argsort(-smoothed, kind="stable")
            if int(i) not in self.spotter.background
        ][: self.top_k]
        body = {
            "window": item.index,
            "label": label_of(self.labels, fired),
            "t_start_s": round(item.t_start_s, 3),
            "t_end_s": round(item.t_start_s + self.preprocess_spec.window_s, 3),
            "classes": [c.as_dict() for c in ranked],
        }
        return Result(self.event_type, body, (body["label"],), always=True)

    def _window_event(self, scores: np.ndarray, item: AudioWindow) -> Result | None:
        """One event for this window: every non-background label at or above the threshold."""
        background = self.spotter.background
        order = np.argsort(-scores, kind="stable")
        classes = [
            ClassScore(self.labels[int(i)], float(scores[i]))
            for i in order if int(i) not in background and scores[i] >= self.threshold
        ][: self.top_k]
        if not classes:
            return None
        body = {
            "window": item.index,
            "t_start_s": round(item.t_start_s, 3),
            "t_end_s": round(item.t_start_s + self.preprocess_spec.window_s, 3),
            "classes": [c.as_dict() for c in classes],
        }
        return Result(self.event_type, body, tuple(c.label for c in classes), always=True)
