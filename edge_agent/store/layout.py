"""The model store on disk: its layout, the installed models and the ``current``/``previous`` links.

Layout under the state directory (``/var/lib/edge-agent`` under systemd)::

    models/<sha256>/   one installed bundle: bundle.zip (as received) and its
                       extracted, verified members; <sha256> is the bundle file's hash
    models/current  -> <sha256>   the active model (relative symlink; the agent's
                                  default ``model.bundle`` is this directory)
    models/previous -> <sha256>   the last good model, target of a rollback
    tmp/               incoming copies and staging directories (same filesystem)
    probation.json     the model on probation (edge_agent.store.probation)
    trusted.pub        optional pinned Ed25519 key (also /etc/edge-agent/trusted.pub)
    agent.lock         flock held by the running agent: one per state directory (edge_agent.store.agent_lock)
    agent.pid          written by the agent holding agent.lock (edge_agent.store.pidfile)
    store.lock         serialises installs and rollbacks (flock)

Every change to the links is an ``os.replace`` followed by an fsync of ``models/``, so
the store is valid after a kill at any point; :func:`cleanup_leftovers` removes the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import default_state_dir
from edge_agent.errors import BundleError, InstallError
from edge_agent.model.bundle import MANIFEST, MODEL
from edge_agent.model.keys import load_public_key
from edge_agent.model.manifest import Manifest
from edge_agent.schema import ValidationError
from edge_agent.store import pidfile
from edge_agent.util.fs import SHA256_HEX_RE, fsync_dir, sha256_file

if TYPE_CHECKING:  # cryptography costs ~8 MB RSS: import it only where a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

SYSTEM_TRUSTED_KEY = Path("/etc/edge-agent/trusted.pub")
MODELS = "models"
CURRENT = "current"
PREVIOUS = "previous"
TMP = "tmp"
BUNDLE_FILE = "bundle.zip"
TRUSTED_KEY = "trusted.pub"
LOCK_FILE = "store.lock"


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
    if not SHA256_HEX_RE.fullmatch(sha):
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


def read_link(state_dir: Path, name: str, deep: bool = True) -> InstalledModel | None:
    """The valid model that link ``name`` (``current`` or ``previous``) names, else None."""
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
    model = read_link(state_dir, CURRENT, deep)
    if model is None:
        model = read_link(state_dir, PREVIOUS, deep)
        if model is not None:
            log.warning("current model is missing or damaged; using the previous one")
    return model


def previous_model(state_dir: Path | None = None) -> InstalledModel | None:
    return read_link(Path(state_dir or default_state_dir()), PREVIOUS)


def store_status(state_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``edge-agent models`` and ``edge-deploy status`` show."""
    from edge_agent.store.probation import read_probation  # probation reads the links: import here

    state_dir = Path(state_dir or default_state_dir())
    current = read_link(state_dir, CURRENT)
    previous = read_link(state_dir, PREVIOUS)
    models_dir = state_dir / MODELS
    installed = sorted(p.name for p in models_dir.iterdir()) if models_dir.is_dir() else []
    probation = read_probation(state_dir)
    return {
        "state_dir": str(state_dir),
        "active": current.describe() if current else None,
        "previous": previous.describe() if previous else None,
        "installed": [s for s in installed if SHA256_HEX_RE.fullmatch(s)],
        "probation": asdict(probation) if probation else None,
        "agent_pid": pidfile.read_agent_pid(state_dir),
    }


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


# --------------------------------------------------------------------------- changing the store


def ensure_layout(state_dir: Path) -> None:
    """Create the state, models and tmp directories (owned by the agent's user)."""
    try:
        for directory in (state_dir, state_dir / MODELS, state_dir / TMP):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                adopt(directory, state_dir)
    except OSError as exc:
        raise InstallError(f"cannot use state directory {state_dir}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def store_lock(state_dir: Path) -> Iterator[None]:
    """Hold the store's flock: installs and rollbacks run one at a time."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def swap_links(
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
            replace_link(state_dir, CURRENT, new_target.sha256)
        if new_previous is not None:
            replace_link(state_dir, PREVIOUS, new_previous.sha256)
        if not current_first:
            replace_link(state_dir, CURRENT, new_target.sha256)
    except OSError as exc:
        raise InstallError(f"cannot switch the model: {exc.strerror or exc}", step="swap") from exc


def replace_link(state_dir: Path, name: str, sha: str) -> None:
    """Make ``models/<name>`` a relative link to ``<sha>`` with one rename."""
    models = state_dir / MODELS
    tmp = models / f".{name}.{uuid.uuid4().hex[:8]}.link"
    os.symlink(sha, tmp)  # relative: the store can move (DynamicUser's /var/lib/private)
    adopt(tmp, state_dir)
    os.replace(tmp, models / name)
    fsync_dir(models)


def cleanup_leftovers(state_dir: Path) -> None:
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
    collect_garbage(state_dir)  # a kill between the swap and the collection leaves old models


def collect_garbage(state_dir: Path) -> None:
    """Delete model directories that are neither current nor previous."""
    keep = {CURRENT, PREVIOUS}
    for name in (CURRENT, PREVIOUS):
        with contextlib.suppress(OSError):
            keep.add(Path(os.readlink(state_dir / MODELS / name)).name)
    for entry in (state_dir / MODELS).iterdir():
        if entry.name not in keep and SHA256_HEX_RE.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(state_dir / MODELS)


def adopt(path: Path, state_dir: Path, recursive: bool = False) -> None:
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
