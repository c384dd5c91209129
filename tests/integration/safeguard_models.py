"""A digit classifier with a dynamic input size, built in a child process for the safeguard tests.

``python -m tests.integration.safeguard_models OUT`` writes:

* ``OUT/dynamic.keras``: Keras model with input ``(None, None, 1)`` (any image size), trained
  briefly on the 32x32 digits of :func:`converter.examples.digits_split`; convolutions and a
  global max pool, so it runs at any size, but TFLite needs one fixed size;
* ``OUT/dynamic_sm``: the same model as a SavedModel (serving signature ``(None, None, None, 1)``);
* ``OUT/train`` and ``OUT/test``: 32x32 PNG class folders (``0`` .. ``9``) of the same split;
  ``OUT/flat``: the test images without class folders (unlabelled);
* ``OUT/info.json``: ``{"accuracy": float test accuracy at 32x32}``.

The model has its own ``Rescaling(1/255)`` layer, so ``--std 255`` normalises twice: the
issue's near-chance case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def build(out: Path, epochs: int = 8) -> dict[str, float]:
    import cv2
    import keras

    from converter.examples import _seed_everything, digits_split, write_image_folder

    _seed_everything(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = keras.Sequential([
        keras.Input(shape=(None, None, 1), name="image"),
        keras.layers.Rescaling(1.0 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.GlobalMaxPooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train[..., None].astype("float32"), y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test[..., None].astype("float32"), y_test, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    write_image_folder(x_train, y_train, out / "train")
    write_image_folder(x_test, y_test, out / "test")
    (out / "flat").mkdir()
    for i, image in enumerate(x_test[:120]):
        cv2.imwrite(str(out / "flat" / f"img{i:03d}.png"), image)
    model.save(out / "dynamic.keras")
    model.export(str(out / "dynamic_sm"), verbose=False)
    info = {"accuracy": float(accuracy)}
    (out / "info.json").write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
