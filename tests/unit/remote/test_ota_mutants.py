"""OTA rules the mutation run (``make mutate``) found untested: argument checks, the download's
size/hash/transport checks, and the updater's acks, probation and rollbacks, against a real model
store (bundles from :mod:`tests.tiny_store`, the real smoke child) and a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edge_agent.agent.agent import Agent
from edge_agent.config import AgentConfig, OtaSection
from edge_agent.control import ProbeSample
from edge_agent.errors import EdgeError
from edge_agent.model.bundle import MANIFEST, MODEL, BundleLimits, read_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.remote import ota
from edge_agent.remote.download import Abort, DownloadError, download
from edge_agent.remote.ota import OtaError, OtaUpdater, ProbationPolicy, UpdateRequest, parse_update_args
from edge_agent.remote.protocol import Ack, CommandContext, CommandError, Route
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.store import pidfile as store_pidfile
from edge_agent.store import probation as store_probation
from edge_agent.util.fs import sha256_file
from tests.tiny_store import make_bundle, shared

SHA = "a" * 64
PROBATION_ERR = "probation_s must be a number in 0..3600"
ANY_FILE = OtaSection(file_root=Path("/"))  # not about ota.file_root here (tests/unit/remote/test_download.py)


def updater_for(host: Any, policy: ProbationPolicy | None = None) -> OtaUpdater:
    return OtaUpdater(host, policy, ANY_FILE)


# --------------------------------------------------------------------------- arguments


def test_valid_update_args() -> None:
    sig = bytes(range(64))
    request = parse_update_args({"url": "https://models.example/x.bundle", "sha256": "AB" * 32, "size": 10,
                                 "signature": base64.b64encode(sig).decode(), "probation_s": 5,
                                 "allow_new_input": True})
    assert request == UpdateRequest("https://models.example/x.bundle", "ab" * 32, 10, sig, 5.0, True)
    assert isinstance(request.probation_s, float)
    plain = parse_update_args({"url": "file:///m.bundle", "sha256": SHA, "size": store_install.MAX_BUNDLE_BYTES})
    assert plain == UpdateRequest("file:///m.bundle", SHA, store_install.MAX_BUNDLE_BYTES, None, 60.0, False)
    assert parse_update_args({"url": "file://localhost/m", "sha256": SHA, "size": 1, "probation_s": 0}).probation_s == 0
    assert parse_update_args({"url": "http://h/m", "sha256": SHA, "size": 1, "probation_s": 3600}).probation_s == 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"url": "file:///m", "sha256": SHA, "size": 1, "shell": 1, "zz": 2},
         "unknown update_model argument(s) ['shell', 'zz']"),
        ({"url": 5, "sha256": SHA, "size": 1}, "url must be a string"),
        ({"url": "http://h/" + "x" * 2048, "sha256": SHA, "size": 1}, "url must be a string"),
        ({"url": "ftp://h/m", "sha256": SHA, "size": 1}, "url must be http://, https:// or file://"),
        ({"url": "file://evil/m", "sha256": SHA, "size": 1}, "file:// URLs need an absolute local path"),
        ({"url": "file:m", "sha256": SHA, "size": 1}, "file:// URLs need an absolute local path"),
        ({"url": "http:///m", "sha256": SHA, "size": 1}, "url has no host"),
        ({"url": "file:///m", "sha256": "g" * 64, "size": 1}, "sha256 must be 64 hex digits"),
        ({"url": "file:///m", "sha256": SHA + "0", "size": 1}, "sha256 must be 64 hex digits"),
        ({"url": "file:///m", "sha256": SHA + "\n", "size": 1}, "sha256 must be 64 hex digits"),
        ({"url": "file:///m", "sha256": 7, "size": 1}, "sha256 must be 64 hex digits"),
        ({"url": "file:///m", "sha256": SHA, "size": 0},
         f"size must be an integer in 1..{store_install.MAX_BUNDLE_BYTES}"),
        ({"url": "file:///m", "sha256": SHA, "size": store_install.MAX_BUNDLE_BYTES + 1},
         f"size must be an integer in 1..{store_install.MAX_BUNDLE_BYTES}"),
        ({"url": "file:///m", "sha256": SHA, "size": True},
         f"size must be an integer in 1..{store_install.MAX_BUNDLE_BYTES}"),
        ({"url": "file:///m", "sha256": SHA, "size": 1.0},
         f"size must be an integer in 1..{store_install.MAX_BUNDLE_BYTES}"),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "signature": "!!"},
         "signature must be base64 of a 64-byte Ed25519 signature"),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "signature": base64.b64encode(b"x" * 63).decode()},
         "signature must be base64 of a 64-byte Ed25519 signature"),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "signature": 64},
         "signature must be base64 of a 64-byte Ed25519 signature"),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "probation_s": -1}, PROBATION_ERR),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "probation_s": 3601}, PROBATION_ERR),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "probation_s": True}, PROBATION_ERR),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "probation_s": "5"}, PROBATION_ERR),
        ({"url": "file:///m", "sha256": SHA, "size": 1, "allow_new_input": 1}, "allow_new_input must be true or false"),
    ],
)
def test_update_args_refused_with_the_reason(args: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_update_args(args)
    assert str(info.value) == message


# --------------------------------------------------------------------------- download


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes, str | None]]] = {}

    def do_GET(self) -> None:  # the http.server API
        status, body, length = self.routes.get(self.path, (404, b"", None))
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, tuple[int, bytes, str | None]]]]:
    """A real HTTP/1.0 server on loopback; ``routes[path] = (status, body, Content-Length or None)``."""
    routes: ClassVar[dict[str, tuple[int, bytes, str | None]]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_error(url: str, target: Path, size: int, sha: str) -> str:
    with pytest.raises(DownloadError) as info:
        download(url, target, size, sha, ANY_FILE)
    assert not target.exists()  # a failed download leaves nothing behind
    return str(info.value)


def test_download_over_http_checks_size_and_hash(tmp_path: Path, server: Any) -> None:
    base, routes = server
    data = bytes(range(256)) * 300  # several reads
    routes["/good"] = (200, data, str(len(data)))
    routes["/unannounced"] = (200, data, None)
    routes["/announced-wrong"] = (200, data, str(len(data) + 1))
    routes["/bad-length-header"] = (200, data, "many")
    target = tmp_path / "dl.bundle"
    assert download(f"{base}/good", target, len(data), _sha(data)) == target
    assert target.read_bytes() == data
    assert download(f"{base}/unannounced", target, len(data), _sha(data)).read_bytes() == data
    assert download(f"{base}/bad-length-header", target, len(data), _sha(data)).read_bytes() == data
    assert _download_error(f"{base}/announced-wrong", target, len(data), _sha(data)) == (
        f"server announces {len(data) + 1} bytes, expected {len(data)}")
    assert _download_error(f"{base}/unannounced", target, len(data) - 1, _sha(data)) == (
        f"download is larger than the expected {len(data) - 1} bytes")
    assert _download_error(f"{base}/unannounced", target, len(data) + 1, _sha(data)) == (
        f"download truncated: {len(data)} of {len(data) + 1} bytes")
    assert _download_error(f"{base}/good", target, len(data), SHA) == (
        f"sha256 mismatch: got {_sha(data)}, expected {SHA}")
    assert _download_error(f"{base}/missing", target, len(data), SHA) == "download failed: Not Found"


def test_download_of_a_file_url(tmp_path: Path) -> None:
    source = tmp_path / "my model.bundle"
    source.write_bytes(b"bundle bytes")
    target = tmp_path / "dl.bundle"
    url = "file://" + str(source).replace(" ", "%20")
    assert download(url, target, 12, _sha(b"bundle bytes"), ANY_FILE).read_bytes() == b"bundle bytes"
    assert _download_error(url, target, 13, _sha(b"bundle bytes")) == "server announces 12 bytes, expected 13"
    missing = f"file://{tmp_path}/missing.bundle"
    assert _download_error(missing, target, 12, SHA) == "download failed: No such file or directory"


def test_download_checks_free_space_first(tmp_path: Path) -> None:
    size = shutil.disk_usage(tmp_path).free  # three times this never fits
    message = _download_error(f"file://{tmp_path}/x", tmp_path / "dl.bundle", size, SHA)
    assert message.startswith(f"not enough free space in {tmp_path}: ")


# --------------------------------------------------------------------------- the updater


class Host:
    """The running agent as OTA sees it: loads the store's active model; probes come from a script."""

    def __init__(self, state_dir: Path, bundle_key: Path | None = None,
                 probes: Callable[[int], ProbeSample] | None = None) -> None:
        self.state_dir = state_dir
        self.bundle_key = bundle_key
        self.fixed_model: Path | None = None
        self.reloads = 0
        self.fail_reload: EdgeError | None = None
        self.report_identity: str | None = None  # what reload_model reports instead of the real identity
        self.before_reload: Callable[[], None] = lambda: None
        self._probes = probes or (lambda n: ProbeSample(10 * n, 0, 1.0))
        self._probe_count = 0

    def reload_model(self) -> dict[str, str]:
        self.before_reload()
        if self.fail_reload is not None:
            raise self.fail_reload
        self.reloads += 1
        model = store_layout.active_model(self.state_dir)
        assert model is not None
        manifest = (model.directory / MANIFEST).read_bytes()
        identity = self.report_identity or hashlib.sha256(manifest).hexdigest()
        return {"sha256": model.manifest.model.sha256, "manifest_sha256": identity}

    def probe(self) -> ProbeSample:
        sample = self._probes(self._probe_count)
        self._probe_count += 1
        return sample


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.private, self.public = base / "k.pem", base / "k.pub"
        generate_keypair(self.private, self.public)
        key = load_private_key(self.private)
        self.v1 = make_bundle(base / "v1.bundle", version="1.9", sign_key=key)
        self.v2 = make_bundle(base / "v2.bundle", version="1.10", sign_key=key, latency_budget_ms=1.0)
        self.older = make_bundle(base / "older.bundle", version="1.0", sign_key=key)
        installed = base / "installed"
        store_install.install_model(self.v1, installed, self.public)
        self.installed = installed

    def store(self, tmp_path: Path) -> Path:
        state = tmp_path / "state"
        shutil.copytree(self.installed, state, symlinks=True)
        return state

    def request(self, bundle: Path, **kw: Any) -> UpdateRequest:
        args = {"url": f"file://{bundle}", "sha256": sha256_file(bundle), "size": bundle.stat().st_size,
                "probation_s": 0, **kw}
        return parse_update_args(args)


