"""Image classification: top-k classes with a score threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.sources.base import Item
from edge_agent.tasks.base import ImageTask, Result, get_scores, top_classes


class ClassifyTask(ImageTask):
    event_type = "classification"

    def decode(self, outputs: list[np.ndarray], item: Item, context: Any) -> Result | None:
        scores = get_scores(outputs[0], self.output_specs[0], self.manifest.output.apply_softmax)
        classes = top_classes(scores, self.labels, self.top_k, self.threshold)
        body = {"frame": item.index, "classes": [c.as_dict() for c in classes]}
        return Result(self.event_type, body, (classes[0].label if classes else None,))
