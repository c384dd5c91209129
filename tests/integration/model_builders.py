"""Small TensorFlow models with awkward ops, built in a child process for converter tests.

``python -m tests.integration.model_builders OUT`` writes:

* ``OUT/sin``: SavedModel (8x8x1 image in, 10 softmax out) with a ``tf.sin``,
  which has no int8 kernel: the converter leaves it in float even when asked
  for int8 builtins only (a silent float fallback the converter must report).
* ``OUT/erf``: the same with ``tf.math.erf``, which has no TFLite builtin at all.
* ``OUT/data.npz``: raw uint8 8x8 digit images (``x``) and labels (``y``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(out: Path) -> None:
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    class _Model(tf.Module):
        def __init__(self, fn: object) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.w = tf.Variable(rng.normal(0, 0.3, (64, 10)).astype("float32"))
            self.fn = fn

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")])
        def serve(self, x: tf.Tensor) -> tf.Tensor:
            flat = tf.reshape(x / 255.0, [-1, 64])
            return tf.nn.softmax(tf.matmul(self.fn(flat * 3.0), self.w))  # type: ignore[operator]

    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("sin", tf.sin), ("erf", tf.math.erf)):
        model = _Model(fn)
        tf.saved_model.save(model, str(out / name), signatures=model.serve)
    digits = load_digits()
    x = (digits.images[:300] * (255.0 / 16.0)).astype(np.uint8)
    np.savez(out / "data.npz", x=x, y=digits.target[:300].astype(np.int64))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
