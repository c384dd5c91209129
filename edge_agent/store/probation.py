"""Probation of a newly installed model: the record on disk and the crash counting.

The one owner of ``probation.json``. A start of the agent while the previous run of
the same probation never stopped cleanly is a crash; too many crashes roll the store back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import InstallError
from edge_agent.store.layout import CURRENT, InstalledModel, read_link
from edge_agent.util.fs import atomic_write, fsync_dir
from edge_agent.util.statefiles import set_aside

if TYPE_CHECKING:
    from edge_agent.store.install import InstallResult

log = logging.getLogger(__name__)

PROBATION_FILE = "probation.json"


@dataclass
class Probation:
    """A newly installed model on trial, persisted so crashes are counted across restarts."""

    sha256: str  # bundle sha256 of the model on probation
    started: float
    until: float
    max_crashes: int = 2
    crashes: int = 0
    running: bool = False  # set at agent start, cleared at clean stop
    command_id: str = ""


def read_probation(state_dir: Path) -> Probation | None:
    """The probation record, or None when there is none; a damaged one is set aside."""
    path = Path(state_dir) / PROBATION_FILE
    try:
        data = json.loads(path.read_bytes())
        return _probation_from(data)
    except OSError:
        return None
    except (ValueError, TypeError, RecursionError) as exc:
        set_aside(path, f"not a probation record: {exc}")
        return None


def _probation_from(data: object) -> Probation:
    """Raises TypeError unless ``data`` holds every field of a :class:`Probation`, each of its type."""
    if not isinstance(data, dict):
        raise TypeError("not an object")
    probation = Probation(**data)
    for name, kind in (("sha256", str), ("started", float), ("until", float), ("max_crashes", int),
                       ("crashes", int), ("running", bool), ("command_id", str)):
        value = getattr(probation, name)
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"{name} is not a {kind.__name__}")
    return probation


def write_probation(state_dir: Path, probation: Probation) -> None:
    atomic_write(Path(state_dir) / PROBATION_FILE, json.dumps(asdict(probation)).encode())


def clear_probation(state_dir: Path) -> None:
    path = Path(state_dir) / PROBATION_FILE
    if path.exists():
        with contextlib.suppress(OSError):
            path.unlink()
            fsync_dir(Path(state_dir))


def start_probation(
    state_dir: Path, model: InstalledModel, duration_s: float, max_crashes: int = 2, command_id: str = ""
) -> Probation:
    now = time.time()
    probation = Probation(
        sha256=model.sha256, started=now, until=now + duration_s, max_crashes=max_crashes,
        running=True, command_id=command_id,
    )
    write_probation(state_dir, probation)
    return probation


def note_agent_start(state_dir: Path) -> InstallResult | None:
    """Call at agent start, before loading the model: counts crashes of a model on probation.

    A start while the previous run of the same probation never stopped cleanly
    is a crash. Once the crashes exceed ``max_crashes`` the store rolls back and
    the result is returned (the agent then loads the now active model and reports).
    """
    from edge_agent.store.install import rollback  # install clears probations: import here

    state_dir = Path(state_dir)
    probation = read_probation(state_dir)
    if probation is None:
        return None
    current = read_link(state_dir, CURRENT, deep=False)
    if current is None or current.sha256 != probation.sha256 or time.time() > probation.until:
        # another model is active, or the probation period is over: nothing left to watch
        clear_probation(state_dir)
        return None
    if probation.running:
        probation.crashes += 1
    probation.running = True
    if probation.crashes > probation.max_crashes:
        log.error("model %s crashed the agent %d times on probation; rolling back",
                  current.manifest.short_sha, probation.crashes)
        try:
            return rollback(state_dir, signal_agent=False)
        except InstallError as exc:
            log.error("automatic rollback impossible: %s", exc)
            clear_probation(state_dir)
            return None
    write_probation(state_dir, probation)
    return None


def note_agent_stop(state_dir: Path) -> None:
    """Call on a clean stop so the stop is not counted as a crash."""
    probation = read_probation(Path(state_dir))
    if probation is not None and probation.running:
        probation.running = False
        write_probation(Path(state_dir), probation)
