"""Magnitude pruning with fine-tuning (Keras 3 native), before full-int8 conversion.

``run_prune(model_path, train_npz, sparsity, epochs, logdir, out_dir) -> dict``: the kernels of
every Conv2D/DepthwiseConv2D/Dense layer are pruned layer by layer to the smallest magnitudes,
following the polynomial schedule of the TF Model Optimization Toolkit
(``s(t) = S·(1 − (1 − t/T)³)``, masks updated every few steps up to 2/3 of the training, then
fine-tuning with the final masks). Masked weights are set to exactly zero after every batch, so
they stay zero in the exported SavedModel and in the int8 TFLite model (symmetric weight
quantisation maps 0 to 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.train import common

LEARNING_RATE = 5e-4
UPDATE_EVERY = 10


def polynomial_sparsity(step: int, end_step: int, target: float) -> float:
    """Sparsity at ``step`` of the cubic schedule reaching ``target`` at ``end_step``."""
    progress = min(1.0, step / max(1, end_step))
    return float(target * (1.0 - (1.0 - progress) ** 3))


def _pruner(layers: list[Any], target: float, end_step: int) -> Any:
    import keras

    class _Pruner(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.masks = [np.ones(tuple(layer.kernel.shape), np.float32) for layer in layers]

        def _update_masks(self, sparsity: float) -> None:
            for i, layer in enumerate(layers):
                weights = np.abs(np.asarray(layer.kernel.numpy()))
                k = round(sparsity * weights.size)
                mask = np.ones(weights.size, np.float32)
                if k > 0:
                    mask[np.argsort(weights, axis=None, kind="stable")[:k]] = 0.0
                self.masks[i] = mask.reshape(weights.shape)

        def _apply(self) -> None:
            for layer, mask in zip(layers, self.masks, strict=True):
                layer.kernel.assign(np.asarray(layer.kernel.numpy()) * mask)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.step += 1
            if (self.step % UPDATE_EVERY == 0 or self.step == end_step) and self.step <= end_step:
                self._update_masks(polynomial_sparsity(self.step, end_step, target))
            self._apply()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs is not None:
                logs["sparsity"] = measured_sparsity(layers)

    return _Pruner()


def measured_sparsity(layers: list[Any]) -> float:
    """Fraction of exact zeros over the prunable kernels."""
    total = sum(int(np.prod(layer.kernel.shape)) for layer in layers)
    zeros = sum(int(np.sum(np.asarray(layer.kernel.numpy()) == 0.0)) for layer in layers)
    return zeros / max(1, total)


def run_prune(model_path: str, train_npz: str, sparsity: float, epochs: int, logdir: str | None,
              out_dir: str) -> dict[str, Any]:
    """Prune to ``sparsity`` while fine-tuning; export the result to ``out_dir`` (SavedModel)."""
    import keras

    model = common.load_keras(model_path)
    x, y = common.load_train(train_npz)
    reference = common.predict(model, x)
    n_classes = reference.shape[-1]
    probs = common.outputs_are_probabilities(reference)
    layers = common.prunable_layers(model)
    if not layers:
        raise common.TrainError("the model has no Conv2D/DepthwiseConv2D/Dense kernel to prune")
    batch = 32
    steps = epochs * int(np.ceil(len(x) / batch))
    pruner = _pruner(layers, sparsity, end_step=max(1, (2 * steps) // 3))
    summaries = common.summary_callback(logdir)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=common.make_loss(n_classes, not probs, alpha=1.0, temperature=1.0),
                  metrics=[common.make_accuracy(n_classes)])
    keras.utils.set_random_seed(0)
    model.fit(x, common.packed_targets(y, None, n_classes), epochs=epochs, batch_size=batch, verbose=0,
              shuffle=True, callbacks=[pruner, summaries])
    achieved = measured_sparsity(layers)
    common.export(model, out_dir)
    return {"mode": "prune", "savedmodel": out_dir, "epochs": epochs, "history": summaries.history,
            "target_sparsity": sparsity, "sparsity": round(achieved, 6),
            "pruned_layers": [layer.name for layer in layers], "params": common.count_params(model)}
