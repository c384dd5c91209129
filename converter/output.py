"""Writing what the converter produced: the bundle (verified before it replaces anything), the report.

Every file is written next to its destination and renamed into place, so an interrupted or
failed conversion never leaves a half-written bundle or report behind.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from converter.errors import ConvertError
from converter.report import format_report, report_json
from edge_agent.errors import BundleError
from edge_agent.model.bundle import read_bundle, write_bundle
from edge_agent.model.manifest import Manifest
from edge_agent.model.smoke import run_smoke_test
from edge_agent.runtimes.litert import LiteRTRuntime
from edge_agent.util.fs import atomic_write, fsync_dir


def check_output_writable(output: Path) -> None:
    """Fail early (before minutes of work) if the bundle cannot be written there."""
    output = Path(output)
    if output.is_dir():
        raise ConvertError(f"output {output} is a directory; give a bundle file name such as "
                           f"{output / 'model.bundle'}")
    parent = output.parent if str(output.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConvertError(f"cannot write bundle {output}: {parent} is not a directory")
    if not parent.is_dir():
        raise ConvertError(f"cannot write bundle {output}: directory {parent} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise ConvertError(f"cannot write bundle {output}: {_create_failure(parent, exc)}") from exc
    os.close(fd)
    os.unlink(probe)


def _create_failure(directory: Path, exc: OSError) -> str:
    """Why no file can be created in an existing ``directory``, in the user's words.

    The bare strerror misleads: /proc answers ENOENT ("No such file or directory")
    for a directory that plainly exists.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"directory {directory} is not writable ({reason}); choose another --output"
    if exc.errno == errno.EROFS:
        return f"directory {directory} is on a read-only filesystem; choose another --output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left in directory {directory} ({reason})"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.EOPNOTSUPP):
        return (f"cannot create files in directory {directory} (it exists but refuses new files, "
                f"as /proc and /sys do: {reason}); choose another --output")
    return f"cannot create files in directory {directory}: {reason}"


def write_report_copy(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        atomic_write(Path(path), report_json(report))
    except OSError as exc:
        raise ConvertError(f"cannot write report {path}: {exc.strerror or exc}") from exc


def write_verified(output: Path, manifest: Manifest, model: bytes, files: dict[str, bytes],
                    sign_key: Any) -> tuple[Manifest, str]:
    """Write next to ``output``, read back, smoke-test, then rename into place."""
    parent = output.parent if str(output.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_bundle(tmp, manifest, model, files, sign_key)
        bundle = read_bundle(tmp, sign_key.public_key() if sign_key is not None else None)
        runtime = LiteRTRuntime(bundle.model_bytes)
        try:
            smoke = run_smoke_test(bundle.manifest, runtime)
        finally:
            runtime.close()
        if not smoke.passed:
            raise ConvertError(f"the written bundle fails its own smoke test: {smoke.summary()}")
        try:
            os.replace(tmp, output)
        except OSError as exc:
            raise ConvertError(f"cannot write bundle {output}: {exc.strerror or exc}") from exc
        fsync_dir(parent)
        return bundle.manifest, smoke.summary()
    except BundleError as exc:
        raise ConvertError(str(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def print_report(report: dict[str, Any], stream: IO[str] | None = None) -> None:
    print(format_report(report), file=stream or sys.stdout, flush=True)
