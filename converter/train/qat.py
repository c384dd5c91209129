"""Quantisation-aware training (Keras 3 native) for full-int8 TFLite conversion.

Contract (the recovery ladder calls this inside the TensorFlow child)::

    qat_finetune(model_path, train_npz, epochs, logdir, out_dir) -> savedmodel_dir

* ``model_path``: the user's ``.keras``/``.h5`` file (a SavedModel cannot be trained in
  Keras 3: :class:`~converter.train.common.TrainError`);
* ``train_npz``: ``.npz`` with ``x`` (float32 model inputs, preprocessed as the device does)
  and ``y`` (int class indices);
* ``epochs``: fine-tuning epochs (3 is usually enough); ``logdir``: TensorBoard folder or None;
* ``out_dir``: a fresh folder; the fine-tuned model is exported there as a SavedModel (float
  kernels, activation FakeQuant ops), whose path is returned. Convert it with the usual
  full-int8 PTQ (``converter.worker._int8_convert``: representative dataset, int8 builtins);
  the FakeQuant ranges become the activation ranges. :func:`run_qat` does the same and also
  returns the training history.

First, cross-layer equalisation (:mod:`converter.train.equalize`): where one channel's weights
span far more than the others', it is scaled down and the next layer's matching weights up (the
same float function). Per-tensor int8 activations can then hold every channel; plain QAT would have
to learn that range change with small steps, and does not in a few epochs. The equalised model
is also converted without fine-tuning (``equalized_savedmodel``), so the report shows what each
step adds.

Then every Conv2D / DepthwiseConv2D / Dense is wrapped so that, while training, its kernel goes
through per-channel symmetric int8 fake quantisation (as TFLite quantises weights) and its
output through per-tensor 8-bit fake quantisation with an exponential moving average of the
batch range (as TFLite quantises activations). The loss is the label cross-entropy plus a
distillation term towards the original float model's own outputs, which keeps top-1
agreement with the original high. The export keeps the activation fake-quant ops (their ranges
become the int8 tensors' ranges: re-calibrating would move the grid the weights were tuned to)
and plain float kernels, which the converter quantises per channel itself (fake-quant weight ops
do not convert for FULLY_CONNECTED, whose kernel TFLite transposes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.train import common, equalize

EMA = 0.9
LEARNING_RATE = 1e-4
ALPHA = 0.5  # weight of the label loss; the rest pulls towards the original float outputs
TEMPERATURE = 2.0
NO_DROPOUT = True


def _wrapper_class() -> Any:
    import keras
    import tensorflow as tf

    class FakeQuant(keras.layers.Layer):  # type: ignore[misc]
        """Fake int8 quantisation around one Conv2D/DepthwiseConv2D/Dense (see the module doc)."""

        def __init__(self, source: Any, **kwargs: Any) -> None:
            super().__init__(name=f"{source.name}_qat", **kwargs)
            self.kind = type(source).__name__
            self.inner = type(source).from_config(source.get_config())
            self.act_name = keras.activations.serialize(source.activation)
            self.act = source.activation
            self._initial = source.get_weights()
            self.export_mode = False

        def build(self, input_shape: Any) -> None:
            self.inner.build(input_shape)
            self.inner.set_weights(self._initial)
            self.ranges = self.add_weight(shape=(3,), initializer="zeros", trainable=False, name="ranges")
            self.built = True

        def _kernel(self) -> Any:
            kernel = tf.convert_to_tensor(self.inner.kernel)
            if self.kind == "DepthwiseConv2D":
                return kernel  # its per-channel axis is not the last one; weights stay float here
            if self.export_mode:
                # The converter quantises weights itself (per channel); fake-quant weight ops
                # would not convert for FULLY_CONNECTED (transposed kernel, per-channel axis).
                return kernel
            axes = list(range(len(kernel.shape) - 1))
            bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-8))
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                kernel, -bound, bound, num_bits=8, narrow_range=True)

        def _quant_act(self, y: Any, training: bool | None) -> Any:
            if training:
                lo, hi = tf.minimum(tf.reduce_min(y), 0.0), tf.maximum(tf.reduce_max(y), 0.0)
                seen = self.ranges[2] > 0
                new_lo = tf.where(seen, EMA * self.ranges[0] + (1 - EMA) * lo, lo)
                new_hi = tf.where(seen, EMA * self.ranges[1] + (1 - EMA) * hi, hi)
                self.ranges.assign(tf.stack([new_lo, new_hi, 1.0]))
            lo = tf.minimum(self.ranges[0], 0.0)
            hi = tf.maximum(self.ranges[1], lo + 1e-6)
            return tf.quantization.fake_quant_with_min_max_vars(y, lo, hi, num_bits=8)

        def call(self, x: Any, training: bool | None = None) -> Any:
            inner = self.inner
            kernel = self._kernel()
            if self.kind == "Dense":
                z = tf.matmul(x, kernel) if len(x.shape) == 2 else tf.tensordot(x, kernel, 1)
            elif self.kind == "DepthwiseConv2D":
                z = keras.ops.depthwise_conv(x, kernel, strides=inner.strides, padding=inner.padding,
                                             data_format=inner.data_format, dilation_rate=inner.dilation_rate)
            else:
                z = keras.ops.conv(x, kernel, strides=inner.strides, padding=inner.padding,
                                   data_format=inner.data_format, dilation_rate=inner.dilation_rate)
            if getattr(inner, "use_bias", False):
                z = z + inner.bias
            if self.act_name == "softmax":
                # TFLite quantises the logits; the softmax output has a fixed 1/256 scale.
                return self.act(self._quant_act(z, training))
            return self._quant_act(self.act(z), training)

    return FakeQuant


def _supported(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "Dense", "DepthwiseConv2D"):
        return False
    if kind == "Conv2D" and getattr(layer, "groups", 1) != 1:
        return False
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def qat_model(model: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """The model with fake quantisation; returns it and (original layer, wrapper) pairs."""
    import keras

    wrapper = _wrapper_class()
    pairs: list[tuple[Any, Any]] = []

    def clone(layer: Any) -> Any:
        if NO_DROPOUT and type(layer).__name__ in ("Dropout", "SpatialDropout2D", "GaussianNoise"):
            # train on the activations (and ranges) inference will see
            return keras.layers.Identity(name=f"{layer.name}_off")
        if _supported(layer):
            wrapped = wrapper(layer)
            pairs.append((layer, wrapped))
            return wrapped
        return layer  # shared: its weights train in place

    qat = keras.models.clone_model(model, clone_function=clone)
    if not pairs:
        raise common.TrainError("the model has no Conv2D/DepthwiseConv2D/Dense layer to fine-tune")
    return qat, pairs


def run_qat(model_path: str, train_npz: str, epochs: int, logdir: str | None, out_dir: str
            ) -> dict[str, Any]:
    """Fine-tune with fake quantisation; export the float result to ``out_dir`` (see the module doc)."""
    import keras

    model = common.load_keras(model_path)
    x, y = common.load_train(train_npz)
    reference = common.predict(model, x)
    # Cross-layer equalisation first (the same float function): QAT then starts from ranges that
    # per-tensor int8 activations can hold, instead of having to learn them (see the module doc).
    equalized = equalize.equalize(model)
    equalized_saved = common.export(model, f"{out_dir}-equalized") if equalized else None
    n_classes = reference.shape[-1]
    probs = common.outputs_are_probabilities(reference)
    soft = reference if probs else _softmax(reference)
    qat, pairs = qat_model(model)
    qat.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                loss=common.make_loss(n_classes, not probs, alpha=ALPHA, temperature=TEMPERATURE),
                metrics=[common.make_accuracy(n_classes)])
    summaries = common.summary_callback(logdir)
    keras.utils.set_random_seed(0)
    qat.fit(x, common.packed_targets(y, soft, n_classes), epochs=epochs, batch_size=32, verbose=0,
            shuffle=True, callbacks=[summaries])
    for _, wrapped in pairs:
        wrapped.export_mode = True
    common.export(qat, out_dir)
    return {"mode": "qat", "savedmodel": out_dir, "epochs": epochs, "history": summaries.history,
            "params": common.count_params(model), "wrapped_layers": [o.name for o, _ in pairs],
            "equalized": equalized, "equalized_savedmodel": equalized_saved}


def qat_finetune(model_path: str, train_npz: str, epochs: int, logdir: str | None, out_dir: str) -> str:
    """Fine-tune with fake quantisation and return the exported SavedModel folder (module doc)."""
    return str(run_qat(model_path, train_npz, epochs, logdir, out_dir)["savedmodel"])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), np.float32)
