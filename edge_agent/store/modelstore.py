"""Model store: verified bundles on the device, swapped atomically, with rollback.

Layout under the state directory (``/var/lib/edge-agent`` under systemd)::

    models/<sha256>/   one installed bundle: bundle.zip (as received) and its
                       extracted, verified members; <sha256> is the bundle file's hash
    models/current  -> <sha256>   the active model (relative symlink; the agent's
                                  default ``model.bundle`` is this directory)
    models/previous -> <sha256>   the last good model, target of a rollback
    tmp/               incoming copies and staging directories (same filesystem)
    probation.json     the model on probation: deadline and crash counter
    trusted.pub        optional pinned Ed25519 key (also /etc/edge-agent/trusted.pub)
    agent.pid          written by a running agent; installs send it SIGHUP
    store.lock         serialises installs and rollbacks (flock)

An install copies the bundle into ``tmp/`` while hashing it, verifies checksums
and the signature, smoke-tests it in a child process (so a crashing interpreter
cannot take the installer down), extracts it into a staging directory renamed
to ``models/<sha256>/``, then replaces ``previous`` and ``current`` with
``os.replace`` and fsyncs the directory. Each step leaves the store valid, so a
kill at any point leaves exactly one valid model active; the next install or
rollback cleans what was left over.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import default_state_dir
from edge_agent.errors import BundleError, EdgeError
from edge_agent.model.bundle import (
    MANIFEST,
    MODEL,
    Bundle,
    atomic_write,
    extract_bundle,
    fsync_dir,
    load_public_key,
    read_bundle,
    sha256_file,
)

if TYPE_CHECKING:  # cryptography costs ~8 MB RSS: import it only where a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from edge_agent.model import compat
from edge_agent.model.manifest import Manifest
from edge_agent.schema import ValidationError

log = logging.getLogger(__name__)

SYSTEM_TRUSTED_KEY = Path("/etc/edge-agent/trusted.pub")
MODELS = "models"
CURRENT = "current"
PREVIOUS = "previous"
TMP = "tmp"
BUNDLE_FILE = "bundle.zip"
PID_FILE = "agent.pid"
PROBATION_FILE = "probation.json"
TRUSTED_KEY = "trusted.pub"
LOCK_FILE = "store.lock"
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
FREE_SPACE_MARGIN = 16 * 1024 * 1024
SMOKE_TIMEOUT_S = 120.0
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class InstallError(EdgeError):
    """An install or rollback was refused; the previously active model stays active."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class InstalledModel:
    """One model directory of the store."""

    sha256: str  # of the bundle file; names the directory
    directory: Path
    manifest: Manifest

    @property
    def bundle_path(self) -> Path:
        """The bundle as received; ``read_bundle`` on it re-verifies everything."""
        return self.directory / BUNDLE_FILE

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL

    def describe(self) -> dict[str, Any]:
        """Name, version and hashes, for status output and MQTT."""
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "task": self.manifest.task,
            "sha256": self.manifest.model.sha256,
            "short_sha": self.manifest.model.sha256[:12],
            "bundle_sha256": self.sha256,
            "input_shape": list(self.manifest.inputs[0].shape),
        }


@dataclass
class InstallResult:
    status: str  # "installed" | "already_active"
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


# --------------------------------------------------------------------------- reading the store


