"""Recognise what a model's outputs are, for ``edge-agent inspect`` and starting sidecars.

A guess from shapes only (the same rules the decoders check at load): a sidecar
written from it still has to be read by a person, since shapes cannot tell an
SSD's anchors or whether scores are logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.model.manifest import TensorSpec


@dataclass(frozen=True)
class OutputGuess:
    """The task and output format a model's outputs look like."""

    task: str
    detection_format: str | None
    summary: str
    output: dict[str, object] = field(default_factory=dict)


def _dims(spec: TensorSpec) -> list[int]:
    shape = list(spec.shape)
    return shape[1:] if len(shape) > 1 and shape[0] == 1 else shape


def recognise_outputs(outputs: list[TensorSpec], n_labels: int = 0) -> OutputGuess:
    """The most likely task and format of these output tensors (``n_labels`` 0 when unknown)."""
    shapes = [list(s.shape) for s in outputs]
    dims = [_dims(s) for s in outputs]
    if len(outputs) == 4:
        from edge_agent.tasks.detect import match_postprocess_outputs

        try:
            match_postprocess_outputs(outputs)
        except ValueError:
            pass
        else:
            return OutputGuess("detect", "tflite_postprocess",
                               f"tflite_postprocess (TFLite_Detection_PostProcess outputs {shapes}: boxes, classes, "
                               "scores, count)", {"detection_format": "tflite_postprocess", "score_threshold": 0.5})
    if len(outputs) == 2 and all(len(d) == 2 for d in dims) and dims[0][0] == dims[1][0]:
        widths = [d[1] for d in dims]
        n = dims[0][0]
        if 4 in widths and (widths.count(4) == 1 or n_labels == 4):
            box = widths.index(4)
            classes = widths[1 - box]
            return OutputGuess("detect", "raw_boxes",
                               f"raw_boxes ({n} boxes {shapes[box]} and scores {shapes[1 - box]} for {classes} "
                               "classes; NMS on the device; check box_format)",
                               {"detection_format": "raw_boxes", "box_format": "yxyx", "score_threshold": 0.5,
                                "iou_threshold": 0.5})
        coords = max(widths)
        box = widths.index(coords)
        classes = widths[1 - box]
        keypoints = (coords - 4) // 2
        return OutputGuess("detect", "ssd_anchors",
                           f"ssd_anchors ({n} anchors: regressions {shapes[box]} with {coords} values "
                           f"(4 box + {keypoints} keypoints?), scores {shapes[1 - box]} for {classes} class(es); "
                           "copy [output.anchors] and [output.box_decoding] from the model's graph)",
                           {"detection_format": "ssd_anchors", "score_threshold": 0.5, "iou_threshold": 0.3,
                            "box_decoding": {"num_coords": coords, "num_keypoints": keypoints,
                                             "keypoint_coord_offset": 4, "sigmoid_score": True}})
    if len(outputs) == 1 and len(dims[0]) == 2 and min(dims[0]) >= 5:
        from edge_agent.tasks.yolo import yolo_layout

        a, b = dims[0]
        plausible = max(a, b) >= 8 * min(a, b) or n_labels
        if plausible:
            try:
                layout = yolo_layout(shapes[0], n_labels, outputs[0].name)
            except ValueError:
                pass
            else:
                return OutputGuess("detect", "yolo", f"yolo ({layout.describe()})",
                                   {"detection_format": "yolo", "score_threshold": 0.25, "iou_threshold": 0.45,
                                    "max_detections": 100})
    if len(outputs) >= 1 and dims[0]:
        classes = dims[0][-1]
        frames = [d for d in dims[0][:-1] if d != 1]
        if len(frames) <= 1:
            per = f" per frame over {frames[0]} frames (averaged)" if frames else ""
            return OutputGuess("classify", None, f"classification ({classes} class scores{per}, shape {shapes[0]})",
                               {"top_k": min(5, classes)})
    return OutputGuess("classify", None, f"unrecognised outputs {shapes}", {})
