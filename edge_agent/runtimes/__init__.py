"""Inference runtimes behind one tiny interface, created from config by type name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.model.manifest import TensorSpec


class Runtime(ABC):
    """Runs one model. ``infer`` is the only hot method."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    backend: str

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run one inference on an already-quantised input; returns raw output tensors."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""


RuntimeFactory = Callable[..., Runtime]


def _litert(model: bytes | Path, threads: int = 1, delegate: str | None = None,
            delegate_options: dict[str, str] | None = None) -> Runtime:
    from edge_agent.runtimes.litert import LiteRTRuntime

    return LiteRTRuntime(model, threads=threads, delegate=delegate, delegate_options=delegate_options)


RUNTIMES: dict[str, RuntimeFactory] = {"litert": _litert}


def create_runtime(kind: str, model: bytes | Path, **options: object) -> Runtime:
    """Create a runtime by registry name; raises ValueError for an unknown type."""
    try:
        factory = RUNTIMES[kind]
    except KeyError:
        raise ValueError(f"unknown runtime type {kind!r}; choose one of {sorted(RUNTIMES)}") from None
    return factory(model, **options)
