"""Damaged state files (what a power cut does to an SD card): set aside, never fatal.

A reader that finds one of the agent's state files unparseable calls :func:`set_aside`: the
file is renamed ``<name>.corrupt-<UTC time>`` (kept for a post-mortem), one WARNING line is
logged, the set-aside is counted for the health message, and the reader starts afresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def set_aside(path: Path, reason: str, *companions: Path) -> Path | None:
    """Rename a damaged ``path`` (and its ``companions``, e.g. SQLite's ``-wal``) out of the way.

    Returns:
        The new name of ``path``, or None when it could not be renamed (still counted, so a
        file that keeps failing is seen in health).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = _free_name(path, stamp)
    moved: Path | None = target
    try:
        os.replace(path, target)
    except OSError as exc:
        moved = None
        log.warning("damaged state file %s (%s) could not be set aside: %s", path, reason, exc.strerror or exc)
    else:
        log.warning("damaged state file %s (%s) set aside as %s; starting afresh", path, reason, target.name)
    for extra in companions:
        with contextlib.suppress(OSError):
            os.replace(extra, target.with_name(target.name + extra.name[len(path.name):]))
    with _lock:
        _counts[path.name] += 1
    return moved


def _free_name(path: Path, stamp: str) -> Path:
    """``<name>.corrupt-<stamp>``, with ``-1``, ``-2``… appended when that name is taken."""
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    target, n = base, 0
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    return target


def set_aside_counts() -> dict[str, int]:
    """State files set aside by this process so far, by file name (for the health message)."""
    with _lock:
        return dict(_counts)
