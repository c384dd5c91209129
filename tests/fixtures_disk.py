"""Fixtures: a small real filesystem (a tmpfs mount, root only) that a test can fill to the brim.

- ``small_disk`` (function): a fresh 4 MiB tmpfs mounted on a directory under ``tmp_path``,
  unmounted at teardown; skipped where mounting is not allowed.
- :func:`fill` writes a ballast file until the filesystem says ENOSPC; deleting it frees the space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "disk"
    path.mkdir()
    with tmpfs(path, "4m"):
        yield path


@contextlib.contextmanager
def tmpfs(path: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax, e.g. ``24m``; ``options`` adds more, e.g.
    ``nr_inodes=8``) on the existing directory ``path`` for the block; skips the test where
    mounting is not allowed (not root)."""
    opts = ",".join(filter(None, [f"size={size}", "mode=0755", options]))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(directory: Path, name: str = "ballast") -> Path:
    """Write ``directory/name`` until the filesystem is full (the last byte it takes); returns it."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for block in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path
