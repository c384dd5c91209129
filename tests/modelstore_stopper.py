"""Test-only installer: the real model store, stopped (SIGSTOP) right after one named step.

``python -m tests.modelstore_stopper install STEP BUNDLE STATE_DIR`` runs
``edge_agent.store.install.install_model`` (``rollback STEP STATE_DIR`` runs ``rollback``)
with the store's own step functions wrapped so that this process stops itself once
STEP's artefact is on disk. The crash test sees the process stopped, checks the
artefact (which proves the installer got that far) and SIGKILLs it there. The shipped
store has no crash switch; everything that stops it lives in this file. A STEP the
installer never reaches lets it run to the end, exit code 3.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path
from typing import IO, Any

from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout

INSTALL_STEPS = (
    "copy_partial",        # tmp/incoming-*.part holds part of the bundle
    "copied",              # tmp/incoming-*.part holds all of it, fsynced
    "smoking",             # the smoke-test child runs on the unpacked tmp/stage-*/ (stopped before it starts)
    "staged",              # tmp/stage-*/ holds bundle.zip too, not yet renamed into models/
    "extracted",           # models/<new sha>/ in place, links untouched
    "previous_link_made",  # models/.previous.*.link created, not yet renamed over `previous`
    "previous_linked",     # `previous` -> old model, `current` still -> old model
    "current_link_made",   # models/.current.*.link -> new model, not yet renamed over `current`
    "swapped",             # `current` -> new model (the commit point)
    "cleaned",             # old models collected, probation cleared
)
# a rollback links `current` first (its commit point), then `previous`
ROLLBACK_STEPS = ("current_link_made", "swapped", "previous_link_made", "previous_linked")
NOT_REACHED = 3

_stop_at = ""
_passed: set[str] = set()


def _stop(step: str) -> None:
    _passed.add(step)
    if step == _stop_at:
        os.kill(os.getpid(), signal.SIGSTOP)  # the test SIGKILLs us here; SIGCONT would go on


class _HalfThenStop:
    """The incoming copy's file object: stops once half of the first block is on disk."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._stopped = False

    def write(self, data: bytes) -> int:
        if self._stopped or len(data) < 2:
            return self._raw.write(data)
        self._stopped = True
        half = len(data) // 2
        self._raw.write(data[:half])
        self._raw.flush()
        os.fsync(self._raw.fileno())
        _stop("copy_partial")
        return half + self._raw.write(data[half:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _HalfThenStop:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def _after(name: str, step: str) -> None:
    """Wrap ``edge_agent.store.install.<name>`` so the process stops at ``step`` once it has returned."""
    original = getattr(store_install, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _stop(step)
        return result

    setattr(store_install, name, wrapper)


def _install_stoppers(script_dir: Path) -> None:
    real_os, real_sys = store_install.os, store_install.sys

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        raw = real_os.fdopen(fd, mode, *args, **kwargs)
        return _HalfThenStop(raw) if mode == "wb" else raw

    # the installer's own view of os and sys only; the rest of this process is untouched
    os_view = types.SimpleNamespace(**{k: getattr(real_os, k) for k in dir(real_os) if not k.startswith("__")})
    os_view.fdopen = fdopen
    store_install.os = os_view  # type: ignore[assignment]
    if _stop_at == "smoking":
        # The smoke child is started through a shell that stops itself first: a stopped
        # child of the installer in the process table is the artefact of this step.
        wrapper = script_dir / "stopped-python"
        wrapper.write_text(f'#!/bin/sh\nkill -STOP $$\nexec {real_sys.executable} "$@"\n')
        wrapper.chmod(0o755)
        sys_view = types.SimpleNamespace(**{k: getattr(real_sys, k) for k in dir(real_sys)
                                            if not k.startswith("__")})
        sys_view.executable = str(wrapper)
        store_install.sys = sys_view  # type: ignore[assignment]

    _after("_copy_in", "copied")
    _after("_materialise", "extracted")

    collect_garbage = store_layout.collect_garbage

    def collect_garbage_then_stop(state_dir: Path) -> None:
        collect_garbage(state_dir)
        if "swapped" in _passed:  # the store also collects leftovers before it starts
            _stop("cleaned")

    store_layout.collect_garbage = collect_garbage_then_stop  # type: ignore[assignment]

    replace_link = store_layout.replace_link

    def replace_link_then_stop(state_dir: Path, name: str, sha: str) -> None:
        replace_link(state_dir, name, sha)
        _stop("previous_linked" if name == store_layout.PREVIOUS else "swapped")

    store_layout.replace_link = replace_link_then_stop  # type: ignore[assignment]

    adopt = store_layout.adopt

    def adopt_then_stop(path: Path, state_dir: Path, recursive: bool = False) -> None:
        # _adopt is the last thing done to a staging directory or a new link before it is renamed
        adopt(path, state_dir, recursive)
        if path.name.startswith("stage-"):
            _stop("staged")
        elif path.name.startswith(f".{store_layout.PREVIOUS}.") and path.name.endswith(".link"):
            _stop("previous_link_made")
        elif path.name.startswith(f".{store_layout.CURRENT}.") and path.name.endswith(".link"):
            _stop("current_link_made")

    store_layout.adopt = adopt_then_stop  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    global _stop_at
    action, _stop_at = argv[0], argv[1]
    steps = INSTALL_STEPS if action == "install" else ROLLBACK_STEPS
    if _stop_at not in steps:
        print(f"unknown {action} step {_stop_at!r}; choose one of {steps}", file=sys.stderr)
        return 2
    state = Path(argv[-1])
    _install_stoppers(state.parent)
    if action == "install":
        store_install.install_model(Path(argv[2]), state, signal_agent=False)
    else:
        store_install.rollback(state, signal_agent=False)
    print(f"finished without reaching {_stop_at}", file=sys.stderr)
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
