"""Over-the-air model updates: the ``update_model`` and ``rollback`` commands.

``update_model`` args (the command itself is signed by the command layer, a
privileged command verified with the device's pinned command key)::

    {"url": "https://…/digits-1.1.bundle" | "http://…" | "file:///…",
     "sha256": "<64 hex of the bundle file>", "size": <bytes>,
     "signature": "<optional base64 Ed25519 over the bundle's manifest.json>",
     "probation_s": <optional, 0..3600, default 60>,
     "allow_new_input": <optional bool>}

The device downloads into its state directory while checking size and sha256
(and free space first; :mod:`.download`), installs through :mod:`edge_agent.store.install` (bundle
signature required when a bundle key is pinned, smoke test in a child
process, atomic swap), swaps the model into the running pipeline, then keeps
the new model on probation: inference errors, latency against the manifest
budget and crashes (counted on disk across restarts) are watched; a failure
rolls back to the previous model by itself. Acks: ``in_progress``
(downloading, installed/on probation), then ``succeeded`` or ``failed`` with a
reason (including "rolled back to …"); the worker starts only once the first
``in_progress`` is sent, so no later ack overtakes it. Installing an older version of the
same model is refused: downgrades need the signed ``rollback`` command, which is never
refused because an update runs: it cancels the update (see :class:`OtaUpdater`).
The download's limits (deadline, redirects, ``file://`` root) are the agent's ``[ota]`` section.

After every reload the agent must report the bundle identity
(:func:`edge_agent.model.loader.bundle_identity`, ``manifest_sha256``) of the model it
installed; a manifest-only update (same weights, new labels or thresholds) is a
swap like any other.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import OtaSection
from edge_agent.control import AgentControl, ModelHost
from edge_agent.errors import EdgeError
from edge_agent.model.bundle import MANIFEST, BundleLimits, read_manifest_bytes
from edge_agent.model.loader import bundle_identity
from edge_agent.remote.download import Abort, download, file_url_problem, url_problem
from edge_agent.remote.protocol import Ack, CommandContext, CommandError, CommandSpec, command
from edge_agent.store.install import MAX_BUNDLE_BYTES, InstallResult, install_model, rollback
from edge_agent.store.layout import InstalledModel, active_model, resolve_public_key
from edge_agent.store.probation import clear_probation, start_probation
from edge_agent.util.fs import SHA256_HEX_RE

if TYPE_CHECKING:  # cryptography (~6 MB RSS) and urllib.request load only when an update needs them
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
DEFAULT_PROBATION_S = 60.0
MAX_PROBATION_S = 3600.0
TICK_S = 0.25
UPDATE_ARGS = frozenset({"url", "sha256", "size", "signature", "probation_s", "allow_new_input"})
_SHA_RE = re.compile(SHA256_HEX_RE.pattern, re.IGNORECASE)


class OtaError(EdgeError):
    """An install or probation step failed, or an update is already running (the reason goes into the ack)."""


@dataclass(frozen=True)
class UpdateRequest:
    url: str
    sha256: str
    size: int
    signature: bytes | None = None
    probation_s: float = DEFAULT_PROBATION_S
    allow_new_input: bool = False


@dataclass(frozen=True)
class ProbationPolicy:
    max_error_rate: float = 0.2  # errors / (inferences + errors) over the probation
    min_samples: int = 5  # before the error rate counts
    latency_factor: float = 3.0  # live p95 may exceed the budget (smoke-test mean) this much
    max_crashes: int = 2


def parse_update_args(args: dict[str, Any]) -> UpdateRequest:
    """Validate ``update_model`` args strictly; raises CommandError with the reason."""
    extra = set(args) - UPDATE_ARGS
    if extra:
        raise CommandError(f"unknown update_model argument(s) {sorted(extra)}")
    url, sha, size = args.get("url"), args.get("sha256"), args.get("size")
    if not isinstance(url, str) or len(url) > 2048:
        raise CommandError("url must be a string")
    problem = url_problem(url)
    if problem is not None:
        raise CommandError(problem)
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise CommandError("sha256 must be 64 hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
        raise CommandError(f"size must be an integer in 1..{MAX_BUNDLE_BYTES}")
    signature = None
    if "signature" in args:
        raw = args["signature"]
        try:
            signature = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
        except (binascii.Error, ValueError):
            signature = None
        if signature is None or len(signature) != 64:
            raise CommandError("signature must be base64 of a 64-byte Ed25519 signature")
    probation = args.get("probation_s", DEFAULT_PROBATION_S)
    if isinstance(probation, bool) or not isinstance(probation, int | float) or not \
            0 <= probation <= MAX_PROBATION_S:
        raise CommandError(f"probation_s must be a number in 0..{MAX_PROBATION_S:.0f}")
    allow = args.get("allow_new_input", False)
    if not isinstance(allow, bool):
        raise CommandError("allow_new_input must be true or false")
    return UpdateRequest(url, sha.lower(), size, signature, float(probation), allow)


# --------------------------------------------------------------------------- the updater


class OtaUpdater:
    """Runs one update at a time in a worker thread and reports via ``reply``; rollbacks too.

    A ``rollback`` is never held up by a download: it cancels the running update (its
    :class:`~edge_agent.remote.download.Abort` shuts the connection down) and goes ahead.
    Every change to the store — the install and swap, a rollback after a failed probation,
    the probation record — happens under one lock and only while the update has not been
    cancelled, so a rollback waits at most for an install already under way (its smoke test
    is bounded), and the cancelled update ends with ``failed`` naming the rollback without
    touching the store again.
    """

    def __init__(self, host: ModelHost, policy: ProbationPolicy | None = None,
                 settings: OtaSection | None = None, limits: BundleLimits | None = None) -> None:
        self.host = host
        self.policy = policy or ProbationPolicy()
        self.settings = settings or OtaSection()  # the agent's [ota] section, replaced on reload
        self.limits = limits or BundleLimits()  # the agent's [model] max_model_mb, replaced on reload
        self.latency_budget_ms: float | None = None  # the agent's [model] latency_budget_ms (None: the bundle's)
        self._busy = threading.Lock()  # one update job at a time
        self._store = threading.Lock()  # store changes: install + swap, rollbacks, the probation record
        self._abort = Abort()  # the running (or last) update's
        self._thread: threading.Thread | None = None
        self.last_timings: dict[str, float] = {}

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def start_update(self, request: UpdateRequest, cmd_id: str, reply: Callable[[Ack], None]) -> None:
        """Begin an update in the background; raises OtaError when one is running."""
        self.reserve()
        self.launch(request, cmd_id, reply)

    def reserve(self) -> None:
        """Claim the updater for one update (then :meth:`launch` it); raises OtaError when busy."""
        if not self._busy.acquire(blocking=False):
            raise OtaError("busy: another model update is in progress")
        self._abort = Abort()

    def launch(self, request: UpdateRequest, cmd_id: str, reply: Callable[[Ack], None]) -> None:
        """Run the update claimed by :meth:`reserve` in a worker thread (it releases the claim)."""
        self._thread = threading.Thread(
            target=self._run_update, args=(request, cmd_id, reply, self._abort), name="ota", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError:  # no thread to be had: answer and free the updater
            self._busy.release()
            reply(Ack(cmd_id, "failed", "internal_error: cannot start the update thread"))

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_update(self, request: UpdateRequest, cmd_id: str, reply: Callable[[Ack], None], abort: Abort) -> None:
        try:
            ack = self.update(request, cmd_id, reply, abort)
        except Exception as exc:  # the worker must always answer
            log.exception("model update %s crashed", cmd_id)
            ack = Ack(cmd_id, "failed", f"internal_error: {type(exc).__name__}")
        finally:
            self._busy.release()
        reply(ack)

    def update(self, request: UpdateRequest, cmd_id: str, reply: Callable[[Ack], None],
               abort: Abort | None = None) -> Ack:
        """The whole update, synchronously; returns the final ack. ``abort`` (default: a new
        one, which :meth:`rollback` cancels) stops it."""
        if abort is None:
            abort = self._abort = Abort()
        t0 = time.monotonic()
        state_dir = Path(self.host.state_dir)
        timings: dict[str, float] = {}
        self.last_timings = timings
        fixed = self.host.fixed_model
        if fixed is not None:  # installing into the store would never reach the running agent
            return Ack(cmd_id, "failed", f"the agent runs the fixed model file {fixed} (model.bundle / "
                       "--bundle); over-the-air updates need the model store: unset it",
                       {"active": _active(state_dir)})
        try:
            target = self._download(request, abort)
            timings["download_s"] = time.monotonic() - t0
            with self._store:
                try:
                    abort.check()  # a rollback arrived during the download: it has the store now
                    result = self._install(target, request)
                finally:
                    target.unlink(missing_ok=True)
                timings["install_s"] = time.monotonic() - t0
                if result.status == "already_active":
                    return Ack(cmd_id, "succeeded", "already active", {"active": describe(result.active)})
                new = describe(result.active)
                problem = self._swap_in(new)
                if problem is not None:
                    return Ack(cmd_id, "failed", problem, {"active": _active(state_dir)})
                timings["swapped_s"] = time.monotonic() - t0
        except (OtaError, EdgeError, OSError) as exc:
            return Ack(cmd_id, "failed", _reason(exc), {"active": _active(state_dir)})
        reply(Ack(cmd_id, "in_progress",
                  f"installed {new['name']} {new['version']}; probation {request.probation_s:.0f} s",
                  {"active": new}))

        problem = self.watch_probation(result.active, request.probation_s, cmd_id, abort)
        if abort.reason is not None:  # the rollback command took over: nothing more to do here
            return Ack(cmd_id, "failed", abort.reason, {"active": _active(state_dir)})
        if problem is not None:
            back = self._roll_back(f"probation failed: {problem}", abort)
            timings["rolled_back_s"] = time.monotonic() - t0
            return Ack(cmd_id, "failed", back, {"active": _active(state_dir), "timings": _round(timings)})
        with self._store:
            if abort.reason is not None:
                return Ack(cmd_id, "failed", abort.reason, {"active": _active(state_dir)})
            clear_probation(state_dir)
        timings["succeeded_s"] = time.monotonic() - t0
        return Ack(cmd_id, "succeeded", f"{new['name']} {new['version']} active, probation passed",
                   {"active": new, "previous": describe(result.previous) if result.previous else None,
                    "timings": _round(timings)})

    def _download(self, request: UpdateRequest, abort: Abort) -> Path:
        """Fetch the bundle into ``<state_dir>/downloads`` (stale downloads removed first)."""
        downloads = Path(self.host.state_dir) / DOWNLOADS
        downloads.mkdir(parents=True, exist_ok=True)
        for stale in downloads.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        target = downloads / f"{uuid.uuid4().hex}.bundle"
        return download(request.url, target, request.size, request.sha256, self.settings, abort)

    def _install(self, target: Path, request: UpdateRequest) -> InstallResult:
        state_dir = Path(self.host.state_dir)
        key = resolve_public_key(state_dir, self.host.bundle_key)
        if request.signature is not None:
            _verify_detached(target, request.signature, key, self.limits)
        return install_model(
            target, state_dir, key, expected_sha256=request.sha256, expected_size=request.size,
            allow_new_input=request.allow_new_input, allow_downgrade=False, signal_agent=False,
            limits=self.limits, latency_budget_ms=self.latency_budget_ms,
        )

    def _swap_in(self, new: dict[str, Any]) -> str | None:
        """Reload the agent onto the installed model ``new``; on failure roll back and say why."""
        try:
            loaded = self.host.reload_model()
        except EdgeError as exc:
            return self._roll_back_locked(f"the running agent cannot load the new model: {exc}")
        problem = _not_running(loaded, new["manifest_sha256"])
        return None if problem is None else self._roll_back_locked(problem)

    def watch_probation(self, model: InstalledModel, duration_s: float, cmd_id: str = "",
                        abort: Abort | None = None) -> str | None:
        """Watch the running model for ``duration_s``; the reason it failed, or None.
        A cancelled ``abort`` ends the watch at the next tick with its reason."""
        abort = abort or Abort()
        state_dir = Path(self.host.state_dir)
        with self._store:
            if abort.reason is not None:
                return abort.reason
            start_probation(state_dir, model, duration_s, self.policy.max_crashes, cmd_id)
        budget = model.manifest.latency_budget_ms if self.latency_budget_ms is None else self.latency_budget_ms
        start = self.host.probe()
        deadline = time.monotonic() + duration_s
        while True:
            if abort.reason is not None:
                return abort.reason
            sample = self.host.probe()
            inferences = sample.inferences - start.inferences
            errors = sample.errors - start.errors
            total = inferences + errors
            if total >= self.policy.min_samples and errors / total > self.policy.max_error_rate:
                return f"error rate {errors}/{total} above {self.policy.max_error_rate:.0%}"
            if (budget > 0 and inferences >= self.policy.min_samples and sample.invoke_p95_ms is not None
                    and sample.invoke_p95_ms > budget * self.policy.latency_factor):
                return (f"p95 inference latency {sample.invoke_p95_ms:.2f} ms above "
                        f"{self.policy.latency_factor:g} x the {budget:g} ms budget")
            current = active_model(state_dir, deep=False)
            if current is None or current.sha256 != model.sha256:
                return "the model was replaced during probation"
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(TICK_S, max(0.0, deadline - time.monotonic())))

    def _roll_back(self, why: str, abort: Abort) -> str:
        """Roll back after a failed probation, unless the rollback command already took over."""
        with self._store:
            if abort.reason is not None:
                return f"{why}; {abort.reason}"
            return self._roll_back_locked(why)

    def _roll_back_locked(self, why: str) -> str:
        state_dir = Path(self.host.state_dir)
        try:
            result = rollback(state_dir, signal_agent=False)
        except EdgeError as exc:
            return f"{why}; rollback impossible: {exc}"
        old = describe(result.active)
        try:
            loaded = self.host.reload_model()
        except EdgeError as exc:
            log.error("reloading the previous model failed: %s", exc)
            return f"{why}; rolled back on disk but the agent failed to reload: {exc}"
        problem = _not_running(loaded, old["manifest_sha256"])
        if problem is not None:
            log.error("after the rollback %s", problem)
            return f"{why}; rolled back on disk but {problem}"
        log.warning("%s; rolled back to %s %s", why, old["name"], old["version"])
        return f"{why}; rolled back to {old['name']} {old['version']} ({old['short_sha']})"

    def rollback(self, cmd_id: str) -> Ack:
        """The signed ``rollback`` command: previous becomes active again (downgrade).

        A running update is cancelled (a download is broken off at once) and ends ``failed``;
        the rollback waits only for an install that is already under way.
        """
        fixed = self.host.fixed_model
        if fixed is not None:
            return Ack(cmd_id, "failed", f"the agent runs the fixed model file {fixed}; nothing to roll back")
        if self.busy:
            self._abort.cancel(f"cancelled: the rollback command {cmd_id} took over")
        state_dir = Path(self.host.state_dir)
        with self._store:
            try:
                t0 = time.monotonic()
                result = rollback(state_dir, signal_agent=False)
                active = describe(result.active)
                problem = _not_running(self.host.reload_model(), active["manifest_sha256"])
            except EdgeError as exc:
                return Ack(cmd_id, "failed", _reason(exc), {"active": _active(state_dir)})
        if problem is not None:
            return Ack(cmd_id, "failed", f"rolled back on disk but {problem}", {"active": active})
        return Ack(cmd_id, "succeeded", "rolled back",
                   {"active": active, "previous": describe(result.previous) if result.previous else None,
                    "rollback_ms": round((time.monotonic() - t0) * 1000, 1)})


def _verify_detached(bundle_path: Path, signature: bytes, key: Ed25519PublicKey | None,
                     limits: BundleLimits) -> None:
    if key is None:
        raise OtaError("the command carries a bundle signature but no bundle key is pinned")
    from cryptography.exceptions import InvalidSignature

    manifest_bytes = read_manifest_bytes(bundle_path, limits)
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise OtaError("bad signature: the command's signature does not verify with the pinned key") from exc


def _reason(exc: BaseException) -> str:
    step = getattr(exc, "step", "")
    return f"{step}: {exc}" if step else str(exc)


def describe(model: InstalledModel) -> dict[str, Any]:
    """The store's description of an installed model plus its bundle identity (``manifest_sha256``,
    None when the manifest cannot be read), so acks and the agent's ``status`` can be compared."""
    try:
        identity: str | None = bundle_identity((model.directory / MANIFEST).read_bytes())
    except OSError as exc:
        log.error("cannot read the manifest of %s: %s", model.directory, exc)
        identity = None
    return {**model.describe(), "manifest_sha256": identity}


