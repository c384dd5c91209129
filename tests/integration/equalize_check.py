"""Cross-layer equalisation on small random models, in a child process (TensorFlow stays out of the
test process): ``python -m tests.integration.equalize_check`` prints one JSON line per model with the
pairs found, the factors applied and the largest change of the outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from converter.train.equalize import chains, equalize

WIDE = 300.0  # one channel's weights scaled up, the next layer's matching weights down


def _widen(first: Any, second: Any, channel: int) -> None:
    """Same float function, one channel ``WIDE`` times the others' range (as the outlier models)."""
    kernel, bias = first.get_weights()
    if type(first).__name__ == "DepthwiseConv2D":
        kernel[..., channel, 0] *= WIDE
    else:
        kernel[..., channel] *= WIDE
    bias[channel] *= WIDE
    first.set_weights([kernel, bias])
    weights = second.get_weights()
    weights[0][..., channel, :] /= WIDE
    second.set_weights(weights)


def _models() -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    # MobileNet-like: conv -> depthwise -> pointwise -> pool -> dense
    mobile = keras.Sequential([
        inputs,
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        keras.layers.Conv2D(16, 1, activation="relu", name="pw"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(10, name="head"),
    ], name="mobile")
    # a skip connection: conv_a's output has two readers, so it must not be rescaled
    x = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(a)
    c = keras.layers.Conv2D(8, 1, name="conv_c")(b)
    added = keras.layers.Add(name="add")([a, c])
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(added)
    skip = keras.Model(x, keras.layers.Dense(4, name="out")(pooled), name="skip")
    # batch normalisation between two convolutions: no pair
    bn = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
    ], name="bn")
    _widen(mobile.get_layer("conv"), mobile.get_layer("dw"), 2)
    _widen(mobile.get_layer("dw"), mobile.get_layer("pw"), 5)
    _widen(skip.get_layer("conv_b"), skip.get_layer("conv_c"), 1)
    return {"mobile": mobile, "skip": skip, "bn": bn}


def main() -> None:
    x = np.random.default_rng(1).normal(size=(16, 12, 12, 3)).astype(np.float32)
    for name, model in _models().items():
        before = model.predict(x, verbose=0)
        found = [[a.name, b.name, flat] for a, b, flat in chains(model)]
        done = equalize(model)
        after = model.predict(x, verbose=0)
        ranges = {layer.name: float(np.abs(layer.get_weights()[0]).max()) for layer in model.layers
                  if layer.get_weights() and type(layer).__name__ != "BatchNormalization"}
        print(json.dumps({"model": name, "pairs": found, "done": done, "ranges": ranges,
                          "max_abs_diff": float(np.abs(after - before).max()),
                          "output_scale": float(np.abs(before).max())}))


if __name__ == "__main__":
    main()
