"""The shapes detector's independent check: run each exported model and score it on the test images.

Outputs are read with ai-edge-litert and decoded by NumPy code written independently of
the agent's decoders; the metrics are the best detection per test image, in source pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converter.shapes_data import GRID, LABELS, SIZE, SSD_SCALE, letterbox


def _run_tflite(path: Path, image: np.ndarray) -> list[np.ndarray]:
    """Float outputs of a TFLite model for one uint8 64x64 RGB image, in the model's output order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = image[None].astype(np.float32) / 255.0
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    outs = []
    for det in interpreter.get_output_details():
        y = interpreter.get_tensor(det["index"])
        if det["dtype"] == np.int8:
            scale, zero = det["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        outs.append(y.astype(np.float32))
    return outs


def output_shapes(path: Path) -> list[list[int]]:
    """The model's output tensor shapes, in its output order."""
    from ai_edge_litert.interpreter import Interpreter

    return [[int(v) for v in d["shape"]] for d in Interpreter(model_path=str(path)).get_output_details()]


def decode_best(layout: str, outputs: list[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """(class, normalised xyxy box, normalised keypoint) of the highest-scoring cell."""
    if layout in ("v8", "v8_pixels"):
        rows = outputs[0][0].T  # [N, 4 + C]
        boxes, scores = rows[:, :4] / (SIZE if layout == "v8_pixels" else 1.0), rows[:, 4:]
    elif layout == "v5":
        rows = outputs[0][0]
        boxes, scores = rows[:, :4], rows[:, 4:5] * rows[:, 5:]
    else:
        logits = next(o for o in outputs if o.shape[-1] == len(LABELS))[0]
        raw = next(o for o in outputs if o.shape[-1] == 6)[0]
        cols, rows_ = np.meshgrid(np.arange(GRID), np.arange(GRID))
        ax, ay = (cols.reshape(-1) + 0.5) / GRID, (rows_.reshape(-1) + 0.5) / GRID
        boxes = np.stack([raw[:, 0] / SSD_SCALE + ax, raw[:, 1] / SSD_SCALE + ay,
                          raw[:, 2] / SSD_SCALE, raw[:, 3] / SSD_SCALE], axis=1)
        keypoints = np.stack([raw[:, 4] / SSD_SCALE + ax, raw[:, 5] / SSD_SCALE + ay], axis=1)
        scores = 1.0 / (1.0 + np.exp(-logits))
    best = int(np.argmax(scores.max(axis=1)))
    cx, cy, w, h = boxes[best]
    keypoint = keypoints[best] if layout == "ssd" else np.array([cx, cy])
    return int(np.argmax(scores[best])), np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), keypoint


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def evaluate(path: Path, layout: str, out: Path, truth: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Mean IoU of the best detection, label accuracy and worst keypoint error (source px) on the test images."""
    ious, hits, kp_errors = [], [], []
    for name, objects in sorted(truth.items()):
        bgr = cv2.imread(str(out / "test_images" / name))
        assert bgr is not None, name
        boxed, scale, off_x, off_y = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        class_id, box, keypoint = decode_best(layout, _run_tflite(path, boxed))
        offset = np.array([off_x, off_y, off_x, off_y], dtype=np.float32)
        source_box = (box * SIZE - offset) / scale
        ious.append(box_iou(source_box, np.asarray(objects[0]["box"])))
        hits.append(LABELS[class_id] == objects[0]["label"])
        t = objects[0]["box"]
        kp = (keypoint * SIZE - offset[:2]) / scale
        kp_errors.append(float(np.hypot(kp[0] - (t[0] + t[2]) / 2, kp[1] - (t[1] + t[3]) / 2)))
    return {"iou": round(float(np.mean(ious)), 4), "min_iou": round(float(np.min(ious)), 4),
            "accuracy": round(float(np.mean(hits)), 4), "max_keypoint_error": round(max(kp_errors), 2)}
