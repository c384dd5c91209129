"""Magnitude pruning with fine-tuning (Keras 3 native), before full-int8 conversion.

``run_prune(model_path, train_npz, sparsity, epochs, logdir, out_dir) -> dict``: the kernels of
every Conv2D/DepthwiseConv2D/Dense layer are pruned layer by layer to the smallest magnitudes, in
blocks of consecutive input channels (:func:`block_mask`; ``--prune-block``, 4 by default),
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


def _pruner(layers: list[Any], target: float, end_step: int, block: int) -> Any:
    import keras

    class _Pruner(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.masks = [np.ones(tuple(layer.kernel.shape), np.float32) for layer in layers]

        def _update_masks(self, sparsity: float) -> None:
            for i, layer in enumerate(layers):
                self.masks[i] = block_mask(np.asarray(layer.kernel.numpy()), sparsity, layer_block(layer, block))

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


def layer_block(layer: Any, block: int) -> int:
    """The block size used for ``layer``: 1 for depthwise kernels (their contiguous axis in TFLite is
    not the input axis) and where the input channels do not divide into blocks."""
    if type(layer).__name__ == "DepthwiseConv2D" or int(layer.kernel.shape[-2]) % block:
        return 1
    return block


def block_mask(kernel: np.ndarray, sparsity: float, block: int) -> np.ndarray:
    """0/1 mask zeroing the ``sparsity`` fraction of ``kernel`` with the smallest magnitudes, in
    blocks of ``block`` consecutive input channels of one output channel.

    The input axis (``-2`` of a Keras Conv2D/Dense kernel) is the innermost one of TFLite's weight
    layout (``[out, in]``, ``[out, h, w, in]``), so a block is a run of zero bytes in the file: what
    DEFLATE (the bundle, an OTA download, gzip) compresses best. Blocks are ranked by their mean
    magnitude; ``block=1`` is plain unstructured magnitude pruning.
    """
    grouped = np.moveaxis(np.abs(kernel), -2, -1)  # (..., out, in)
    shape = grouped.shape
    scores = grouped.reshape(*shape[:-1], shape[-1] // block, block).mean(axis=-1)
    k = round(sparsity * scores.size)
    flat = np.ones(scores.size, np.float32)
    if k > 0:
        flat[np.argsort(scores, axis=None, kind="stable")[:k]] = 0.0
    mask = np.repeat(flat.reshape(scores.shape), block, axis=-1).reshape(shape)
    return np.moveaxis(mask, -1, -2)


def measured_sparsity(layers: list[Any]) -> float:
    """Fraction of exact zeros over the prunable kernels."""
    total = sum(int(np.prod(layer.kernel.shape)) for layer in layers)
    zeros = sum(int(np.sum(np.asarray(layer.kernel.numpy()) == 0.0)) for layer in layers)
    return zeros / max(1, total)


def run_prune(model_path: str, train_npz: str, sparsity: float, epochs: int, logdir: str | None,
              out_dir: str, block: int = 1) -> dict[str, Any]:
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
    pruner = _pruner(layers, sparsity, end_step=max(1, (2 * steps) // 3), block=block)
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
            "pruned_layers": [layer.name for layer in layers], "params": common.count_params(model),
            "block": block}
