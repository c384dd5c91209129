"""Fixed input shapes for models with dynamic input dimensions (``--input-shape``).

TFLite and its XNNPack delegate need every input dimension but the batch known:
a model exported with ``(None, None, 1)`` converts, then fails at inference with
``XNNPack delegate failed to reshape runtimeNode``. The worker checks the input
shape here and, given ``--input-shape``, re-exports the model with that fixed
shape (batch stays open). :func:`resolve_shape` is plain Python (unit-tested
without TensorFlow); the other functions run in the TensorFlow child only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ShapeError(Exception):
    """The model's input shape and ``--input-shape`` do not fit together (one-line message)."""


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def parse_input_shape(text: str) -> list[int]:
    """``"32,32,1"`` -> ``[32, 32, 1]`` (positive whole numbers, without the batch dimension)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ShapeError(f"--input-shape takes whole numbers like 96,96,3 (H,W,C), got {text!r}") from None
    if not dims or any(d < 1 or d > 100_000 for d in dims):
        raise ShapeError(f"--input-shape takes positive sizes like 96,96,3 (H,W,C), got {text!r}")
    return dims


def resolve_shape(model_shape: Sequence[int | None], wanted: Sequence[int] | None, name: str = "input"
                  ) -> list[int | None] | None:
    """The full input shape to export with, or None to keep the model's own.

    Raises:
        ShapeError: a dimension beyond the batch is unknown and ``wanted`` is None, or
            ``wanted`` does not match the model's rank or its known dimensions.
    """
    dims = list(model_shape)
    if not dims:
        raise ShapeError(f"model input {name!r} is a scalar; a model input needs a batch dimension")
    rest = dims[1:]
    dynamic = any(d is None or d < 0 for d in rest)
    if wanted is None:
        if dynamic:
            hint = ",".join("H" if i == 0 else "W" if i == 1 else "C" for i in range(len(rest))) \
                if len(rest) == 3 else ",".join(f"D{i + 1}" for i in range(len(rest)))
            raise ShapeError(
                f"model input {name!r} has dynamic dimensions {_fmt(dims)}; TFLite needs a fixed size: "
                f"give it with --input-shape {hint} (without the batch), e.g. --input-shape "
                + ",".join(str(d) if d is not None and d > 0 else "96" for d in rest))
        return None
    if len(wanted) != len(rest):
        raise ShapeError(f"--input-shape {','.join(map(str, wanted))} has {len(wanted)} dimension(s) but "
                         f"model input {name!r} {_fmt(dims)} has {len(rest)} beyond the batch")
    for have, want in zip(rest, wanted, strict=True):
        if have is not None and have > 0 and have != want:
            raise ShapeError(f"--input-shape {','.join(map(str, wanted))} does not fit model input {name!r} "
                             f"{_fmt(dims)}: only its unknown (None) dimensions can be set")
    return [None, *wanted]


def keras_signature(model: Any, wanted: Sequence[int] | None) -> list[Any] | None:
    """``input_signature`` for ``model.export`` (None: the model's own)."""
    import tensorflow as tf

    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed model that was never built has no inputs
        inputs = []
    if len(inputs) != 1:
        if wanted is not None:
            raise ShapeError(f"--input-shape needs a model with one input, this one has {len(inputs)}")
        return None
    tensor = inputs[0]
    name = str(getattr(tensor, "name", "input")).split(":")[0]
    shape = resolve_shape(list(tensor.shape), wanted, name)
    if shape is None:
        return None
    return [tf.TensorSpec(shape, tf.as_dtype(str(tensor.dtype)), name=name)]


def fix_savedmodel(path: Path, wanted: Sequence[int] | None, target: Path) -> str:
    """The SavedModel folder to convert: ``path`` itself, or a copy whose serving signature has a fixed shape."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    fn = signatures.get("serving_default") or (next(iter(signatures.values())) if signatures else None)
    if fn is None:
        if wanted is not None:
            raise ShapeError(f"{path} has no serving signature to fix the input shape of")
        return str(path)
    specs = fn.structured_input_signature[1]
    if len(specs) != 1:
        if wanted is not None:
            raise ShapeError(f"--input-shape needs a model with one input, this one has {len(specs)}")
        return str(path)
    (key, spec), = specs.items()
    shape = resolve_shape(spec.shape.as_list(), wanted, key)
    if shape is None:
        return str(path)
    fixed = tf.TensorSpec(shape, spec.dtype, name=key)
    call: Any = fn

    class _Fixed(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = loaded

        @tf.function(input_signature=[fixed])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> Any:
            return call(**{key: x})

    module = _Fixed()
    tf.saved_model.save(module, str(target), signatures=module.serve)
    return str(target)
