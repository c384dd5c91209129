"""TFLite interpreter runtime: ai-edge-litert, then tflite_runtime, then tf.lite.

This is the only module that imports an interpreter package.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import platform
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import RuntimeLoadError
from edge_agent.model.manifest import TensorSpec
from edge_agent.runtimes import Runtime

log = logging.getLogger(__name__)

# 32-bit ARM userlands (Raspberry Pi OS 32-bit): no ai-edge-litert wheels.
ARM32 = frozenset({"armv7l", "armv6l", "armv8l"})


def _import_interpreter() -> tuple[Any, Any, str]:
    """Return (Interpreter class, load_delegate function, backend name)."""
    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, litert.load_delegate, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflr  # type: ignore[import-not-found]

        return tflr.Interpreter, tflr.load_delegate, "tflite_runtime"
    except ImportError:
        pass
    try:  # last resort on a workstation; never installed on a device
        import tensorflow as tf  # type: ignore[import-not-found]

        return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tf.lite"
    except ImportError as exc:
        raise RuntimeLoadError(_no_interpreter_message(platform.machine(), struct.calcsize("P"))) from exc


def _no_interpreter_message(machine: str, pointer_bytes: int) -> str:
    # A 32-bit userland on a 64-bit kernel (Raspberry Pi OS 32-bit on a Pi 4/5) reports aarch64.
    if machine in ARM32 or (machine == "aarch64" and pointer_bytes == 4):
        return (f"no TFLite interpreter found: ai-edge-litert has no wheels for 32-bit ARM ({machine}); "
                "install the 64-bit Raspberry Pi OS (docs/raspberry-pi.md)")
    return "no TFLite interpreter found; install ai-edge-litert (pip install ai-edge-litert)"


def backend_version() -> str:
    """Version string of the interpreter package in use (for reports)."""
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:
        return _import_interpreter()[2]


def tensor_spec(detail: dict[str, Any], layout: str = "") -> TensorSpec:
    """Build a TensorSpec from an interpreter tensor detail (scale/zero-point from the model)."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail.get("name", "")),
        shape=[int(d) for d in detail["shape"]],
        dtype=np.dtype(detail["dtype"]).name,  # type: ignore[arg-type]
        scale=float(scale),
        zero_point=int(zero_point),
        layout=layout,
    )


# Lines the native runtime prints to stderr on every start; they say nothing to a user.
_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
# What the cpuinfo library prints when it cannot read the CPU's description: XNNPACK does not
# start then, and every model runs on the reference kernels (about 100x slower for the digits
# model). A systemd unit with ProcSubset=pid hides /proc/cpuinfo and does exactly this.
CPUINFO_ERROR = b"Error in cpuinfo"
CPUINFO_WARNING = ("LiteRT cannot read /proc/cpuinfo, so XNNPACK is off and inference runs on slow reference "
                   "kernels; if this runs under systemd, remove ProcSubset=pid from the unit")
_cpuinfo_warned: set[str] = set()  # once per process


def _warn_cpuinfo(lines: list[bytes]) -> None:
    if not _cpuinfo_warned and any(line.startswith(CPUINFO_ERROR) for line in lines):
        _cpuinfo_warned.add(CPUINFO_WARNING)
        log.warning(CPUINFO_WARNING)


@contextlib.contextmanager
def _filter_native_stderr() -> Iterator[None]:
    """Drop the interpreter's start-up INFO line from fd 2; anything else is passed on.

    While fd 2 points at the capture file, :mod:`faulthandler` (when enabled) writes to the
    real stderr, so a native crash inside the interpreter still leaves its stack there.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    crash_report = faulthandler.is_enabled()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        if crash_report:
            faulthandler.enable(file=saved, all_threads=True)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            if crash_report:
                faulthandler.enable(file=2, all_threads=True)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if line.rstrip() not in _NOISE]
            if kept:
                os.write(2, b"".join(kept))
                _warn_cpuinfo(kept)


def _check_delegate_library(path: str) -> None:
    """Fail cleanly before ``load_delegate``: when it fails it leaves a half-built
    Delegate whose ``__del__`` prints a traceback at exit (ai-edge-litert 2.x)."""
    import ctypes

    try:
        library = ctypes.CDLL(path)
    except OSError as exc:
        raise RuntimeLoadError(f"cannot load delegate {path!r}: {exc}; check the library path in the config") from exc
    if not hasattr(library, "tflite_plugin_create_delegate"):
        raise RuntimeLoadError(
            f"{path!r} is not a TFLite external delegate (no tflite_plugin_create_delegate symbol)"
        )


class LiteRTRuntime(Runtime):
    """One TFLite interpreter with its tensors allocated."""

    def __init__(
        self,
        model: bytes | Path,
        threads: int = 1,
        delegate: str | None = None,
        delegate_options: dict[str, str] | None = None,
    ) -> None:
        interpreter_cls, load_delegate, self.backend = _import_interpreter()
        delegates = []
        if delegate:
            _check_delegate_library(delegate)
            try:
                delegates.append(load_delegate(delegate, delegate_options or {}))
            except (ValueError, OSError, RuntimeError) as exc:
                raise RuntimeLoadError(
                    f"cannot load delegate {delegate!r}: {exc}; check the library path in the config"
                ) from exc
        kwargs: dict[str, Any] = {"num_threads": max(1, int(threads))}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        try:
            with _filter_native_stderr():
                if isinstance(model, bytes | bytearray):
                    self._interpreter = interpreter_cls(model_content=bytes(model), **kwargs)
                else:
                    self._interpreter = interpreter_cls(model_path=str(model), **kwargs)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"the interpreter cannot load this model: {exc}") from exc
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self.inputs = [tensor_spec(d) for d in self._input_details]
        self.outputs = [tensor_spec(d) for d in self._output_details]
        self._input_index = int(self._input_details[0]["index"])
        self._output_indices = [int(d["index"]) for d in self._output_details]

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        interp = self._interpreter
        interp.set_tensor(self._input_index, tensor)
        interp.invoke()
        # get_tensor copies, so results stay valid after the next invoke.
        return [interp.get_tensor(i) for i in self._output_indices]

    def time_inference(self, tensor: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
        """Mean milliseconds per inference for this input."""
        for _ in range(warmup):
            self.infer(tensor)
        start = time.perf_counter()
        for _ in range(runs):
            self.infer(tensor)
        return (time.perf_counter() - start) * 1000.0 / runs

    def close(self) -> None:
        self._interpreter = None
