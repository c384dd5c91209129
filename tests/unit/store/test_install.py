"""Model store: installs, refusals, rollback, probation and the agent signal, with real models."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli.main import main as agent_main
from edge_agent.model.bundle import read_bundle
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.store import pidfile as store_pidfile
from edge_agent.store import probation as store_probation
from edge_agent.util.fs import sha256_file
from tests.fixtures_ssh import BundleSet, DeployKeys

CRASHING_RUNTIME = Path(__file__).resolve().parents[2] / "crashing_runtime"


@pytest.fixture
def store(tmp_path: Path, deploy_keys: DeployKeys) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / store_layout.TRUSTED_KEY)  # pinned key
    return state


@pytest.fixture
def copies_into_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every temp file the store creates for an incoming copy, in order."""
    made: list[Path] = []
    real = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        made.append(Path(name))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    yield made


def _tree(state: Path) -> dict[str, str]:
    """Everything in the store but its lock file: link targets, file hashes, directories."""
    tree = {}
    for path in sorted(state.rglob("*")):
        rel = str(path.relative_to(state))
        if path.is_symlink():
            tree[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            tree[rel] = "dir"
        elif path.name != store_layout.LOCK_FILE:
            tree[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def _flock_waiters(path: Path) -> set[int]:
    """Pids blocked in flock() on ``path``: /proc/locks lines ``N: -> FLOCK ADVISORY WRITE PID MAJ:MIN:INODE``."""
    inode = path.stat().st_ino
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            i = fields.index("->")
            if fields[i + 1] == "FLOCK" and int(fields[i + 5].rsplit(":", 1)[1]) == inode:
                waiters.add(int(fields[i + 4]))
    return waiters


def _active_sha(state: Path) -> str | None:
    model = store_layout.active_model(state)
    return model.sha256 if model else None


def test_install_then_upgrade_then_rollback(store: Path, test_bundles: BundleSet) -> None:
    first = store_install.install_model(test_bundles.good, store)
    assert first.status == "installed"
    assert first.previous is None
    assert _active_sha(store) == sha256_file(test_bundles.good)
    assert first.smoke["passed"] is True
    assert os.readlink(store / "models" / "current") == first.active.sha256

    second = store_install.install_model(test_bundles.good_v2, store)
    assert second.previous is not None and second.previous.sha256 == first.active.sha256
    assert _active_sha(store) == sha256_file(test_bundles.good_v2)
    # the active model's bundle re-verifies end to end with the pinned key
    read_bundle(second.active.bundle_path, store / store_layout.TRUSTED_KEY)

    back = store_install.rollback(store)
    assert back.active.sha256 == first.active.sha256
    assert _active_sha(store) == first.active.sha256
    assert store_layout.previous_model(store).sha256 == second.active.sha256  # type: ignore[union-attr]

    again = store_install.install_model(test_bundles.good, store)
    assert again.status == "already_active"
    assert not list((store / "tmp").iterdir())


@pytest.mark.parametrize(
    ("kind", "step", "words"),
    [
        ("tampered", "verify", "sha256"),
        ("truncated", "verify", "not a bundle"),
        ("unsigned", "verify", "not signed"),
        ("wrong_signature", "verify", "does not verify"),
        ("wrong_input", "verify", "input"),
        ("too_slow", "smoke", "latency"),
    ],
)
def test_bad_bundle_refused_previous_stays(
    store: Path, test_bundles: BundleSet, kind: str, step: str, words: str
) -> None:
    store_install.install_model(test_bundles.good, store)
    before = _active_sha(store)
    given = getattr(test_bundles, kind)
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(given, store)
    assert info.value.step == step
    assert words in str(info.value)
    # the refusal names the bundle the user gave, never the store's private copy
    assert ".part" not in str(info.value) and "incoming-" not in str(info.value), str(info.value)
    if kind in ("tampered", "truncated", "unsigned", "wrong_signature"):
        assert str(info.value).startswith(str(given)) or f"bundle {given}" in str(info.value), str(info.value)
    assert _active_sha(store) == before
    assert store_layout.previous_model(store) is None
    assert not list((store / "tmp").iterdir())
    assert sorted(p.name for p in (store / "models").iterdir()) == sorted([before, "current"])


def test_unsigned_accepted_without_pinned_key(tmp_path: Path, test_bundles: BundleSet) -> None:
    result = store_install.install_model(test_bundles.unsigned, tmp_path / "s")
    assert result.status == "installed"


def test_new_input_allowed_on_request(store: Path, test_bundles: BundleSet) -> None:
    store_install.install_model(test_bundles.good, store)
    result = store_install.install_model(test_bundles.wrong_input, store, allow_new_input=True)
    assert result.active.manifest.name == "other"


def test_downgrade_refused_when_asked(store: Path, test_bundles: BundleSet) -> None:
    store_install.install_model(test_bundles.good_v2, store)
    with pytest.raises(store_install.InstallError, match="downgrades need a signed rollback"):
        store_install.install_model(test_bundles.good, store, allow_downgrade=False)


def test_expected_hash_and_size_checked(
    store: Path, test_bundles: BundleSet, copies_into_store: list[Path]
) -> None:
    with pytest.raises(store_install.InstallError, match="sha256 mismatch"):
        store_install.install_model(test_bundles.good, store, expected_sha256="0" * 64)
    assert not list((store / "tmp").iterdir())
    size = test_bundles.good.stat().st_size
    copies_into_store.clear()
    for wrong in (size + 1, size - 1):
        with pytest.raises(store_install.InstallError) as info:
            store_install.install_model(test_bundles.good, store, expected_size=wrong)
        assert info.value.step == "copy" and f"bundle is {size} bytes, expected {wrong}" in str(info.value)
    # refused on its size before a byte was copied into the store
    assert copies_into_store == []
    assert store_layout.active_model(store) is None
    assert store_install.install_model(test_bundles.good, store, expected_size=size).status == "installed"


def test_bundle_over_the_size_limit_refused_before_any_copy(
    store: Path, test_bundles: BundleSet, monkeypatch: pytest.MonkeyPatch, copies_into_store: list[Path]
) -> None:
    store_install.install_model(test_bundles.good, store)
    before = _tree(store)
    size = test_bundles.good_v2.stat().st_size
    monkeypatch.setattr(store_install, "MAX_BUNDLE_BYTES", size - 1)
    copies_into_store.clear()
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(test_bundles.good_v2, store)
    assert info.value.step == "copy"
    assert f"bundle is {size} bytes, more than the store accepts ({size - 1} bytes)" in str(info.value)
    # mutation guarded: without the check on the file's size first, the bundle is copied
    # into tmp/ before the copy loop notices the limit
    assert copies_into_store == []
    assert _tree(store) == before
    monkeypatch.setattr(store_install, "MAX_BUNDLE_BYTES", size)  # exactly the limit is accepted
    assert store_install.install_model(test_bundles.good_v2, store).status == "installed"


def test_source_growing_past_its_size_is_not_copied_whole(
    store: Path, test_bundles: BundleSet, tmp_path: Path
) -> None:
    """A bundle still being written (a FIFO stands in: its size reads 0) is refused as soon as
    the copy passes the size it had, not after the store copied all of it."""
    store_install.install_model(test_bundles.good, store)
    before = _tree(store)
    fifo = tmp_path / "growing.bundle"
    os.mkfifo(fifo)
    total = 16 << 20
    sent = [0]

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as pipe:
            block = test_bundles.good_v2.read_bytes()[:65536].ljust(65536, b"\0")
            while sent[0] < total:
                sent[0] += pipe.write(block)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(store_install.InstallError) as info:
            store_install.install_model(fifo, store)
    finally:
        with contextlib.suppress(OSError):  # let the writer's open() return if the store never read
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=60)
    assert info.value.step == "copy" and "grew while it was copied" in str(info.value)
    # mutation guarded: without the check against the size, all 16 MiB are copied first
    assert sent[0] < total // 4, sent[0]
    assert _tree(store) == before


def test_rollback_without_previous(store: Path, test_bundles: BundleSet) -> None:
    with pytest.raises(store_install.InstallError, match="no previous"):
        store_install.rollback(store)
    store_install.install_model(test_bundles.good, store)
    with pytest.raises(store_install.InstallError, match="no previous"):
        store_install.rollback(store)


def test_damaged_current_falls_back_to_previous(store: Path, test_bundles: BundleSet) -> None:
    first = store_install.install_model(test_bundles.good, store)
    second = store_install.install_model(test_bundles.good_v2, store)
    model = second.active.model_path
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    assert _active_sha(store) == first.active.sha256


def test_probation_crash_counter_rolls_back(store: Path, test_bundles: BundleSet) -> None:
    first = store_install.install_model(test_bundles.good, store)
    second = store_install.install_model(test_bundles.good_v2, store)
    store_probation.start_probation(store, second.active, duration_s=60, max_crashes=2)
    # a clean stop and restart is not a crash
    store_probation.note_agent_stop(store)
    assert store_probation.note_agent_start(store) is None
    assert store_probation.read_probation(store).crashes == 0  # type: ignore[union-attr]
    # two crashes are tolerated, the third start after a crash rolls back
    assert store_probation.note_agent_start(store) is None
    assert store_probation.note_agent_start(store) is None
    assert store_probation.read_probation(store).crashes == 2  # type: ignore[union-attr]
    result = store_probation.note_agent_start(store)
    assert result is not None and result.active.sha256 == first.active.sha256
    assert _active_sha(store) == first.active.sha256
    assert store_probation.read_probation(store) is None


def test_expired_probation_is_cleared(store: Path, test_bundles: BundleSet) -> None:
    store_install.install_model(test_bundles.good, store)
    second = store_install.install_model(test_bundles.good_v2, store)
    probation = store_probation.start_probation(store, second.active, duration_s=60, max_crashes=0)
    probation.until = time.time() - 1
    store_probation.write_probation(store, probation)
    assert store_probation.note_agent_start(store) is None  # a crash after the period does not count
    assert store_probation.read_probation(store) is None
    assert _active_sha(store) == second.active.sha256


_FAKE_AGENT = """
import os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
(state / "agent.pid").write_text(str(os.getpid()))
def hup(signum, frame):
    (state / "hup").write_text("1")
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
time.sleep(30)
"""


def test_install_signals_running_agent(store: Path, test_bundles: BundleSet) -> None:
    # the script is called edge-agent, like the real console script run by its interpreter
    script = store.parent / "edge-agent"
    script.write_text(_FAKE_AGENT)
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        result = store_install.install_model(test_bundles.good, store)
        assert result.agent_signalled
        assert proc.wait(timeout=10) == 0
        assert (store / "hup").read_text() == "1"
    finally:
        proc.kill()
        proc.wait()
    # a stale pid file (process gone) is not signalled
    assert not store_pidfile.signal_running_agent(store)


def test_cli_install_models_rollback_json(
    store: Path, test_bundles: BundleSet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main(["install-model", str(test_bundles.good), "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    assert agent_main(["install-model", str(test_bundles.tampered), "--state-dir", str(store),
                       "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["step"] == "verify"
    assert out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    assert agent_main(["install-model", str(test_bundles.good_v2), "--state-dir", str(store)]) == 0
    assert "installed: active" in capsys.readouterr().out
    assert agent_main(["models", "--state-dir", str(store)]) == 0
    text = capsys.readouterr().out
    assert "active:" in text and "previous:" in text
    assert agent_main(["rollback", "--state-dir", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["active"]["bundle_sha256"] == sha256_file(test_bundles.good)
    # plain (non-JSON) errors are one line on stderr with exit code 2
    assert agent_main(["install-model", str(test_bundles.truncated), "--state-dir", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: error:") and err.count("\n") == 1


def test_smoke_child_passes_and_times_out(store: Path, test_bundles: BundleSet) -> None:
    report = store_install.run_smoke_child(test_bundles.good)
    assert report["passed"] and report["vectors"] >= 1
    with pytest.raises(store_install.InstallError, match=r"did not finish within 0\.01 s"):
        store_install.run_smoke_child(test_bundles.good, timeout_s=0.01)


@pytest.mark.parametrize("signame", ["SIGSEGV", "SIGABRT", "SIGKILL"])
def test_smoke_child_killed_by_a_signal_refuses_the_install(
    store: Path, test_bundles: BundleSet, monkeypatch: pytest.MonkeyPatch, signame: str
) -> None:
    """The unmodified smoke child, on a runtime that kills its process at the first inference
    (tests/crashing_runtime/sitecustomize.py patches the runtime registry in the child)."""
    store_install.install_model(test_bundles.good, store)
    before = _tree(store)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CRASHING_RUNTIME),
                                                                     os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("EDGE_TEST_RUNTIME_SIGNAL", signame)
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(test_bundles.good_v2, store)
    assert info.value.step == "smoke"
    if signame == "SIGKILL":  # no handler runs: nothing says where
        assert str(info.value) == "smoke test crashed the interpreter (SIGKILL)"
    else:  # faulthandler's stack names the frame that died
        assert re.fullmatch(rf"smoke test crashed the interpreter \({signame}\) at "
                            r".+/crashing_runtime/sitecustomize\.py:\d+ in infer", str(info.value)), str(info.value)
    assert _tree(store) == before


def test_a_crash_while_the_interpreter_loads_is_located(
    store: Path, test_bundles: BundleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child dies inside interpreter creation, while the runtime has fd 2 redirected: the
    faulthandler stack still reaches the installer, which names the crashing frame."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CRASHING_RUNTIME),
                                                                     os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("EDGE_TEST_RUNTIME_CRASH_AT", "load")
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(test_bundles.good, store)
    assert info.value.step == "smoke"
    assert re.fullmatch(r"smoke test crashed the interpreter \(SIGSEGV\) at "
                        r".+/crashing_runtime/sitecustomize\.py:\d+ in _die", str(info.value)), str(info.value)


def test_a_smoke_child_that_cannot_start_is_one_line(
    store: Path, test_bundles: BundleSet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An interpreter built for another CPU (Exec format error) was a traceback."""
    foreign = tmp_path / "python3.11"
    foreign.write_bytes(b"\x7fELF" + bytes(60))  # an ELF header for no machine this kernel runs
    foreign.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(foreign))
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(test_bundles.good, store)
    assert info.value.step == "smoke"
    assert str(info.value) == f"cannot start the smoke test ({foreign}): Exec format error"
    assert store_layout.active_model(store) is None


def test_two_installs_at_once_are_serialised(
    store: Path, test_bundles: BundleSet, deploy_keys: DeployKeys, tmp_path: Path
) -> None:
    """While one install holds the store lock, others wait for it without touching the store;
    then they run one after the other and both succeed."""
    from tests.deploy_helpers import private_key, repack

    store_install.install_model(test_bundles.good, store)
    version = read_bundle(test_bundles.good, require_signature=False).manifest.version
    v3 = repack(test_bundles.good, tmp_path / "v3.bundle", private_key(deploy_keys.private),
                version=f"{version}.3")
    lock = store / store_layout.LOCK_FILE
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # this test is the install in progress
    procs: list[subprocess.Popen[bytes]] = []
    try:
        leftover = store / "tmp" / "incoming-in-progress.part"  # the holder's copy in progress
        leftover.write_bytes(b"partial")
        before = _tree(store)
        procs = [subprocess.Popen([sys.executable, "-m", "edge_agent", "install-model", str(bundle),
                                   "--state-dir", str(store)], stderr=subprocess.PIPE)
                 for bundle in (test_bundles.good_v2, v3)]
        deadline = time.monotonic() + 60
        while {p.pid for p in procs} - _flock_waiters(lock):
            exited = [p for p in procs if p.poll() is not None]
            assert not exited, f"an install did not wait for the lock: {exited[0].stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the installs never blocked on the store lock"
            time.sleep(0.005)
        # mutation guarded: cleaning tmp/ before taking the lock deletes the holder's copy
        assert _tree(store) == before
    finally:
        os.close(held)
        for proc in procs:
            if proc.wait(timeout=120) != 0:
                pytest.fail(proc.stderr.read().decode())  # type: ignore[union-attr]
    status = store_layout.store_status(store)
    both = {sha256_file(test_bundles.good_v2), sha256_file(v3)}
    assert {status["active"]["bundle_sha256"], status["previous"]["bundle_sha256"]} == both
    assert {p.name for p in (store / "models").iterdir()} == both | {"current", "previous"}
    assert not list((store / "tmp").iterdir())
    active = store_layout.active_model(store)
    assert active is not None
    read_bundle(active.bundle_path, store / store_layout.TRUSTED_KEY)



def test_signed_bundle_whose_outputs_do_not_fit_is_refused_at_install(
    store: Path, test_bundles: BundleSet, deploy_keys: DeployKeys, tmp_path: Path
) -> None:
    """A correctly signed bundle the agent could not load (labels that do not fit the model's
    output) fails the install's smoke step instead of becoming the active model."""
    from edge_agent.model.manifest import OutputSpec
    from tests.deploy_helpers import private_key, repack

    store_install.install_model(test_bundles.good, store)
    before = _active_sha(store)
    manifest = read_bundle(test_bundles.good, require_signature=False).manifest
    labels = list(manifest.output.labels)[:-1] or ["a", "b", "c"]
    bad = repack(test_bundles.good, tmp_path / "labels.bundle", private_key(deploy_keys.private),
                 output=OutputSpec(labels=labels))
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(bad, store)
    assert info.value.step == "smoke"
    assert f"{list(manifest.outputs[0].shape)}" in str(info.value) and "labels" in str(info.value)
    assert _active_sha(store) == before


def test_the_devices_latency_budget_replaces_the_bundles(store: Path, test_bundles: BundleSet,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The converter sets the budget from its own host's speed (0.0001 ms here); a slower device
    sets its own ([model] latency_budget_ms / --latency-budget-ms), or 0 to not judge latency."""
    store_install.install_model(test_bundles.good, store)
    with pytest.raises(store_install.InstallError) as info:
        store_install.install_model(test_bundles.too_slow, store, latency_budget_ms=0.00001)
    assert "exceeds the budget of 0.00 ms" in str(info.value)
    result = store_install.install_model(test_bundles.too_slow, store, latency_budget_ms=0)
    assert result.status == "installed" and result.active.sha256 == sha256_file(test_bundles.too_slow)
    assert agent_main(["check", "--bundle", str(test_bundles.too_slow), "--runs", "2"]) == 1
    assert agent_main(["check", "--bundle", str(test_bundles.too_slow), "--runs", "2",
                       "--latency-budget-ms", "60000"]) == 0
    capsys.readouterr()
