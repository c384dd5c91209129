"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019), inside the TensorFlow child.

Two weight layers in a chain, A (Conv2D, DepthwiseConv2D or Dense, activation ReLU or linear) and B
(Conv2D, DepthwiseConv2D or Dense) reading A's output — directly or through layers that commute with
a positive scale per channel (pooling, dropout, flatten, a plain ReLU) — compute the same function
when output channel ``i`` of A is divided by ``s_i`` (kernel and bias) and B's input weights of that
channel are multiplied by ``s_i``: ReLU is positively homogeneous. With ``s_i = sqrt(r1_i / r2_i)``,
where ``r1_i`` is the largest absolute weight of A's channel and ``r2_i`` of B's input channel, both
become ``sqrt(r1_i * r2_i)``: a channel whose weights (and so activations) span hundreds of times
the others' is brought back in line, which is what per-tensor int8 activations need.

Data-free and exact in float (up to rounding); applied to chains only: a layer whose output is
read by more than one layer (a skip connection) is left alone, as are grouped convolutions, a
depthwise convolution with a depth multiplier above 1 as the first layer, and pairs with batch
normalisation or any other activation (ReLU6 included: it is not homogeneous) between the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PASS_THROUGH = ("MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
                "Dropout", "SpatialDropout2D", "Flatten", "Identity", "ZeroPadding2D")
HOMOGENEOUS = ("relu", "linear")
PASSES = 2  # a second pass settles pairs whose scales moved through a shared layer
MIN_RANGE = 1e-12


def _activation(layer: Any) -> str:
    import keras

    act = getattr(layer, "activation", None)
    return str(keras.activations.serialize(act)) if act is not None else "linear"


def _weight_layer(layer: Any, second: bool = False) -> bool:
    """A Conv2D (not grouped), a Dense, or a DepthwiseConv2D: as the second layer of a pair its input
    channel ``i`` is read only by its own filters, on the same axis as a Conv2D's; as the first, its
    output channel ``i`` is input channel ``i`` filtered (depth multiplier 1 only)."""
    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return False
        return second or int(getattr(layer, "depth_multiplier", 1)) == 1
    if kind == "Conv2D":
        return int(getattr(layer, "groups", 1)) == 1 and getattr(layer, "data_format", "channels_last") == \
            "channels_last"
    return kind == "Dense" and len(layer.kernel.shape) == 2


def _plain_relu(layer: Any) -> bool:
    if type(layer).__name__ != "ReLU":
        return False
    return getattr(layer, "max_value", None) is None and float(getattr(layer, "threshold", 0.0)) == 0.0


def _inputs(layer: Any) -> list[Any]:
    try:
        value = layer.input
    except (AttributeError, ValueError):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def chains(model: Any) -> list[tuple[Any, Any, bool]]:
    """(A, B, through_flatten) pairs that can be equalised (see the module doc)."""
    import keras

    layers = list(model.layers)
    sequential = isinstance(model, keras.Sequential)  # each layer reads the one before, and only it
    readers: dict[int, int] = {}
    for layer in layers:
        for tensor in _inputs(layer):
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1

    def reads_only(following: Any, current: Any) -> bool:
        if sequential:
            return True
        return readers.get(id(current.output), 0) == 1 and \
            [id(t) for t in _inputs(following)] == [id(current.output)]

    pairs: list[tuple[Any, Any, bool]] = []
    for index, first in enumerate(layers):
        if not _weight_layer(first) or _activation(first) not in HOMOGENEOUS:
            continue
        current, flattened = first, False
        for following in layers[index + 1:]:
            if not reads_only(following, current):
                break
            kind = type(following).__name__
            if _weight_layer(following, second=True):
                if not (flattened and kind != "Dense"):
                    pairs.append((first, following, flattened))
                break
            if kind in PASS_THROUGH or _plain_relu(following):
                flattened = flattened or kind == "Flatten"
                current = following
                continue
            break
    return pairs


def _rows(kernel_b: np.ndarray, channels: int, flattened: bool) -> list[np.ndarray]:
    """Index arrays of B's input weights per channel of A (its input axis is -2 for Conv2D, 0 for Dense)."""
    size = kernel_b.shape[-2]
    if flattened:
        return [np.arange(c, size, channels) for c in range(channels)]
    return [np.array([c]) for c in range(channels)]


def equalize_pair(first: Any, second: Any, flattened: bool) -> float:
    """Rescale one pair in place; returns the largest factor applied."""
    kernel_a, *rest_a = first.get_weights()
    kernel_b, *rest_b = second.get_weights()
    depthwise = type(first).__name__ == "DepthwiseConv2D"  # (h, w, channels, 1): output channel on axis -2
    if depthwise:
        kernel_a = kernel_a[..., 0]
    channels = kernel_a.shape[-1]
    rows = _rows(kernel_b, channels, flattened)
    if sum(len(r) for r in rows) != kernel_b.shape[-2]:
        return 1.0  # B does not read exactly A's channels (e.g. a reshape we did not follow)
    r1 = np.abs(kernel_a).reshape(-1, channels).max(axis=0)
    b_in = np.moveaxis(kernel_b, -2, 0)
    r2 = np.array([np.abs(b_in[r]).max() for r in rows])
    scale = np.where((r1 > MIN_RANGE) & (r2 > MIN_RANGE), np.sqrt(r1 / np.maximum(r2, MIN_RANGE)), 1.0)
    kernel_a = kernel_a / scale
    if rest_a:
        rest_a[0] = rest_a[0] / scale
    for channel, index in enumerate(rows):
        b_in[index] *= scale[channel]
    if depthwise:
        kernel_a = kernel_a[..., None]
    first.set_weights([kernel_a.astype(np.float32), *rest_a])
    second.set_weights([np.moveaxis(b_in, 0, -2).astype(np.float32), *rest_b])
    return float(max(scale.max(), 1.0 / scale.min()))


def equalize(model: Any) -> list[dict[str, Any]]:
    """Equalise every chain pair of ``model`` in place; what was done, per pair."""
    done: dict[tuple[str, str], float] = {}
    for _ in range(PASSES):
        for first, second, flattened in chains(model):
            factor = equalize_pair(first, second, flattened)
            key = (first.name, second.name)
            done[key] = max(done.get(key, 1.0), factor)
    return [{"first": a, "second": b, "max_factor": round(f, 3)} for (a, b), f in done.items()]