def _not_running(loaded: dict[str, str], expected: str | None) -> str | None:
    """Why the agent's reload did not bring up the bundle with identity ``expected``, or None."""
    if expected is None:
        return "the installed model's manifest cannot be read"
    running = loaded.get("manifest_sha256") if isinstance(loaded, dict) else None
    if running == expected:
        return None
    what = f"bundle {running[:12]}" if isinstance(running, str) and running else "a bundle it does not identify"
    return f"the running agent reports {what}, not the installed bundle {expected[:12]} (manifest sha256)"


def _active(state_dir: Path) -> dict[str, Any] | None:
    model = active_model(state_dir, deep=False)
    return describe(model) if model else None


def _round(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}


# --------------------------------------------------------------------------- the commands


def _cmd_update_model(ctx: CommandContext) -> Ack:
    request = parse_update_args(ctx.args)
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no running agent to update")
    control: AgentControl = ctx.control
    updater = control.updater
    problem = file_url_problem(request.url, updater.settings.file_root)
    if problem is not None:
        raise CommandError(problem)
    try:
        updater.reserve()
    except OtaError as exc:
        return Ack(ctx.id, "failed", str(exc))
    # The worker starts once this ack is on its way: its own acks can never overtake it.
    ctx.after_ack(lambda: updater.launch(request, ctx.id, ctx.reply))
    return Ack(ctx.id, "in_progress", f"downloading {request.size} bytes")


def _cmd_rollback(ctx: CommandContext) -> Ack:
    if ctx.args:
        raise CommandError("rollback takes no arguments")
    if ctx.control is None:
        return Ack(ctx.id, "failed", "no running agent")
    control: AgentControl = ctx.control
    return control.updater.rollback(ctx.id)


def commands() -> tuple[CommandSpec, ...]:
    """The privileged ``update_model`` and ``rollback`` commands, for the device's command registry."""
    return (
        command("update_model", _cmd_update_model, privileged=True,
                description="download, verify, smoke-test and activate a model bundle"),
        command("rollback", _cmd_rollback, privileged=True,
                description="re-activate the previous model (the only way to downgrade)"),
    )
