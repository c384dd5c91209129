"""The pi-check cache: the rootfs, wheels and host artefacts, reused between runs on a machine.

Each artefact is a directory named by a key (a hash of what it was built from), built under a
temporary name and renamed into place, so an interrupted build is never taken for a good one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_CACHE = "EDGE_PI_CACHE"


def default_cache_dir() -> Path:
    """$EDGE_PI_CACHE, else /var/cache/edge-pi-check as root, else $XDG_CACHE_HOME/edge-pi-check."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    if os.geteuid() == 0:
        return Path("/var/cache/edge-pi-check")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-pi-check"


def digest(parts: Iterable[str | bytes]) -> str:
    """Short hex key of some strings/bytes (order matters)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def tree_digest(root: Path, patterns: Iterable[str]) -> str:
    """Key of the files under ``root`` matching the glob patterns (paths and contents)."""
    files = sorted({p for pattern in patterns for p in root.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts})
    return digest(item for p in files for item in (str(p.relative_to(root)), p.read_bytes()))


@contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One pi-check at a time per cache (they share the rootfs)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cached_dir(cache: Path, name: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """``cache/name-key``, built by ``build(tmp)`` when missing; older keys of ``name`` are removed.

    Returns the directory and whether it came from the cache.
    """
    final = cache / f"{name}-{key}"
    if final.is_dir():
        return final, True
    for old in cache.glob(f"{name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = cache / f".{name}-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    tmp.rename(final)
    return final, False
