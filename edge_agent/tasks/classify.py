"""Image classification: top-k classes with a score threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.model.manifest import Manifest, TensorSpec
from edge_agent.sources.base import Item
from edge_agent.tasks.base import ImageTask, Result, default_labels, get_scores, score_shape, top_classes


class ClassifyTask(ImageTask):
    event_type = "classification"

    def __init__(self, manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        super().__init__(manifest, labels, inputs, outputs)
        self.num_classes = score_shape(outputs[0], len(labels), "classification")
        self.labels = default_labels(labels, self.num_classes)

    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        scores = get_scores(outputs[0], self.output_specs[0], self.activation, self.num_classes)
        classes = top_classes(scores, self.labels, self.top_k, self.threshold)
        body = {"frame": item.index, "classes": [c.as_dict() for c in classes]}
        return Result(self.event_type, body, (classes[0].label if classes else None,))
