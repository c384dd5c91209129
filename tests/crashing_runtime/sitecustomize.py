"""Test only: every Python started with this directory on PYTHONPATH gets a crashing runtime.

The ``litert`` entry of the runtime registry is wrapped: the model loads and allocates
as usual, and the first inference kills its own process with the signal named in
``EDGE_TEST_RUNTIME_SIGNAL`` (e.g. SIGSEGV), the way a broken delegate or a malformed
model takes the interpreter down. With ``EDGE_TEST_RUNTIME_CRASH_AT=load`` the process dies
while the interpreter is being created instead (inside the runtime's stderr filter), as
LiteRT does on a CPU it misdetects. The model store's smoke child runs unmodified on it.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any

from edge_agent import runtimes

_real = runtimes.RUNTIMES["litert"]


def _crashing(model: Any, **options: Any) -> runtimes.Runtime:
    runtime = _real(model, **options)

    def infer(tensor: Any) -> Any:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from a test
        os.kill(os.getpid(), signal.Signals[os.environ.get("EDGE_TEST_RUNTIME_SIGNAL", "SIGSEGV")])
        raise AssertionError("still alive after the signal")

    runtime.infer = infer  # type: ignore[method-assign]
    return runtime


def _die() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from a test
    os.kill(os.getpid(), signal.Signals[os.environ.get("EDGE_TEST_RUNTIME_SIGNAL", "SIGSEGV")])


if os.environ.get("EDGE_TEST_RUNTIME_CRASH_AT") == "load":
    from edge_agent.runtimes import litert

    _real_import = litert._import_interpreter

    def _import_crashing() -> Any:
        _, load_delegate, backend = _real_import()

        def interpreter(*args: Any, **kwargs: Any) -> Any:
            _die()
            raise AssertionError("still alive after the signal")

        return interpreter, load_delegate, backend

    litert._import_interpreter = _import_crashing
else:
    runtimes.RUNTIMES["litert"] = _crashing
