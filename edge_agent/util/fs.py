"""Files on disk: atomic writes, directory fsync, free space and sha256 digests.

The one owner of these helpers for the bundle reader, the model store, OTA downloads and
the agent's state files, so every writer survives a power cut the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from edge_agent.errors import NoSpaceError

FREE_SPACE_MARGIN = 16 * 1024 * 1024
# a sha256 as this project writes it (lower-case hex): store directory names, manifests;
# compile with re.IGNORECASE where user input may be upper-case
SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the whole new file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse early when the filesystem cannot hold ``needed`` bytes plus a margin.

    Raises:
        NoSpaceError: not enough space (an InstallError of step ``copy``).
    """
    free = shutil.disk_usage(directory).free
    if free < needed + FREE_SPACE_MARGIN:
        raise NoSpaceError(
            f"not enough free space in {directory}: {free // 1_048_576} MiB free, "
            f"{(needed + FREE_SPACE_MARGIN) // 1_048_576} MiB needed",
            step="copy",
        )