@pytest.fixture(scope="module")
def env() -> Env:
    return shared("ota-env", Env)


def _active_sha(state: Path) -> str:
    model = store_layout.active_model(state)
    assert model is not None
    return model.sha256


def test_update_installs_swaps_and_passes_probation(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    (state / ota.DOWNLOADS).mkdir()
    (state / ota.DOWNLOADS / "stale.bundle").write_bytes(b"left by a crash")
    host = Host(state, env.public)
    updater = updater_for(host)
    replies: list[Ack] = []
    before = time.monotonic()
    ack = updater.update(env.request(env.v2), "u1", replies.append)
    elapsed = time.monotonic() - before
    sha1, sha2 = sha256_file(env.v1), sha256_file(env.v2)
    assert [(a.id, a.status, a.reason) for a in replies] == [
        ("u1", "in_progress", "installed colours 1.10; probation 0 s")]
    assert replies[0].result is not None and replies[0].result["active"]["bundle_sha256"] == sha2
    assert (ack.id, ack.status, ack.reason) == ("u1", "succeeded", "colours 1.10 active, probation passed")
    assert ack.result is not None
    assert ack.result["active"]["bundle_sha256"] == sha2 and ack.result["previous"]["bundle_sha256"] == sha1
    assert set(ack.result["timings"]) == {"download_s", "install_s", "swapped_s", "succeeded_s"}
    assert set(updater.last_timings) == set(ack.result["timings"])
    assert all(isinstance(v, float) and round(v, 3) == v for v in ack.result["timings"].values())
    assert all(0.0 <= v <= elapsed + 0.001 for v in ack.result["timings"].values())  # within the call
    assert _active_sha(state) == sha2 and host.reloads == 1
    assert store_probation.read_probation(state) is None
    assert list((state / ota.DOWNLOADS).iterdir()) == []  # stale and new downloads removed

    again = updater.update(env.request(env.v2), "u2", replies.append)
    assert (again.status, again.reason) == ("succeeded", "already active")
    assert again.result is not None and again.result["active"]["bundle_sha256"] == sha2


def test_update_refusals_keep_the_running_model(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    updater = updater_for(host)
    sha1 = sha256_file(env.v1)
    ack = updater.update(env.request(env.older), "u1", lambda a: None)
    assert ack.status == "failed" and ack.reason.startswith("verify: colours 1.0 is older than the active 1.9")
    assert ack.result is not None and ack.result["active"]["bundle_sha256"] == sha1
    bad = parse_update_args({"url": f"file://{env.v2}", "sha256": SHA, "size": env.v2.stat().st_size})
    ack = updater.update(bad, "u2", lambda a: None)
    assert ack.status == "failed" and ack.reason.startswith("sha256 mismatch: got ")
    assert _active_sha(state) == sha1 and host.reloads == 0
    assert list((state / ota.DOWNLOADS).iterdir()) == []


def test_bundle_signature_in_the_command(env: Env, tmp_path: Path) -> None:
    manifest = read_bundle(env.v2, require_signature=False).manifest_bytes
    good = base64.b64encode(load_private_key(env.private).sign(manifest)).decode()
    wrong = base64.b64encode(load_private_key(env.private).sign(b"something else")).decode()
    state = env.store(tmp_path)
    ack = updater_for(Host(state, None)).update(env.request(env.v2, signature=good), "u1", lambda a: None)
    assert (ack.status, ack.reason) == ("failed", "the command carries a bundle signature but no bundle key is pinned")
    ack = updater_for(Host(state, env.public)).update(env.request(env.v2, signature=wrong), "u2", lambda a: None)
    assert (ack.status, ack.reason) == (
        "failed", "bad signature: the command's signature does not verify with the pinned key")
    assert _active_sha(state) == sha256_file(env.v1)
    ack = updater_for(Host(state, env.public)).update(env.request(env.v2, signature=good), "u3", lambda a: None)
    assert ack.status == "succeeded"


def test_agent_that_cannot_load_the_new_model_is_rolled_back(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    host.fail_reload = EdgeError("interpreter said no")
    ack = updater_for(host).update(env.request(env.v2), "u1", lambda a: None)
    short = read_bundle(env.v1, require_signature=False).manifest.short_sha
    assert ack.status == "failed"
    assert ack.reason == ("the running agent cannot load the new model: interpreter said no; rolled back on disk "
                          "but the agent failed to reload: interpreter said no")
    assert _active_sha(state) == sha256_file(env.v1)
    host.fail_reload = None
    calls = iter([EdgeError("first load fails"), None])

    def first_fails() -> None:
        host.fail_reload = next(calls)

    host.before_reload = first_fails
    ack = updater_for(host).update(env.request(env.v2), "u2", lambda a: None)
    assert ack.reason == (f"the running agent cannot load the new model: first load fails; rolled back to "
                          f"colours 1.9 ({short})")
    assert ack.result is not None and ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)


def _probation_failure(env: Env, tmp_path: Path, probes: Callable[[int], ProbeSample],
                       policy: ProbationPolicy | None = None, probation_s: float = 600) -> Ack:
    state = env.store(tmp_path)
    host = Host(state, env.public, probes)
    replies: list[Ack] = []
    ack = updater_for(host, policy).update(env.request(env.v2, probation_s=probation_s), "u1", replies.append)
    assert [a.status for a in replies] == ["in_progress"]
    assert _active_sha(state) == sha256_file(env.v1)  # rolled back by itself
    assert host.reloads == 2  # the new model, then the previous one again
    assert ack.status == "failed" and ack.result is not None
    assert set(ack.result["timings"]) == {"download_s", "install_s", "swapped_s", "rolled_back_s"}
    assert ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)
    return ack


def test_probation_fails_on_the_error_rate(env: Env, tmp_path: Path) -> None:
    ack = _probation_failure(env, tmp_path, lambda n: ProbeSample(3, 2 + 5 * n, None))
    short = read_bundle(env.v1, require_signature=False).manifest.short_sha
    assert ack.reason == f"probation failed: error rate 5/5 above 20%; rolled back to colours 1.9 ({short})"


def test_probation_fails_on_latency_against_the_budget(env: Env, tmp_path: Path) -> None:
    ack = _probation_failure(env, tmp_path, lambda n: ProbeSample(100 * n, 0, 3.5))
    assert ack.reason.startswith("probation failed: p95 inference latency 3.50 ms above 3 x the 1 ms budget; ")


def test_probation_judges_latency_against_the_devices_budget(env: Env, tmp_path: Path) -> None:
    """``[model] latency_budget_ms`` replaces the bundle's 1 ms: 3.5 ms passes a 2 ms budget
    (3 x 2 = 6 ms allowed), and fails a 1.1 ms one, named in the reason."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public, lambda n: ProbeSample(100 * n, 0, 3.5)))
    updater.latency_budget_ms = 2.0
    ack = updater.update(env.request(env.v2, probation_s=1.0), "u1", lambda a: None)
    assert ack.status == "succeeded", ack.reason
    state = env.store(tmp_path / "b")
    updater = updater_for(Host(state, env.public, lambda n: ProbeSample(100 * n, 0, 3.5)))
    updater.latency_budget_ms = 1.1
    ack = updater.update(env.request(env.v2, probation_s=600), "u1", lambda a: None)
    assert ack.reason.startswith("probation failed: p95 inference latency 3.50 ms above 3 x the 1.1 ms budget; ")


def test_probation_policy_thresholds_are_inclusive_limits(env: Env, tmp_path: Path) -> None:
    """At exactly the allowed error rate and latency the model passes; counts start at the swap."""
    state = env.store(tmp_path)

    def probes(n: int) -> ProbeSample:  # 50 inferences before the swap do not count
        return ProbeSample(50 + 8 * n, 2 * n, 3.0)  # 20 % errors, p95 exactly 3 x the budget

    host = Host(state, env.public, probes)
    policy = ProbationPolicy(max_error_rate=0.2, min_samples=5, latency_factor=3.0)
    ack = updater_for(host, policy).update(env.request(env.v2, probation_s=0), "u1", lambda a: None)
    assert ack.status == "succeeded", ack.reason


def test_probation_fails_when_the_model_is_replaced(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    holder: dict[str, Any] = {}

    def probes(n: int) -> ProbeSample:
        if n == 1:
            store_install.rollback(holder["state"], signal_agent=False)
        return ProbeSample(0, 0, None)

    holder["state"] = state
    host = Host(state, env.public, probes)
    ack = updater_for(host).update(env.request(env.v2, probation_s=600), "u1", lambda a: None)
    assert ack.status == "failed"
    assert ack.reason.startswith("probation failed: the model was replaced during probation; ")


def test_watch_probation_records_the_probation_and_passes_at_the_deadline(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    updater = updater_for(Host(state, env.public), ProbationPolicy(max_crashes=4))
    assert updater.watch_probation(model, 0.0, "c7") is None
    probation = store_probation.read_probation(state)
    assert probation is not None
    assert (probation.sha256, probation.max_crashes, probation.command_id) == (model.sha256, 4, "c7")


def test_rollback_command(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    updater = updater_for(host)
    ack = updater.rollback("r0")
    assert (ack.status, ack.reason) == ("failed", "rollback: there is no previous model to roll back to")
    assert ack.result is not None and ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)
    assert updater.update(env.request(env.v2), "u1", lambda a: None).status == "succeeded"
    ack = updater.rollback("r1")
    assert (ack.id, ack.status, ack.reason) == ("r1", "succeeded", "rolled back")
    assert ack.result is not None
    assert ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)
    assert ack.result["previous"]["bundle_sha256"] == sha256_file(env.v2)
    assert isinstance(ack.result["rollback_ms"], float) and ack.result["rollback_ms"] >= 0
    assert _active_sha(state) == sha256_file(env.v1) and not updater.busy


def test_one_update_at_a_time_and_the_worker_always_answers(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        assert release.wait(120)
        raise RuntimeError("bug in the agent")

    host.before_reload = hold
    updater = updater_for(host)
    replies: list[Ack] = []
    updater.start_update(env.request(env.v2), "u1", replies.append)
    assert entered.wait(120)
    assert updater.busy
    with pytest.raises(OtaError, match=r"^busy: another model update is in progress$"):
        updater.start_update(env.request(env.v2), "u2", replies.append)
    # A rollback during the install and swap waits for it (issue 11: it is never refused as busy).
    rolled: list[Ack] = []
    rollback = threading.Thread(target=lambda: rolled.append(updater.rollback("r1")))
    rollback.start()
    host.before_reload = lambda: None  # the rollback's own reload works
    release.set()
    updater.join(120)
    rollback.join(120)
    assert not updater.busy
    assert replies[-1] == Ack("u1", "failed", "internal_error: RuntimeError")
    assert [(a.id, a.status) for a in rolled] == [("r1", "succeeded")]
    assert _active_sha(state) == sha256_file(env.v1)


# --------------------------------------------------------------------------- the commands


class Control:
    """The part of AgentControl the commands use: the agent's own updater."""

    def __init__(self, updater: OtaUpdater) -> None:
        self.updater = updater


def _ctx(control: Any, args: dict[str, Any], replies: list[Ack] | None = None) -> CommandContext:
    sink = replies if replies is not None else []
    return CommandContext("dev1", "update_model", "c1", args, control, lambda k, b: None, Route("update_model"),
                          lambda ack, route: sink.append(ack))


def test_update_and_rollback_commands(env: Env, tmp_path: Path) -> None:
    assert ota._cmd_update_model(_ctx(None, {"url": "file:///m", "sha256": SHA, "size": 1})) == Ack(
        "c1", "failed", "no running agent to update")
    with pytest.raises(CommandError):
        ota._cmd_update_model(_ctx(None, {"url": "ftp://x"}))
    with pytest.raises(CommandError, match=r"^rollback takes no arguments$"):
        ota._cmd_rollback(_ctx(None, {"x": 1}))
    assert ota._cmd_rollback(_ctx(None, {})) == Ack("c1", "failed", "no running agent")

    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    control = Control(updater)
    replies: list[Ack] = []
    size = env.v2.stat().st_size
    ctx = _ctx(control, {"url": f"file://{env.v2}", "sha256": sha256_file(env.v2), "size": size,
                         "probation_s": 0}, replies)
    ack = ota._cmd_update_model(ctx)
    assert ack == Ack("c1", "in_progress", f"downloading {size} bytes")
    assert replies == [] and updater.busy  # the worker starts only once the handler sent this ack
    ctx.run_after_ack()
    updater.join(120)
    assert [(a.id, a.status) for a in replies] == [("c1", "in_progress"), ("c1", "succeeded")]
    assert ota._cmd_rollback(_ctx(control, {})).reason == "rolled back"


def test_commands_are_privileged() -> None:
    from edge_agent.remote.protocol import command_registry

    registry = command_registry(ota.commands())
    assert set(registry) == {"update_model", "rollback"}
    assert registry["update_model"].privileged and registry["rollback"].privileged
    assert registry["update_model"].run is ota._cmd_update_model and registry["rollback"].run is ota._cmd_rollback
    assert registry["update_model"].description == "download, verify, smoke-test and activate a model bundle"
    assert registry["rollback"].description == "re-activate the previous model (the only way to downgrade)"


def test_probation_latency_counts_from_exactly_min_samples(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public, lambda n: ProbeSample(5 * n, 0, 3.5))  # 5 inferences after the swap
    ack = updater_for(host).update(env.request(env.v2, probation_s=0), "u1", lambda a: None)
    assert ack.status == "failed" and "p95 inference latency 3.50 ms" in ack.reason


def test_an_agent_reporting_another_bundle_is_rolled_back(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    host.report_identity = "f" * 64
    ack = updater_for(host).update(env.request(env.v2), "u1", lambda a: None)
    assert ack.status == "failed"
    assert ack.reason.startswith("the running agent reports bundle ffffffffffff, not the installed bundle ")
    assert ack.result is not None and ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)
    assert _active_sha(state) == sha256_file(env.v1)
    # the signed rollback command checks the same after its reload
    host.report_identity = None
    assert updater_for(host).update(env.request(env.v2), "u2", lambda a: None).status == "succeeded"
    host.report_identity = "e" * 64
    back = updater_for(host).rollback("r1")
    assert back.status == "failed"
    assert back.reason.startswith("rolled back on disk but the running agent reports bundle eeeeeeeeeeee, not the "
                                  "installed bundle ")
    assert back.reason.endswith(" (manifest sha256)")
    assert back.result is not None and back.result["active"]["bundle_sha256"] == sha256_file(env.v1)


def test_update_needs_the_pinned_bundle_key(env: Env, tmp_path: Path) -> None:
    unsigned = make_bundle(tmp_path / "unsigned.bundle", version="9.0")
    state = env.store(tmp_path)
    ack = updater_for(Host(state, env.public)).update(env.request(unsigned), "u1", lambda a: None)
    assert ack.status == "failed" and ack.reason.startswith("verify: ") and "is not signed" in ack.reason


def test_update_command_while_busy(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        assert release.wait(120)

    host.before_reload = hold
    updater = updater_for(host)
    control = Control(updater)
    args = {"url": f"file://{env.v2}", "sha256": sha256_file(env.v2), "size": env.v2.stat().st_size,
            "probation_s": 0}
    ctx = _ctx(control, args)
    assert ota._cmd_update_model(ctx).status == "in_progress"
    ctx.run_after_ack()
    assert entered.wait(120)
    busy = Ack("c1", "failed", "busy: another model update is in progress")
    assert ota._cmd_update_model(_ctx(control, args)) == busy
    release.set()
    updater.join(120)


def test_download_refused_before_anything_is_written(tmp_path: Path, server: Any) -> None:
    base, routes = server
    routes["/x"] = (200, b"12345", "6")
    target = tmp_path / "fresh.bundle"  # never created: the refusal comes before the file is opened
    assert _download_error(f"{base}/x", target, 5, _sha(b"12345")) == "server announces 6 bytes, expected 5"


def test_download_from_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(DownloadError) as info:
            download(f"http://127.0.0.1:{silent.getsockname()[1]}/m", tmp_path / "m", 5, SHA,
                     OtaSection(read_timeout_s=0.2))
        assert str(info.value) == "download failed: timed out"
    finally:
        silent.close()


def test_probation_records_the_command_id(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    seen: list[str] = []

    def probes(n: int) -> ProbeSample:
        probation = store_probation.read_probation(state)
        seen.append(probation.command_id if probation else "")
        return ProbeSample(0, 0, None)

    ack = updater_for(Host(state, env.public, probes)).update(env.request(env.v2), "u7", lambda a: None)
    assert ack.status == "succeeded" and seen and set(seen) == {"u7"}


def test_probation_failure_timings_lie_within_the_call(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public, lambda n: ProbeSample(3, 2 + 5 * n, None))
    before = time.monotonic()
    ack = updater_for(host).update(env.request(env.v2, probation_s=600), "u1", lambda a: None)
    elapsed = time.monotonic() - before
    assert ack.result is not None
    assert all(0.0 <= v <= elapsed + 0.001 for v in ack.result["timings"].values())


def test_fixed_model_agent_refuses_with_the_active_model(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public)
    host.fixed_model = tmp_path / "model.bundle"
    ack = updater_for(host).update(env.request(env.v2), "u1", lambda a: None)
    assert ack.id == "u1" and ack.status == "failed"
    assert ack.reason == (f"the agent runs the fixed model file {tmp_path / 'model.bundle'} (model.bundle / --bundle); "
                          "over-the-air updates need the model store: unset it")
    assert ack.result is not None and ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)




# --------------------------------------------------------------------------- survivors of the second mutation run


def _agent(tmp_path: Path) -> Agent:
    """An agent that is never started: OTA's model host, with its own updater."""
    return Agent(AgentConfig.model_validate({"state_dir": str(tmp_path / "state"), "model": {}}))


def test_agent_probe_defaults_for_missing_counters(tmp_path: Path) -> None:
    # was AgentHost.probe: Agent.probe() builds the sample from a HealthRecord of the stats snapshot
    from types import SimpleNamespace

    snap = {"errors": 2, "latency_ms": {"invoke": {"p95": 4}}}  # no frames inferred yet
    agent = _agent(tmp_path)
    agent.stats = SimpleNamespace(snapshot=lambda: snap)  # type: ignore[assignment]
    assert agent.probe() == ProbeSample(0, 2, 4.0)


def test_the_agents_updater_wraps_the_agent_itself(tmp_path: Path) -> None:
    # was updater_for(control): the Agent owns its updater, whose host is the agent itself
    agent = _agent(tmp_path)
    updater = agent.updater
    assert isinstance(updater, OtaUpdater) and updater.host is agent


def _manifest_identity(bundle: Path) -> str:
    return hashlib.sha256(read_bundle(bundle, require_signature=False).manifest_bytes).hexdigest()


def test_acks_carry_the_command_id(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    assert updater.rollback("r0").id == "r0"  # refused: no previous model
    assert updater.update(env.request(env.v2), "u1", lambda a: None).id == "u1"
    already = updater.update(env.request(env.v2), "u2", lambda a: None)
    assert (already.id, already.reason) == ("u2", "already active")
    back = ota._cmd_rollback(_ctx(Control(updater), {}))
    assert (back.id, back.status) == ("c1", "succeeded")
    failed = _probation_failure(env, tmp_path / "p", lambda n: ProbeSample(3, 2 + 5 * n, None))
    assert failed.id == "u1"


def test_a_foreign_bundle_is_named_by_twelve_hex_digits(env: Env, tmp_path: Path) -> None:
    host = Host(env.store(tmp_path), env.public)
    host.report_identity = "f" * 64
    ack = updater_for(host).update(env.request(env.v2), "u1", lambda a: None)
    new, old = _manifest_identity(env.v2)[:12], _manifest_identity(env.v1)[:12]
    assert ack.reason == (f"the running agent reports bundle ffffffffffff, not the installed bundle {new} (manifest "
                          f"sha256); rolled back on disk but the running agent reports bundle ffffffffffff, not the "
                          f"installed bundle {old} (manifest sha256)")


def test_stale_downloads_that_cannot_be_removed_are_left(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    (state / ota.DOWNLOADS / "stuck").mkdir(parents=True)  # unlink() fails on a directory
    ack = updater_for(Host(state, env.public)).update(env.request(env.v2), "u1", lambda a: None)
    assert ack.status == "succeeded", ack.reason
    assert [p.name for p in (state / ota.DOWNLOADS).iterdir()] == ["stuck"]


def test_probation_waits_between_probes_until_the_deadline(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    host = Host(state, env.public, lambda n: ProbeSample(0, 0, None))
    ack = updater_for(host).update(env.request(env.v2, probation_s=0.3), "u1", lambda a: None)
    assert ack.status == "succeeded", ack.reason
    assert host._probe_count >= 3  # the baseline, then a probe per tick: it slept in between


def test_failure_acks_describe_the_current_link_without_rehashing(env: Env, tmp_path: Path) -> None:
    """The ``active`` of an ack is the store's current link, read shallowly: a failed download does not
    re-hash the running model (a damaged model file is the smoke test's and the agent's business)."""
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    weights = model.directory / MODEL
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content: only a deep check (a re-hash) sees it
    weights.write_bytes(bytes(data))
    bad = parse_update_args({"url": f"file://{env.v2}", "sha256": SHA, "size": env.v2.stat().st_size})
    ack = updater_for(Host(state, env.public)).update(bad, "u1", lambda a: None)
    assert ack.status == "failed" and ack.result is not None
    assert ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)


_FAKE_AGENT = """
import signal, sys  # stands in for the edge agent (its command line names edge-agent)
signal.signal(signal.SIGHUP, lambda *a: (sys.stdout.write("HUP\\n"), sys.stdout.flush()))
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def test_ota_reloads_the_agent_itself_and_never_signals_it(env: Env, tmp_path: Path) -> None:
    """OTA swaps the model through ModelHost.reload_model: the store must not also send the agent a
    SIGHUP (a second reload), neither on install, on a rollback after probation, nor on the rollback command."""
    import subprocess
    import sys

    state = env.store(tmp_path)
    agent = subprocess.Popen([sys.executable, "-c", _FAKE_AGENT, "edge-agent"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "ready\n"
        (state / store_pidfile.PID_FILE).write_text(f"{agent.pid}\n")
        assert store_pidfile.read_agent_pid(state) == agent.pid  # it would be signalled if asked to
        updater = updater_for(Host(state, env.public))
        assert updater.update(env.request(env.v2), "u1", lambda a: None).status == "succeeded"
        assert updater.rollback("r1").status == "succeeded"
        failing = updater_for(Host(state, env.public, lambda n: ProbeSample(3, 2 + 5 * n, None)))
        assert failing.update(env.request(env.v2, probation_s=600), "u2", lambda a: None).status == "failed"
    finally:
        out, _ = agent.communicate(input="", timeout=60)
    assert out == ""  # after "ready": no HUP


def test_the_update_worker_is_a_daemon_thread(tmp_path: Path) -> None:
    """The agent can exit (e.g. on SIGTERM) while an update hangs: the worker must not keep it alive."""
    seen: list[threading.Thread] = []

    class FixedHost:  # refuses at once: the agent runs a fixed model file
        bundle_key = None
        fixed_model = tmp_path / "model.bundle"

        @property
        def state_dir(self) -> Path:
            seen.append(threading.current_thread())
            return tmp_path

    updater = updater_for(FixedHost())  # type: ignore[arg-type]
    replies: list[Ack] = []
    updater.start_update(UpdateRequest("file:///m", SHA, 1), "u1", replies.append)
    updater.join(60)
    assert [a.status for a in replies] == ["failed"]
    assert seen and seen[0] is not threading.main_thread() and seen[0].daemon
    assert seen[0].name == "ota"  # how the worker shows in thread dumps (py-spy, threading.enumerate)


def test_join_gives_up_after_its_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    class StuckHost:  # the update waits until released, then refuses (a fixed model file)
        bundle_key = None
        fixed_model = tmp_path / "model.bundle"

        @property
        def state_dir(self) -> Path:
            assert release.wait(120)
            return tmp_path

    updater = updater_for(StuckHost())  # type: ignore[arg-type]
    updater.start_update(UpdateRequest("file:///m", SHA, 1), "u1", lambda a: None)
    try:
        updater.join(0.01)  # returns although the worker still runs
        assert updater.busy
    finally:
        release.set()
        updater.join(120)
    assert not updater.busy


def test_rollback_acks_in_detail(env: Env, tmp_path: Path) -> None:
    fixed = Host(env.store(tmp_path / "f"), env.public)
    fixed.fixed_model = tmp_path / "model.bundle"  # type: ignore[attr-defined]
    assert updater_for(fixed).rollback("r0") == Ack(
        "r0", "failed", f"the agent runs the fixed model file {tmp_path / 'model.bundle'}; nothing to roll back")

    state = env.store(tmp_path)
    host = Host(state, env.public)
    updater = updater_for(host)
    assert updater.update(env.request(env.v2), "u1", lambda a: None).status == "succeeded"
    host.report_identity = "e" * 64
    assert updater.rollback("r1").id == "r1"  # rolled back on disk, but the agent reports another bundle
    host.report_identity = None

    # the current link lost (a damaged store): the rollback still brings back the previous model
    assert updater.rollback("r2").status == "succeeded"  # v2 active again, v1 previous
    (state / store_layout.MODELS / store_layout.CURRENT).unlink()
    spent: list[float] = []

    def slow_reload() -> None:  # the reload takes at least 20 ms of the rollback
        start = time.monotonic()
        while time.monotonic() - start < 0.02:
            time.sleep(0.005)
        spent.append(time.monotonic() - start)

    host.before_reload = slow_reload
    before = time.monotonic()
    ack = updater.rollback("r3")
    elapsed = time.monotonic() - before
    assert (ack.id, ack.status) == ("r3", "succeeded") and ack.result is not None
    assert ack.result["previous"] is None and ack.result["active"]["bundle_sha256"] == sha256_file(env.v1)
    ms = ack.result["rollback_ms"]
    assert spent[0] * 1000 - 0.05 <= ms <= elapsed * 1000 + 0.05 and round(ms, 1) == ms


def test_watch_probation_without_a_command_id(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    assert updater_for(Host(state, env.public)).watch_probation(model, 0.0) is None
    probation = store_probation.read_probation(state)
    assert probation is not None and probation.command_id == ""  # no command: none recorded


def test_rollback_ms_is_the_time_the_rollback_took(env: Env, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With OTA's clock replaced, rollback_ms is exactly the elapsed milliseconds (kills a wrong scale)."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    assert updater.update(env.request(env.v2), "u1", lambda a: None).status == "succeeded"
    readings = iter([100.0, 101.25])

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return next(readings)

    monkeypatch.setattr(ota, "time", Clock)
    ack = updater.rollback("r1")
    assert ack.status == "succeeded" and ack.result is not None
    assert ack.result["rollback_ms"] == 1250.0


# --------------------------------------------------------------------------- survivors of the third mutation run


def test_not_running_names_what_the_agent_reports() -> None:
    expected = "ab" * 32
    tail = ", not the installed bundle abababababab (manifest sha256)"
    assert ota._not_running({"manifest_sha256": expected}, expected) is None
    assert ota._not_running({"manifest_sha256": expected}, None) == "the installed model's manifest cannot be read"
    assert ota._not_running({"manifest_sha256": "cd" * 32}, expected) == (
        "the running agent reports bundle cdcdcdcdcdcd" + tail)
    unidentified = "the running agent reports a bundle it does not identify" + tail
    assert ota._not_running({}, expected) == unidentified  # no identity: not sliced as a string
    assert ota._not_running({"manifest_sha256": ""}, expected) == unidentified  # an empty identity names nothing
    assert ota._not_running({"manifest_sha256": 5}, expected) == unidentified  # type: ignore[dict-item]
    assert ota._not_running(None, expected) == unidentified  # type: ignore[arg-type]  # not a dict: no .get
    assert ota._not_running(["manifest_sha256"], expected) == unidentified  # type: ignore[arg-type]


def test_describe_gives_no_identity_for_an_unreadable_manifest(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    assert ota.describe(model)["manifest_sha256"] == _manifest_identity(env.v1)
    (model.directory / MANIFEST).unlink()
    described = ota.describe(model)
    assert described["manifest_sha256"] is None  # None, not "": _not_running tells the two apart
    assert described["bundle_sha256"] == sha256_file(env.v1)


def test_url_length_limit_is_2048_characters() -> None:
    longest = "http://h/" + "x" * (2048 - len("http://h/"))
    assert len(longest) == 2048
    assert parse_update_args({"url": longest, "sha256": SHA, "size": 1}).url == longest
    with pytest.raises(CommandError) as info:
        parse_update_args({"url": longest + "x", "sha256": SHA, "size": 1})
    assert str(info.value) == "url must be a string"


def test_signature_base64_is_decoded_strictly() -> None:
    """Characters outside the base64 alphabet are refused, not skipped (b64decode's validate=True)."""
    sig = base64.b64encode(bytes(range(64))).decode()
    assert parse_update_args({"url": "file:///m", "sha256": SHA, "size": 1, "signature": sig}).signature == bytes(
        range(64))
    for junk in ("!" + sig, sig[:10] + "\n" + sig[10:], sig[:20] + "*" + sig[20:]):
        with pytest.raises(CommandError) as info:
            parse_update_args({"url": "file:///m", "sha256": SHA, "size": 1, "signature": junk})
        assert str(info.value) == "signature must be base64 of a 64-byte Ed25519 signature"


def test_update_into_a_state_dir_that_does_not_exist_yet(env: Env, tmp_path: Path) -> None:
    """The downloads directory is made with its parents: the first update of a fresh device installs."""
    state = tmp_path / "fresh" / "state"
    ack = updater_for(Host(state, env.public)).update(env.request(env.v1), "u1", lambda a: None)
    assert (ack.id, ack.status, ack.reason) == ("u1", "succeeded", "colours 1.9 active, probation passed")
    assert ack.result is not None and ack.result["previous"] is None
    assert _active_sha(state) == sha256_file(env.v1)
    assert list((state / ota.DOWNLOADS).iterdir()) == []


def test_update_with_allow_new_input_installs_a_model_with_another_input(env: Env, tmp_path: Path) -> None:
    key = load_private_key(env.private)
    other = shared("ota-other-input", lambda d: make_bundle(d / "other.bundle", version="2.0", size=8, sign_key=key))
    refused = updater_for(Host(env.store(tmp_path / "a"), env.public)).update(env.request(other), "u1", lambda a: None)
    assert refused.status == "failed" and refused.reason.startswith(
        "verify: the new model does not fit the active model's input (")
    state = env.store(tmp_path / "b")
    ack = updater_for(Host(state, env.public)).update(env.request(other, allow_new_input=True), "u2", lambda a: None)
    assert (ack.status, ack.reason) == ("succeeded", "colours 2.0 active, probation passed")
    assert _active_sha(state) == sha256_file(other)


class TamperingHost(Host):
    """Changes the downloaded file after download() checked it and before the store installs it (OTA
    reads ``bundle_key`` in between): the store must check the command's size and sha256 again."""

    def __init__(self, state_dir: Path, bundle_key: Path, tamper: Callable[[Path], None]) -> None:
        super().__init__(state_dir, bundle_key)
        self._key = bundle_key
        self._tamper = tamper

    @property  # type: ignore[override]
    def bundle_key(self) -> Path:
        for path in (self.state_dir / ota.DOWNLOADS).iterdir():
            self._tamper(path)
        return self._key

    @bundle_key.setter
    def bundle_key(self, value: Path | None) -> None:
        pass


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_store_checks_the_downloaded_file_again(env: Env, tmp_path: Path) -> None:
    """Guards expected_size= and expected_sha256= of install_model (left out or None)."""
    request = env.request(env.v2)
    size, sha = request.size, request.sha256

    def grow(path: Path) -> None:
        with path.open("ab") as out:
            out.write(b"x")

    for name, tamper, reason in [
        ("grown", grow, f"copy: bundle is {size + 1} bytes, expected {size}"),
        ("flipped", _flip_last_byte, None),
    ]:
        state = env.store(tmp_path / name)
        ack = updater_for(TamperingHost(state, env.public, tamper)).update(request, "u1", lambda a: None)
        assert (ack.id, ack.status) == ("u1", "failed")
        if reason is not None:
            assert ack.reason == reason
        else:
            assert ack.reason.startswith("copy: sha256 mismatch: got ") and ack.reason.endswith(f", expected {sha}")
        assert ack.result == {"active": ota.describe(store_layout.active_model(state))}  # type: ignore[arg-type]
        assert _active_sha(state) == sha256_file(env.v1)


def test_a_download_that_vanishes_before_the_install_fails_with_the_install_reason(
        env: Env, tmp_path: Path) -> None:
    """The cleanup after the install tolerates a download already gone (unlink's missing_ok=True): the
    ack gives the store's reason, not the cleanup's FileNotFoundError."""
    state = env.store(tmp_path)
    ack = updater_for(TamperingHost(state, env.public, Path.unlink)).update(env.request(env.v2), "u1", lambda a: None)
    assert (ack.id, ack.status) == ("u1", "failed")
    assert ack.reason.startswith(f"copy: bundle {state / ota.DOWNLOADS}/")
    assert ack.reason.endswith(".bundle: No such file or directory")
    assert _active_sha(state) == sha256_file(env.v1)


def test_failure_acks_carry_the_command_id(env: Env, tmp_path: Path) -> None:
    state = env.store(tmp_path / "download")
    bad = parse_update_args({"url": f"file://{env.v2}", "sha256": SHA, "size": env.v2.stat().st_size})
    ack = updater_for(Host(state, env.public)).update(bad, "u1", lambda a: None)
    assert (ack.id, ack.status) == ("u1", "failed")

    host = Host(env.store(tmp_path / "reload"), env.public)
    host.fail_reload = EdgeError("no")
    ack = updater_for(host).update(env.request(env.v2), "u2", lambda a: None)
    assert (ack.id, ack.status) == ("u2", "failed")

    host = Host(env.store(tmp_path / "identity"), env.public)
    host.report_identity = "f" * 64
    ack = updater_for(host).update(env.request(env.v2), "u3", lambda a: None)
    assert (ack.id, ack.status) == ("u3", "failed")


def test_probation_checks_the_current_link_without_rehashing(env: Env, tmp_path: Path) -> None:
    """Probation reads the current link shallowly (deep=False): damaged weights of the model on probation
    are the agent's business (errors, crashes), not "the model was replaced"."""
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    _flip_last_byte(model.directory / MODEL)  # same size, other content: only a re-hash sees it
    assert updater_for(Host(state, env.public)).watch_probation(model, 0.0, "c1") is None


class FakeClock:
    """Stands in for OTA's ``time`` module: monotonic() only moves when OTA sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < 100, "probation never ended"
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("duration", "sleeps"),
    [
        (0.0, []),  # at the deadline at once (>=, not >)
        (1.0, [0.25, 0.25, 0.25, 0.25]),  # one tick at a time, ends exactly at the deadline
        (0.375, [0.25, 0.125]),  # the last wait is only what is left until the deadline
    ],
)
def test_probation_ends_exactly_at_its_deadline(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                duration: float, sleeps: list[float]) -> None:
    """Guards `>=` of the deadline check and max(0.0, deadline - now) of the wait (a mutant waits a
    full tick past the deadline, or never reaches it)."""
    state = env.store(tmp_path)
    model = store_layout.active_model(state)
    assert model is not None
    host = Host(state, env.public, lambda n: ProbeSample(0, 0, None))
    clock = FakeClock()
    monkeypatch.setattr(ota, "time", clock)
    assert updater_for(host).watch_probation(model, duration, "c1") is None
    assert clock.sleeps == sleeps
    assert clock.now == 1000.0 + duration
    assert host._probe_count == 2 + len(sleeps)  # the baseline, then one probe per check


# --------------------------------------------------------------------------- survivors of the fourth mutation run


def test_a_rollback_between_reserve_and_launch_cancels_the_update(env: Env, tmp_path: Path) -> None:
    """The update command claims the updater, acks, and only then launches the worker: a rollback in
    between cancels the claimed update (reserve makes its Abort, the worker gets that very one)."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    updater.reserve()
    back = updater.rollback("r1")
    assert (back.id, back.status, back.reason) == (
        "r1", "failed", "rollback: there is no previous model to roll back to")
    replies: list[Ack] = []
    updater.launch(env.request(env.v2), "u1", replies.append)
    updater.join(120)
    assert [(a.id, a.status, a.reason) for a in replies] == [
        ("u1", "failed", "cancelled: the rollback command r1 took over")]
    assert not updater.busy and _active_sha(state) == sha256_file(env.v1)


def test_a_cancelled_update_never_requests_the_bundle(env: Env, tmp_path: Path) -> None:
    """The update's Abort reaches the download: once cancelled, its connection is shut down before the
    request goes out (a download without it would fetch the whole bundle first)."""
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server API
            requested.append(self.path)
            body = env.v2.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        state = env.store(tmp_path)
        request = env.request(env.v2, url=f"http://127.0.0.1:{httpd.server_address[1]}/v2.bundle")
        abort = Abort()
        abort.cancel("cancelled: the rollback command r1 took over")
        ack = updater_for(Host(state, env.public)).update(request, "u1", lambda a: None, abort)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert (ack.id, ack.status, ack.reason) == ("u1", "failed", "cancelled: the rollback command r1 took over")
    assert requested == []
    assert list((state / ota.DOWNLOADS).iterdir()) == [] and _active_sha(state) == sha256_file(env.v1)


def test_a_rollback_before_probation_leaves_no_probation_record(env: Env, tmp_path: Path) -> None:
    """A rollback that takes over right after the swap (here: while the in_progress ack is sent) ends
    the update without touching the store again: probation never starts on the model rolled back."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    replies: list[Ack] = []
    rolled: list[Ack] = []

    def reply(ack: Ack) -> None:
        replies.append(ack)
        if ack.status == "in_progress":
            rolled.append(updater.rollback("r1"))

    updater.start_update(env.request(env.v2, probation_s=600), "u1", reply)
    updater.join(120)
    assert [(a.id, a.status) for a in rolled] == [("r1", "succeeded")]
    assert [(a.id, a.status, a.reason) for a in replies[1:]] == [
        ("u1", "failed", "cancelled: the rollback command r1 took over")]
    # the ack names the model active now: the one the rollback brought back
    assert replies[-1].result == {"active": ota.describe(store_layout.active_model(state))}  # type: ignore[arg-type]
    assert replies[-1].result["active"]["bundle_sha256"] == sha256_file(env.v1)
    assert store_probation.read_probation(state) is None
    assert _active_sha(state) == sha256_file(env.v1) and not updater.busy


def test_the_command_signature_is_checked_within_the_devices_limits(env: Env, tmp_path: Path) -> None:
    """The detached signature check opens the bundle with the agent's limits ([model] max_model_mb),
    so a bundle too large for the device is refused before anything is installed."""
    manifest = read_bundle(env.v2, require_signature=False).manifest
    size = manifest.model.size_bytes
    signature = base64.b64encode(load_private_key(env.private).sign(
        read_bundle(env.v2, require_signature=False).manifest_bytes)).decode()
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    updater.limits = BundleLimits(model_bytes=size - 1)
    ack = updater.update(env.request(env.v2, signature=signature), "u1", lambda a: None)
    assert (ack.id, ack.status) == ("u1", "failed")
    assert ack.reason.startswith(f"{state / ota.DOWNLOADS}/")  # no step: refused before the store's copy
    assert ack.reason.endswith(f": {MODEL} is {size} bytes, more than the {size - 1} bytes a device accepts "
                               "(max_model_mb); refusing the bundle")
    assert _active_sha(state) == sha256_file(env.v1)


def test_an_update_without_a_thread_is_answered_and_frees_the_updater(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    class NoThread(threading.Thread):  # the OS refuses a new thread
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    class FixedHost:
        bundle_key = None
        fixed_model = tmp_path / "model.bundle"
        state_dir = tmp_path

    updater = updater_for(FixedHost())
    monkeypatch.setattr(ota, "threading", types.SimpleNamespace(Thread=NoThread))
    replies: list[Ack] = []
    updater.start_update(UpdateRequest("file:///m", SHA, 1), "u1", replies.append)
    assert replies == [Ack("u1", "failed", "internal_error: cannot start the update thread")]
    assert not updater.busy


# --------------------------------------------------------------------------- survivors of the fifth mutation run


def test_the_updater_passes_the_devices_latency_budget_to_the_smoke_test(env: Env, tmp_path: Path) -> None:
    """``[model] latency_budget_ms`` reaches the install's smoke test, not only the probation: v2's own
    1 ms budget passes (as every other test shows), a 1e-9 ms device budget cannot."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    updater.latency_budget_ms = 1e-9
    ack = updater.update(env.request(env.v2), "u1", lambda a: None)
    assert (ack.id, ack.status) == ("u1", "failed")
    assert ack.reason.startswith("smoke: ") and "exceeds the budget of 0.00 ms" in ack.reason, ack.reason
    assert _active_sha(state) == sha256_file(env.v1)


class _RollbackArrivesAtTheLastLock:
    """The updater's store lock (a real lock), which starts the real rollback command when the update
    asks for the lock the third time (install and swap, probation record, then clearing the record
    after a passed probation) and lets the update have the lock only once that rollback has cancelled
    it: the rollback lands after the probation passed, while the update waits for the store."""

    def __init__(self, updater: OtaUpdater) -> None:
        self.updater = updater
        self.lock = threading.Lock()
        self.entries = 0
        self.rolled: list[Ack] = []
        self.thread: threading.Thread | None = None

    def __enter__(self) -> None:
        self.entries += 1
        self.lock.acquire()
        if self.entries == 3:
            abort = self.updater._abort
            self.thread = threading.Thread(target=lambda: self.rolled.append(self.updater.rollback("r1")))
            self.thread.start()
            deadline = time.monotonic() + 120  # only bounds a hang
            while abort.reason is None and time.monotonic() < deadline:
                time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_rollback_after_a_passed_probation_ends_the_update_as_failed(env: Env, tmp_path: Path) -> None:
    """Between a passed probation and clearing its record a rollback may take over: the update then
    ends ``failed`` with the rollback's reason and the model active at that moment (the new one; the
    rollback, waiting for the store, runs after) instead of claiming success."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    store = _RollbackArrivesAtTheLastLock(updater)
    updater._store = store  # type: ignore[assignment]
    replies: list[Ack] = []
    updater.start_update(env.request(env.v2), "u1", replies.append)
    updater.join(120)
    assert store.thread is not None
    store.thread.join(120)
    sha2 = sha256_file(env.v2)
    assert [(a.id, a.status) for a in replies] == [("u1", "in_progress"), ("u1", "failed")]
    assert replies[-1] == Ack("u1", "failed", "cancelled: the rollback command r1 took over",
                              {"active": replies[0].result["active"]})  # type: ignore[index]
    assert replies[0].result["active"]["bundle_sha256"] == sha2  # type: ignore[index]
    assert [(a.id, a.status) for a in store.rolled] == [("r1", "succeeded")]
    assert store.rolled[0].result["previous"]["bundle_sha256"] == sha2  # type: ignore[index]
    assert _active_sha(state) == sha256_file(env.v1) and store_probation.read_probation(state) is None


# --------------------------------------------------------------------------- survivors of the fifth mutation run


def test_a_fresh_updater_has_nothing_to_wait_for_and_no_timings(env: Env, tmp_path: Path) -> None:
    """An agent that stops before any update joins its updater: that returns at once. Kills
    OtaUpdater.__init__ mutants 12 (``_thread = ""``: join() fails) and 13 (``last_timings = None``)."""
    updater = updater_for(Host(env.store(tmp_path), env.public))
    updater.join(0)
    assert updater.last_timings == {} and not updater.busy


def test_a_rollback_while_the_claim_has_no_abort_yet_still_answers(env: Env, tmp_path: Path) -> None:
    """reserve() takes the lock, then makes the update's Abort: a rollback from another thread in between
    sees a busy updater and cancels the Abort it has (the previous one). The test holds the lock as
    reserve() does at that moment. Kills OtaUpdater.__init__ mutant 11 (no first Abort: AttributeError)."""
    state = env.store(tmp_path)
    updater = updater_for(Host(state, env.public))
    updater._busy.acquire()
    try:
        back = updater.rollback("r1")
    finally:
        updater._busy.release()
    assert (back.id, back.status, back.reason) == (
        "r1", "failed", "rollback: there is no previous model to roll back to")
    assert _active_sha(state) == sha256_file(env.v1)
