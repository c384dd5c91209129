"""A digits classifier that plain int8 post-training quantisation hurts (for the recovery ladder).

A small CNN is trained on scikit-learn digits, then one output channel of its first convolution is
multiplied by ``SCALE``; the batch normalisation after it (Conv-ReLU-BN, as some models order them)
takes that channel's mean times ``SCALE`` and its variance so that its standard deviation grows as
much. ReLU is positively homogeneous, so the float model computes the same function, but the first
convolution's output now has one channel whose range is hundreds of times the others': with one int8
scale per activation tensor the other channels fall into a step or two and accuracy collapses.
Cross-layer equalisation cannot move that range (batch normalisation stands between the two
convolutions); keeping the layer in float can.

``python -m tests.integration.ladder_model OUT`` writes ``ladder.keras``, PNG class folders
``train``/``test`` and ``info.json`` (float accuracy) in a child process (TensorFlow stays out of
the test process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from converter.examples import DIGIT_SIZE, digits_split, write_image_folder

SCALE = 400.0


def build(out: Path, epochs: int = 20) -> dict[str, object]:
    import keras

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = keras.Sequential([
        keras.Input(shape=(DIGIT_SIZE, DIGIT_SIZE, 1), name="image"),
        keras.layers.Rescaling(1.0 / 255.0),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax", name="head"),
    ], name="ladder")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    images = x_train.reshape(-1, DIGIT_SIZE, DIGIT_SIZE, 1).astype(np.float32)
    model.fit(images, y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    test_images = x_test.reshape(-1, DIGIT_SIZE, DIGIT_SIZE, 1).astype(np.float32)
    before = model.predict(test_images, verbose=0)
    conv1, bn1 = model.get_layer("conv1"), model.get_layer("bn1")
    # The most active channel (a dead one would make the rescaling a no-op).
    probe = keras.Model(model.inputs, conv1.output).predict(images[:300], verbose=0)
    channel = int(np.argmax(probe.reshape(-1, probe.shape[-1]).mean(axis=0)))
    k1, b1 = conv1.get_weights()
    k1[..., channel] *= SCALE
    b1[channel] *= SCALE
    conv1.set_weights([k1, b1])
    gamma, beta, mean, variance = bn1.get_weights()
    mean[channel] *= SCALE
    # (x S - m S) / sqrt(v' + eps) equals (x - m) / sqrt(v + eps) when v' + eps = S² (v + eps)
    variance[channel] = SCALE * SCALE * (variance[channel] + bn1.epsilon) - bn1.epsilon
    bn1.set_weights([gamma, beta, mean, variance])
    after = model.predict(test_images, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "ladder.keras")
    write_image_folder(x_train, y_train, out / "train")
    write_image_folder(x_test, y_test, out / "test")
    info: dict[str, object] = {
        "model": str(out / "ladder.keras"), "train": str(out / "train"), "test": str(out / "test"),
        "accuracy": float(np.mean(np.argmax(after, axis=1) == y_test)),
        "rescale_max_abs_diff": float(np.max(np.abs(after - before))),
        "scale": SCALE, "channel": channel,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
