"""SSD heads with raw box regressions and generated anchors (MediaPipe detectors).

:func:`generate_anchors` follows MediaPipe's ``SsdAnchorsCalculator`` and
:func:`decode_boxes` its ``TensorsToDetectionsCalculator``, option for option, so
the options can be copied from a model's graph file into ``[output.anchors]`` and
``[output.box_decoding]``. Everything is normalised to the model input.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.model.manifest import BoxDecoding, SsdAnchors

MAX_ANCHORS = 1_000_000


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def generate_anchors(opts: SsdAnchors) -> np.ndarray:
    """Anchors as an (N, 4) float32 array of ``x_center, y_center, w, h``.

    Order: layer by layer (layers with the same stride merged), then rows, columns,
    and the anchors of one cell — the order of the model's outputs.
    """
    anchors: list[tuple[float, float, float, float]] = []
    n_strides = len(opts.strides)
    layer = 0
    while layer < opts.num_layers:
        heights: list[float] = []
        widths: list[float] = []
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < n_strides and opts.strides[last] == opts.strides[layer]:
            scale = _scale(opts.min_scale, opts.max_scale, last, n_strides)
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(opts.aspect_ratios)
                scales += [scale] * len(opts.aspect_ratios)
                if opts.interpolated_scale_aspect_ratio > 0.0:
                    following = 1.0 if last == n_strides - 1 else _scale(
                        opts.min_scale, opts.max_scale, last + 1, n_strides)
                    scales.append(math.sqrt(scale * following))
                    ratios.append(opts.interpolated_scale_aspect_ratio)
            last += 1
        if last == layer:  # feature maps given without strides: one layer at a time
            last = layer + 1
            scale = _scale(opts.min_scale, opts.max_scale, layer, opts.num_layers)
            ratios += list(opts.aspect_ratios)
            scales += [scale] * len(opts.aspect_ratios)
        for ratio, scale in zip(ratios, scales, strict=True):
            root = math.sqrt(ratio)
            heights.append(scale / root)
            widths.append(scale * root)
        if opts.feature_map_height:
            rows, cols = opts.feature_map_height[layer], opts.feature_map_width[layer]
        else:
            stride = opts.strides[layer]
            rows = math.ceil(opts.input_size_height / stride)
            cols = math.ceil(opts.input_size_width / stride)
        if len(anchors) + rows * cols * len(heights) > MAX_ANCHORS:
            raise ValueError(f"the anchor options give more than {MAX_ANCHORS} anchors; check strides and sizes")
        for y in range(rows):
            for x in range(cols):
                cx = (x + opts.anchor_offset_x) / cols
                cy = (y + opts.anchor_offset_y) / rows
                for w, h in zip(widths, heights, strict=True):
                    anchors.append((cx, cy, 1.0, 1.0) if opts.fixed_anchor_size else (cx, cy, w, h))
        layer = last
    return np.asarray(anchors, dtype=np.float32).reshape(-1, 4)


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, dec: BoxDecoding) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` as normalised ``x0, y0, x1, y1`` and keypoints ``(N, K, 2)`` as ``x, y``.

    ``raw`` is the dequantised ``(N, num_coords)`` regression output.
    """
    o = dec.box_coord_offset
    if dec.reverse_output_order:
        x, y, w, h = raw[:, o], raw[:, o + 1], raw[:, o + 2], raw[:, o + 3]
    else:
        y, x, h, w = raw[:, o], raw[:, o + 1], raw[:, o + 2], raw[:, o + 3]
    ax, ay, aw, ah = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    cx = x / dec.x_scale * aw + ax
    cy = y / dec.y_scale * ah + ay
    if dec.apply_exponential_on_box_size:
        # Clipped like the logits of a sigmoid: a hostile regression must not overflow exp().
        w = np.exp(np.clip(w / dec.w_scale, -80.0, 80.0)) * aw
        h = np.exp(np.clip(h / dec.h_scale, -80.0, 80.0)) * ah
    else:
        w = w / dec.w_scale * aw
        h = h / dec.h_scale * ah
    boxes = np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=1).astype(np.float32)
    points = np.zeros((raw.shape[0], dec.num_keypoints, 2), dtype=np.float32)
    for k in range(dec.num_keypoints):
        start = dec.keypoint_coord_offset + k * dec.num_values_per_keypoint
        first, second = raw[:, start], raw[:, start + 1]
        kx, ky = (first, second) if dec.reverse_output_order else (second, first)
        points[:, k, 0] = kx / dec.x_scale * aw + ax
        points[:, k, 1] = ky / dec.y_scale * ah + ay
    return boxes, points


def decode_scores(raw: np.ndarray, dec: BoxDecoding, sigmoid_too: bool = False) -> np.ndarray:
    """Scores ``(N, C)``: clipped and squashed by a sigmoid when ``sigmoid_score`` is set."""
    scores = raw.astype(np.float32, copy=False)
    if dec.sigmoid_score or sigmoid_too:
        if dec.score_clipping_thresh is not None:
            scores = np.clip(scores, -dec.score_clipping_thresh, dec.score_clipping_thresh)
        scores = (1.0 / (1.0 + np.exp(-np.clip(scores, -80.0, 80.0)))).astype(np.float32)
    return scores