def load_model_dir(directory: Path, deep: bool = True) -> InstalledModel:
    """Check one ``models/<sha256>/`` directory and return it.

    Args:
        directory: the model directory.
        deep: also hash model.tflite against the manifest (cheap for edge models).

    Raises:
        BundleError: the directory is incomplete or altered.
    """
    sha = directory.name
    if not _SHA_RE.match(sha):
        raise BundleError(f"{directory} is not a model directory")
    try:
        manifest = Manifest.model_validate_json((directory / MANIFEST).read_bytes())
    except (OSError, ValidationError) as exc:
        raise BundleError(f"{directory}: manifest missing or invalid ({exc.__class__.__name__})") from exc
    model = directory / MODEL
    try:
        size = model.stat().st_size
    except OSError as exc:
        raise BundleError(f"{directory}: model.tflite missing") from exc
    if size != manifest.model.size_bytes:
        raise BundleError(f"{directory}: model.tflite has the wrong size (altered or corrupt)")
    if not (directory / BUNDLE_FILE).is_file():
        raise BundleError(f"{directory}: {BUNDLE_FILE} missing")
    if deep and sha256_file(model) != manifest.model.sha256:
        raise BundleError(f"{directory}: model.tflite does not match the manifest sha256")
    return InstalledModel(sha256=sha, directory=directory, manifest=manifest)


def _link(state_dir: Path, name: str, deep: bool = True) -> InstalledModel | None:
    link = state_dir / MODELS / name
    try:
        target = os.readlink(link)
    except OSError:
        return None
    directory = (link.parent / target) if not os.path.isabs(target) else Path(target)
    try:
        return load_model_dir(directory, deep=deep)
    except BundleError as exc:
        log.warning("%s link points at an invalid model: %s", name, exc)
        return None


def active_model(state_dir: Path | None = None, deep: bool = True) -> InstalledModel | None:
    """The model the agent should run, or None when nothing is installed.

    ``current`` when it is valid; if it is not (a damaged disk), ``previous``.
    The agent should still load it through ``read_bundle(m.bundle_path, key)``.
    """
    state_dir = Path(state_dir or default_state_dir())
    model = _link(state_dir, CURRENT, deep)
    if model is None:
        model = _link(state_dir, PREVIOUS, deep)
        if model is not None:
            log.warning("current model is missing or damaged; using the previous one")
    return model


def previous_model(state_dir: Path | None = None) -> InstalledModel | None:
    return _link(Path(state_dir or default_state_dir()), PREVIOUS)


