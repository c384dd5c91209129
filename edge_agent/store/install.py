"""Installing a bundle into the model store, and rolling back to the previous model.

An install copies the bundle into ``tmp/`` while hashing it, unpacks it into a
staging directory while verifying checksums, sizes and the signature (memory stays
bounded by :class:`edge_agent.model.bundle.BundleLimits`), smoke-tests the staging
directory in a child process exactly as the agent will load it (so a crashing
interpreter cannot take the installer down), renames it to ``models/<sha256>/``,
then replaces ``previous`` and ``current`` with ``os.replace`` and fsyncs the directory.
Each step leaves the store valid, so a kill at any point leaves exactly one valid model
active; the next install or rollback cleans what was left over (docs: the store layout in edge_agent.store.layout).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge_agent.config import default_state_dir
from edge_agent.errors import BundleError, EdgeError, InstallError
from edge_agent.model import compat
from edge_agent.model.bundle import BundleLimits, unpack_bundle
from edge_agent.model.manifest import Manifest
from edge_agent.store import layout
from edge_agent.store.layout import BUNDLE_FILE, MODELS, TMP, InstalledModel
from edge_agent.store.pidfile import signal_running_agent
from edge_agent.store.probation import clear_probation
from edge_agent.util.fs import check_free_space, fsync_dir

if TYPE_CHECKING:  # cryptography costs ~8 MB RSS: import it only where a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["MAX_BUNDLE_BYTES", "SMOKE_TIMEOUT_S", "InstallError", "InstallResult", "install_model", "rollback",
           "run_smoke_child"]

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 512 * 1024 * 1024
SMOKE_TIMEOUT_S = 120.0
_T = TypeVar("_T")


@dataclass
class InstallResult:
    status: str  # "installed" | "already_active" | "rolled_back"
    active: InstalledModel
    previous: InstalledModel | None
    smoke: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    agent_signalled: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "status": self.status,
            "active": self.active.describe(),
            "previous": self.previous.describe() if self.previous else None,
            "smoke": self.smoke,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "agent_signalled": self.agent_signalled,
        }


def install_model(
    bundle_path: Path,
    state_dir: Path | None = None,
    public_key: Path | Ed25519PublicKey | None = None,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    allow_new_input: bool = False,
    allow_downgrade: bool = True,
    threads: int = 1,
    smoke_timeout_s: float = SMOKE_TIMEOUT_S,
    signal_agent: bool = True,
    limits: BundleLimits | None = None,
    latency_budget_ms: float | None = None,
) -> InstallResult:
    """Verify, smoke-test and activate a bundle; keep the old model as ``previous``.

    Args:
        bundle_path: the bundle file (left untouched).
        state_dir: the store; default :func:`edge_agent.config.default_state_dir`.
        public_key: key to verify with; default the pinned key. With a key, an
            unsigned or wrongly signed bundle is refused.
        expected_sha256, expected_size: checked while copying (OTA passes these).
        allow_new_input: accept an input spec different from the active model's.
        allow_downgrade: accept a lower version of the same model name.
        threads: interpreter threads for the smoke test.
        signal_agent: send SIGHUP to a running agent after the swap.
        limits: the largest bundle members accepted (default :class:`BundleLimits`).
        latency_budget_ms: this device's smoke-test latency budget (``[model]
            latency_budget_ms``); None: the bundle's; 0: latency not judged.

    Raises:
        InstallError: refused at some step; the active model is unchanged.
    """
    state_dir = Path(state_dir or default_state_dir())
    bundle_path = Path(bundle_path)
    timings: dict[str, float] = {}
    layout.ensure_layout(state_dir)
    with layout.store_lock(state_dir):
        layout.cleanup_leftovers(state_dir)
        t0 = time.perf_counter()
        key = _step("verify", lambda: layout.resolve_public_key(state_dir, public_key))
        temp, sha, _size = _copy_in(bundle_path, state_dir, expected_sha256, expected_size)
        limits = limits or BundleLimits()
        staging = state_dir / TMP / f"stage-{sha[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            timings["copy"] = _ms_since(t0)

            t0 = time.perf_counter()
            manifest = _unpack(temp, staging, key, limits)
            current = layout.active_model(state_dir)
            _check_compatible(manifest, current, allow_new_input, allow_downgrade)
            timings["verify"] = _ms_since(t0)

            if current is not None and current.sha256 == sha:
                return InstallResult(
                    status="already_active", active=current, previous=layout.previous_model(state_dir),
                    timings_ms=timings,
                )

            t0 = time.perf_counter()
            smoke = run_smoke_child(staging, threads=threads, timeout_s=smoke_timeout_s, limits=limits,
                                    latency_budget_ms=latency_budget_ms)
            timings["smoke"] = _ms_since(t0)

            t0 = time.perf_counter()
            new = _materialise(state_dir, sha, temp, staging)
            layout.swap_links(state_dir, new_target=new, new_previous=current)
            timings["swap"] = _ms_since(t0)
        except EdgeError as exc:
            renamed = _name_given_bundle(exc, (temp, staging), bundle_path)
            if renamed is exc:
                raise
            raise renamed from exc
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
            shutil.rmtree(staging, ignore_errors=True)
        clear_probation(state_dir)
        layout.collect_garbage(state_dir)
    result = InstallResult(
        status="installed", active=new, previous=current, smoke=smoke, timings_ms=timings
    )
    if signal_agent:
        result.agent_signalled = signal_running_agent(state_dir)
    log.info(
        "installed %s %s (%s); previous %s",
        new.manifest.name, new.manifest.version, new.manifest.short_sha,
        current.manifest.short_sha if current else "none",
    )
    return result


def rollback(state_dir: Path | None = None, signal_agent: bool = True) -> InstallResult:
    """Make ``previous`` active again (and the rolled-back model ``previous``)."""
    state_dir = Path(state_dir or default_state_dir())
    layout.ensure_layout(state_dir)
    t0 = time.perf_counter()
    with layout.store_lock(state_dir):
        layout.cleanup_leftovers(state_dir)
        current = layout.read_link(state_dir, layout.CURRENT)
        previous = layout.read_link(state_dir, layout.PREVIOUS)
        if previous is None:
            raise InstallError("there is no previous model to roll back to", step="rollback")
        if current is not None and current.sha256 == previous.sha256:
            raise InstallError("the previous model is the active one already", step="rollback")
        layout.swap_links(state_dir, new_target=previous, new_previous=current, current_first=True)
        clear_probation(state_dir)
    result = InstallResult(
        status="rolled_back", active=previous, previous=current,
        timings_ms={"rollback": _ms_since(t0)},
    )
    if signal_agent:
        result.agent_signalled = signal_running_agent(state_dir)
    log.warning(
        "rolled back to %s %s (%s)", previous.manifest.name, previous.manifest.version,
        previous.manifest.short_sha,
    )
    return result


def run_smoke_child(
    model: Path, threads: int = 1, timeout_s: float = SMOKE_TIMEOUT_S, limits: BundleLimits | None = None,
    latency_budget_ms: float | None = None,
) -> dict[str, Any]:
    """Smoke-test ``model`` (an unpacked model directory, or a bundle file) in a child process that
    loads it as ``edge-agent run`` does; raise InstallError unless it passes."""
    cmd = [sys.executable, "-m", "edge_agent.model.smoke_child", str(model), "--threads", str(threads),
           "--max-model-bytes", str((limits or BundleLimits()).model_bytes)]
    if latency_budget_ms is not None:
        cmd += ["--latency-budget-ms", repr(float(latency_budget_ms))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"smoke test did not finish within {timeout_s:g} s", step="smoke") from exc
    except OSError as exc:  # e.g. Exec format error: an interpreter built for another CPU
        raise InstallError(f"cannot start the smoke test ({sys.executable}): {exc.strerror or exc}",
                           step="smoke") from exc
    report: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                report = parsed
                break
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        where = crash_site(proc.stderr)
        raise InstallError(f"smoke test crashed the interpreter ({name})" + (f" at {where}" if where else ""),
                           step="smoke")
    if proc.returncode != 0 or not report.get("passed"):
        reason = report.get("summary") or report.get("error") or proc.stderr.strip()[-300:]
        raise InstallError(f"smoke test failed: {reason}", step="smoke")
    return report


def crash_site(stderr: str) -> str | None:
    """Where faulthandler saw the crashing thread: its innermost Python frame, or None.

    Other threads' stacks (``Thread 0x…``) are skipped.

    ``Current thread 0x… (most recent call first):`` is followed by ``  File "F", line N in FUNC``.
    """
    lines = stderr.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Current thread"):
            frame = re.match(r'\s+File "(.+)", line (\d+) in (\S+)', lines[i + 1])
            return f"{frame[1]}:{frame[2]} in {frame[3]}" if frame else None
    return None


def _step(step: str, func: Callable[[], _T]) -> _T:
    try:
        return func()
    except InstallError:
        raise
    except EdgeError as exc:
        raise InstallError(str(exc), step=step) from exc


def _name_given_bundle(exc: EdgeError, private: tuple[Path, ...], given: Path) -> EdgeError:
    """``exc`` with the internal copies (``tmp/incoming-….part``, the staging directory) replaced
    by the user's bundle path.

    Verification and the smoke test run on the private copies, so their messages name
    them; the user should see the file they gave. The exception type and attributes
    (e.g. ``InstallError.step``) are kept.
    """
    message = str(exc)
    for path in private:
        message = message.replace(str(path), str(given))
    if message == str(exc):
        return exc
    renamed = copy.copy(exc)
    renamed.args = (message,)  # str(renamed) is str(exc) renamed, whatever args exc had
    return renamed


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _copy_in(
    source: Path, state_dir: Path, expected_sha256: str | None, expected_size: int | None
) -> tuple[Path, str, int]:
    """Copy ``source`` into tmp/ while hashing; check size, sha256 and free space."""
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise InstallError(f"bundle {source}: {exc.strerror or exc}", step="copy") from exc
    if expected_size is not None and size != expected_size:
        raise InstallError(f"bundle is {size} bytes, expected {expected_size}", step="copy")
    if size > MAX_BUNDLE_BYTES:
        raise InstallError(f"bundle is {size} bytes, more than the store accepts ({MAX_BUNDLE_BYTES} bytes)",
                           step="copy")
    check_free_space(state_dir, 3 * size)
    fd, name = tempfile.mkstemp(prefix="incoming-", suffix=".part", dir=state_dir / TMP)
    temp = Path(name)
    digest = hashlib.sha256()
    copied = 0
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            while block := src.read(1 << 20):
                copied += len(block)
                if copied > size or copied > MAX_BUNDLE_BYTES:
                    raise InstallError("bundle grew while it was copied", step="copy")
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InstallError(f"cannot copy bundle: {exc.strerror or exc}", step="copy") from exc
    except InstallError:
        temp.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    if copied != size:
        temp.unlink(missing_ok=True)
        raise InstallError(f"bundle changed while it was copied ({copied} != {size} bytes)", step="copy")
    if expected_sha256 is not None and sha != expected_sha256.lower():
        temp.unlink(missing_ok=True)
        raise InstallError(f"sha256 mismatch: got {sha}, expected {expected_sha256}", step="copy")
    return temp, sha, size


def _check_compatible(
    manifest: Manifest, current: InstalledModel | None, allow_new_input: bool, allow_downgrade: bool
) -> None:
    if current is None:
        return
    old = current.manifest
    if not allow_new_input:
        problems = compat.input_differences(old, manifest)
        if problems:
            raise InstallError(
                "the new model does not fit the active model's input ("
                + "; ".join(problems)
                + "); use --allow-new-input if the agent's source and config fit it",
                step="verify",
            )
    if not allow_downgrade and compat.is_downgrade(old, manifest):
        raise InstallError(
            f"{manifest.name} {manifest.version} is older than the active {old.version}; "
            "downgrades need a signed rollback command",
            step="verify",
        )


def _unpack(temp: Path, staging: Path, key: Ed25519PublicKey | None, limits: BundleLimits) -> Manifest:
    """Verify the bundle while unpacking it into ``staging`` (created here)."""
    try:
        staging.mkdir(mode=0o755)
        bundle = unpack_bundle(temp, staging, key, require_signature=key is not None, limits=limits)
    except BundleError as exc:
        raise InstallError(str(exc), step="verify") from exc
    except OSError as exc:
        raise InstallError(f"cannot write the model store: {exc.strerror or exc}", step="extract") from exc
    return bundle.manifest


def _materialise(state_dir: Path, sha: str, temp: Path, staging: Path) -> InstalledModel:
    """Add the received bundle to the unpacked ``staging`` directory, fsync, rename it to models/<sha>/."""
    final = state_dir / MODELS / sha
    with contextlib.suppress(BundleError):
        return layout.load_model_dir(final)  # same bundle installed before (e.g. a re-install)
    try:
        shutil.copyfile(temp, staging / BUNDLE_FILE)
        with (staging / BUNDLE_FILE).open("rb") as handle:
            os.fsync(handle.fileno())
        fsync_dir(staging)
        layout.adopt(staging, state_dir, recursive=True)
        if final.exists():  # damaged leftover of an earlier install of the same bundle
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(state_dir / MODELS)
    except OSError as exc:
        raise InstallError(f"cannot write the model store: {exc.strerror or exc}", step="extract") from exc
    return layout.load_model_dir(final)
