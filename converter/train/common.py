"""Shared pieces of the fine-tuning modules: data, losses, TensorBoard scalars, export.

Runs only inside the TensorFlow child (:mod:`converter.worker`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PRUNABLE = ("Conv2D", "Dense", "DepthwiseConv2D", "Conv1D", "SeparableConv2D")


class TrainError(Exception):
    """Fine-tuning cannot run (unsupported model, bad data)."""


def load_keras(model_path: str) -> Any:
    """Load a ``.keras``/``.h5`` model for training (a SavedModel cannot be fine-tuned in Keras 3)."""
    import keras

    if Path(model_path).is_dir():
        raise TrainError(f"{model_path} is a SavedModel; fine-tuning needs the Keras model "
                         "(.keras or .h5 file), Keras 3 cannot train a SavedModel")
    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as exc:
        raise TrainError(f"cannot load {model_path} for fine-tuning: {str(exc).strip()[:300]}") from exc


def load_train(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs (already preprocessed like the device does) and integer labels."""
    with np.load(path) as data:
        return np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64)


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=256, verbose=0), np.float32)


def outputs_are_probabilities(outputs: np.ndarray) -> bool:
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def packed_targets(y: np.ndarray, soft: np.ndarray | None, n_classes: int) -> np.ndarray:
    """``[one-hot label | teacher probabilities]`` per row, for :func:`make_loss`."""
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    return np.concatenate([onehot, onehot if soft is None else soft.astype(np.float32)], axis=1)


def make_loss(n_classes: int, from_logits: bool, alpha: float, temperature: float) -> Any:
    """``alpha * CE(label) + (1 - alpha) * T² KL(teacher_T || student_T)`` on packed targets."""
    import tensorflow as tf

    def loss(y_true: Any, y_pred: Any) -> Any:
        onehot, soft = y_true[:, :n_classes], y_true[:, n_classes:]
        logits = y_pred if from_logits else tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))
        ce = tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)
        teacher_logits = tf.math.log(tf.clip_by_value(soft, 1e-7, 1.0)) / temperature
        student_logp = tf.nn.log_softmax(logits / temperature)
        teacher_p = tf.nn.softmax(teacher_logits)
        kl = tf.reduce_sum(teacher_p * (tf.nn.log_softmax(teacher_logits) - student_logp), axis=-1)
        return alpha * ce + (1.0 - alpha) * temperature**2 * kl

    return loss


def make_accuracy(n_classes: int) -> Any:
    import tensorflow as tf

    def accuracy(y_true: Any, y_pred: Any) -> Any:
        return tf.cast(tf.equal(tf.argmax(y_true[:, :n_classes], -1), tf.argmax(y_pred, -1)), tf.float32)

    return accuracy


def summary_callback(logdir: str | None) -> Any:
    """A Keras callback writing every epoch log value (loss, accuracy, sparsity) as a TensorBoard scalar."""
    import keras
    import tensorflow as tf

    class _Summaries(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.writer = tf.summary.create_file_writer(logdir) if logdir else None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            for key, value in (logs or {}).items():
                self.history.setdefault(key, []).append(round(float(value), 6))
            if self.writer is not None:
                # tf.summary.write with the scalars plugin's metadata is what
                # tensorboard's tf.summary.scalar does; TensorBoard need not be installed.
                from tensorflow.core.framework import summary_pb2

                meta = summary_pb2.SummaryMetadata(
                    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
                with self.writer.as_default():
                    for key, value in (logs or {}).items():
                        tf.summary.write(key, tf.constant(float(value), tf.float32), step=epoch + 1,
                                         metadata=meta)
                self.writer.flush()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self.writer is not None:
                self.writer.close()

    return _Summaries()


def count_params(model: Any) -> int:
    return int(model.count_params())


def export(model: Any, target: str) -> str:
    """Write the model as a SavedModel (the converter's only path from Keras 3 to TFLite)."""
    model.export(target, verbose=False)
    return target


def prunable_layers(model: Any) -> list[Any]:
    """Layers whose ``kernel`` pruning and per-channel weight fake quantisation apply to."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ in PRUNABLE and getattr(layer, "kernel", None) is not None:
            out.append(layer)
    return out