def store_status(state_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``edge-agent models`` and ``edge-deploy status`` show."""
    state_dir = Path(state_dir or default_state_dir())
    current = _link(state_dir, CURRENT)
    previous = _link(state_dir, PREVIOUS)
    models_dir = state_dir / MODELS
    installed = sorted(p.name for p in models_dir.iterdir()) if models_dir.is_dir() else []
    probation = read_probation(state_dir)
    return {
        "state_dir": str(state_dir),
        "active": current.describe() if current else None,
        "previous": previous.describe() if previous else None,
        "installed": [s for s in installed if _SHA_RE.match(s)],
        "probation": asdict(probation) if probation else None,
        "agent_pid": _read_agent_pid(state_dir),
    }


# --------------------------------------------------------------------------- keys


def resolve_public_key(
    state_dir: Path, public_key: Path | Ed25519PublicKey | None = None
) -> Ed25519PublicKey | None:
    """The key signatures must verify with: explicit, else pinned on the device, else none."""
    if isinstance(public_key, str | Path):
        return load_public_key(Path(public_key))
    if public_key is not None:
        return public_key
    for candidate in (state_dir / TRUSTED_KEY, SYSTEM_TRUSTED_KEY):
        if candidate.is_file():
            return load_public_key(candidate)
    return None


# --------------------------------------------------------------------------- install


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

    Raises:
        InstallError: refused at some step; the active model is unchanged.
    """
    state_dir = Path(state_dir or default_state_dir())
    bundle_path = Path(bundle_path)
    timings: dict[str, float] = {}
    _ensure_layout(state_dir)
    with _store_lock(state_dir):
        _cleanup_leftovers(state_dir)
        t0 = time.perf_counter()
        key = _step("verify", lambda: resolve_public_key(state_dir, public_key))
        temp, sha, _size = _copy_in(bundle_path, state_dir, expected_sha256, expected_size)
        try:
            timings["copy"] = _ms_since(t0)

            t0 = time.perf_counter()
            bundle = _step("verify", lambda: read_bundle(temp, key, require_signature=key is not None))
            current = active_model(state_dir)
            _check_compatible(bundle.manifest, current, allow_new_input, allow_downgrade)
            timings["verify"] = _ms_since(t0)

            if current is not None and current.sha256 == sha:
                return InstallResult(
                    status="already_active", active=current, previous=previous_model(state_dir),
                    timings_ms=timings,
                )

            t0 = time.perf_counter()
            smoke = run_smoke_child(temp, threads=threads, timeout_s=smoke_timeout_s)
            timings["smoke"] = _ms_since(t0)

            t0 = time.perf_counter()
            new = _materialise(state_dir, sha, temp, bundle)
            _swap_links(state_dir, new_target=new, new_previous=current)
            timings["swap"] = _ms_since(t0)
        except EdgeError as exc:
            renamed = _name_given_bundle(exc, temp, bundle_path)
            if renamed is exc:
                raise
            raise renamed from exc
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        clear_probation(state_dir)
        _collect_garbage(state_dir)
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
    _ensure_layout(state_dir)
    t0 = time.perf_counter()
    with _store_lock(state_dir):
        _cleanup_leftovers(state_dir)
        current = _link(state_dir, CURRENT)
        previous = _link(state_dir, PREVIOUS)
        if previous is None:
            raise InstallError("there is no previous model to roll back to", step="rollback")
        if current is not None and current.sha256 == previous.sha256:
            raise InstallError("the previous model is the active one already", step="rollback")
        _swap_links(state_dir, new_target=previous, new_previous=current, current_first=True)
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


def run_smoke_child(bundle: Path, threads: int = 1, timeout_s: float = SMOKE_TIMEOUT_S) -> dict[str, Any]:
    """Run the smoke test of ``bundle`` in a child process; raise InstallError unless it passes."""
    cmd = [sys.executable, "-m", "edge_agent.model.smoke_child", str(bundle), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"smoke test did not finish within {timeout_s:g} s", step="smoke") from exc
    report: dict[str, Any] = {}
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                report = parsed
                break
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise InstallError(f"smoke test crashed the interpreter ({name})", step="smoke")
    if proc.returncode != 0 or not report.get("passed"):
        reason = report.get("summary") or report.get("error") or proc.stderr.strip()[-300:]
        raise InstallError(f"smoke test failed: {reason}", step="smoke")
    return report


def _step(step: str, func: Any) -> Any:
    try:
        return func()
    except InstallError:
        raise
    except EdgeError as exc:
        raise InstallError(str(exc), step=step) from exc


def _name_given_bundle(exc: EdgeError, temp: Path, given: Path) -> EdgeError:
    """``exc`` with the internal ``tmp/incoming-….part`` copy replaced by the user's bundle path.

    Verification and the smoke test run on the private copy, so their messages name
    it; the user should see the file they gave. The exception type and attributes
    (e.g. ``InstallError.step``) are kept.
    """
    message = str(exc)
    if str(temp) not in message:
        return exc
    renamed = copy.copy(exc)
    renamed.args = (message.replace(str(temp), str(given)), *exc.args[1:])
    return renamed


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _ensure_layout(state_dir: Path) -> None:
    try:
        for directory in (state_dir, state_dir / MODELS, state_dir / TMP):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                _adopt(directory, state_dir)
    except OSError as exc:
        raise InstallError(f"cannot use state directory {state_dir}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _store_lock(state_dir: Path) -> Iterator[None]:
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse early when the filesystem cannot hold ``needed`` bytes plus a margin."""
    free = shutil.disk_usage(directory).free
    if free < needed + FREE_SPACE_MARGIN:
        raise InstallError(
            f"not enough free space in {directory}: {free // 1_048_576} MiB free, "
            f"{(needed + FREE_SPACE_MARGIN) // 1_048_576} MiB needed",
            step="copy",
        )


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


def _materialise(state_dir: Path, sha: str, temp: Path, bundle: Bundle) -> InstalledModel:
    """Extract into a staging directory, fsync, and rename it to models/<sha>/."""
    final = state_dir / MODELS / sha
    with contextlib.suppress(BundleError):
        return load_model_dir(final)  # same bundle installed before (e.g. a re-install)
    staging = state_dir / TMP / f"stage-{sha[:16]}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(mode=0o755)
        extract_bundle(bundle, staging)
        shutil.copyfile(temp, staging / BUNDLE_FILE)
        with (staging / BUNDLE_FILE).open("rb") as handle:
            os.fsync(handle.fileno())
        fsync_dir(staging)
        _adopt(staging, state_dir, recursive=True)
        if final.exists():  # damaged leftover of an earlier install of the same bundle
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(state_dir / MODELS)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InstallError(f"cannot write the model store: {exc.strerror or exc}", step="extract") from exc
    return load_model_dir(final)


def _swap_links(
    state_dir: Path, new_target: InstalledModel, new_previous: InstalledModel | None,
    current_first: bool = False,
) -> None:
    """Point ``current`` at ``new_target`` and ``previous`` at ``new_previous``, each atomically.

    An install links ``previous`` first: killed in between, both links name the old model
    and the install can simply be repeated. A rollback links ``current`` first: its target
    is ``previous`` itself, so linking ``previous`` first and being killed would leave both
    links on the model rolled back from and the rollback target unreachable.
    """
    try:
        if current_first:
            _replace_link(state_dir, CURRENT, new_target.sha256)
        if new_previous is not None:
            _replace_link(state_dir, PREVIOUS, new_previous.sha256)
        if not current_first:
            _replace_link(state_dir, CURRENT, new_target.sha256)
    except OSError as exc:
        raise InstallError(f"cannot switch the model: {exc.strerror or exc}", step="swap") from exc


def _replace_link(state_dir: Path, name: str, sha: str) -> None:
    models = state_dir / MODELS
    tmp = models / f".{name}.{uuid.uuid4().hex[:8]}.link"
    os.symlink(sha, tmp)  # relative: the store can move (DynamicUser's /var/lib/private)
    _adopt(tmp, state_dir)
    os.replace(tmp, models / name)
    fsync_dir(models)


def _cleanup_leftovers(state_dir: Path) -> None:
    """Remove what a killed install or rollback left: tmp/ entries, link temps, unlinked models.

    Never anything ``current`` or ``previous`` points at. Called under the store lock.
    """
    tmp = state_dir / TMP
    if not tmp.is_dir():
        return
    for link in (state_dir / MODELS).glob(".*.link"):
        with contextlib.suppress(OSError):
            link.unlink()
    for entry in tmp.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    _collect_garbage(state_dir)  # a kill between the swap and the collection leaves old models


def _collect_garbage(state_dir: Path) -> None:
    """Delete model directories that are neither current nor previous."""
    keep = {CURRENT, PREVIOUS}
    for name in (CURRENT, PREVIOUS):
        with contextlib.suppress(OSError):
            keep.add(Path(os.readlink(state_dir / MODELS / name)).name)
    for entry in (state_dir / MODELS).iterdir():
        if entry.name not in keep and _SHA_RE.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(state_dir / MODELS)


def _adopt(path: Path, state_dir: Path, recursive: bool = False) -> None:
    """When root installs into an agent-owned state dir, hand new files to the agent's user."""
    if os.geteuid() != 0:
        return
    try:
        st = state_dir.stat()
    except OSError:
        return
    if st.st_uid == 0 and st.st_gid == 0:
        return
    paths = [path]
    if recursive and path.is_dir():
        paths.extend(path.rglob("*"))
    for p in paths:
        with contextlib.suppress(OSError):
            os.lchown(p, st.st_uid, st.st_gid)


# --------------------------------------------------------------------------- running agent


def write_pid_file(state_dir: Path, pid: int | None = None) -> Path:
    """Called by the agent at start so installs can signal it."""
    path = Path(state_dir) / PID_FILE
    atomic_write(path, f"{pid or os.getpid()}\n".encode())
    return path


def remove_pid_file(state_dir: Path) -> None:
    path = Path(state_dir) / PID_FILE
    with contextlib.suppress(OSError):
        if _read_agent_pid(Path(state_dir)) == os.getpid():
            path.unlink()


def _read_agent_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # not running (stale pid file)
    # guard against a recycled pid: only an edge-agent process is ever signalled
    return pid if b"edge" in cmdline else None


def signal_running_agent(state_dir: Path, signum: int = signal.SIGHUP) -> bool:
    """Tell a running agent to reload its model; False when none runs."""
    pid = _read_agent_pid(Path(state_dir))
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError) as exc:
        log.warning("cannot signal agent pid %d: %s", pid, exc)
        return False
    return True


# --------------------------------------------------------------------------- probation


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
    try:
        data = json.loads((Path(state_dir) / PROBATION_FILE).read_text())
        return Probation(**data)
    except (OSError, ValueError, TypeError):
        return None


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
    state_dir = Path(state_dir)
    probation = read_probation(state_dir)
    if probation is None:
        return None
    current = _link(state_dir, CURRENT, deep=False)
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


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-model``, ``rollback`` and ``models`` to ``edge-agent``."""
    p = subparsers.add_parser(
        "install-model", help="verify, smoke-test and activate a model bundle",
        description="Install a bundle into the model store; the previous model is kept for rollback.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    _state_dir_arg(p)
    p.add_argument("--public-key", type=Path, default=None,
                   help="Ed25519 public key (PEM); default the pinned state-dir/trusted.pub "
                        f"or {SYSTEM_TRUSTED_KEY}")
    p.add_argument("--allow-new-input", action="store_true",
                   help="accept a model whose input differs from the active model's")
    p.add_argument("--no-downgrade", action="store_true",
                   help="refuse a lower version of the active model")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads for the smoke test")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=_cmd_install)

    p = subparsers.add_parser("rollback", help="activate the previous model again")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(handler=_cmd_rollback)

    p = subparsers.add_parser("models", help="show the active and previous model")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON on stdout")
    p.set_defaults(handler=_cmd_models)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="model store (default: the agent's, see edge-agent run --help)")


def _line(model: dict[str, Any] | None) -> str:
    if not model:
        return "none"
    return f"{model['name']} {model['version']} ({model['short_sha']})"


def _cmd_install(args: argparse.Namespace) -> int:
    try:
        result = install_model(
            args.bundle, args.state_dir, args.public_key, allow_new_input=args.allow_new_input,
            allow_downgrade=not args.no_downgrade, threads=args.threads,
        )
    except EdgeError as exc:
        if not args.json:
            raise
        active = active_model(args.state_dir)
        step = exc.step if isinstance(exc, InstallError) else ""
        print(json.dumps({"ok": False, "error": str(exc), "step": step,
                          "active": active.describe() if active else None}))
        return 2
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        data = result.to_json()
        print(f"{result.status}: active {_line(data['active'])}, previous {_line(data['previous'])}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    try:
        result = rollback(args.state_dir)
    except EdgeError as exc:
        if not args.json:
            raise
        active = active_model(args.state_dir)
        print(json.dumps({"ok": False, "error": str(exc), "step": "rollback",
                          "active": active.describe() if active else None}))
        return 2
    data = result.to_json()
    if args.json:
        print(json.dumps(data))
    else:
        print(f"rolled back: active {_line(data['active'])}, previous {_line(data['previous'])}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    status = store_status(args.state_dir)
    if args.json:
        print(json.dumps(status))
    else:
        print(f"active:   {_line(status['active'])}")
        print(f"previous: {_line(status['previous'])}")
        if status["probation"]:
            left = max(0.0, status["probation"]["until"] - time.time())
            print(f"probation: {left:.0f} s left, {status['probation']['crashes']} crash(es)")
    return 0
