"""A digits model that plain post-training int8 quantisation hurts (for the QAT tests).

``python -m tests.integration.compress_models DIGITS.keras OUT.keras`` copies the digits CNN and
multiplies one output channel of its first convolution by :data:`OUTLIER` (kernel and bias),
dividing the matching input weights of the next convolution by the same factor. ReLU is
positively homogeneous, so the float model computes exactly the same function, but that one
activation channel now spans hundreds of times the others' range: per-tensor int8 activations
leave the other channels one or two quantisation steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUTLIER = 300.0


def build_outlier(source: Path, target: Path, factor: float = OUTLIER, kind: str = "Dense") -> Path:
    import keras
    import numpy as np

    model = keras.models.load_model(str(source), compile=False)
    layers = [layer for layer in model.layers if type(layer).__name__ == kind]
    first, second = layers[0], layers[1]
    kernel, bias = first.get_weights()
    channel = int(np.argmax(np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)))
    kernel[..., channel] *= factor
    bias[channel] *= factor
    first.set_weights([kernel, bias])
    kernel2, bias2 = second.get_weights()
    if kind == "Dense":
        kernel2[channel, :] /= factor
    else:
        kernel2[:, :, channel, :] /= factor
    second.set_weights([kernel2, bias2])
    model.save(str(target))
    return target


if __name__ == "__main__":
    build_outlier(Path(sys.argv[1]), Path(sys.argv[2]))
