"""OTA logic against real HTTP(S) servers, real downloads, the real store and real inference.

The MQTT path (command layer, signatures, acks over a broker, the real agent) is in
test_ota_mqtt.py. The host here (tests/ota_device.py) reports what it loaded as the agent
does: the weights' sha256 and the bundle identity (``manifest_sha256``).
"""

from __future__ import annotations

import base64
import functools
import http.server
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import certs
from edge_agent.config import OtaSection
from edge_agent.model.bundle import read_bundle
from edge_agent.model.keys import load_private_key
from edge_agent.model.loader import bundle_identity
from edge_agent.remote import download, ota
from edge_agent.remote.protocol import Ack, CommandError
from edge_agent.store import install as store_install
from edge_agent.store import layout as store_layout
from edge_agent.store import probation as store_probation
from edge_agent.util import fs
from edge_agent.util.fs import sha256_file
from tests import deploy_helpers
from tests.fixtures_disk import tmpfs
from tests.fixtures_mqtt import Pki
from tests.fixtures_ssh import BundleSet, DeployKeys
from tests.ota_device import InferenceHost, StuckHost

pytestmark = pytest.mark.integration

HANG_S = 60  # bounds a hang only; every update here ends in a few seconds


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: http.server.ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _serve(server)
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def publish(http_root: tuple[Path, str], bundle: Path) -> dict[str, object]:
    root, base = http_root
    shutil.copy(bundle, root / bundle.name)
    return {"url": f"{base}/{bundle.name}", "sha256": sha256_file(bundle), "size": bundle.stat().st_size}


def identity(bundle: Path) -> str:
    """The bundle identity the agent reports for a bundle (``manifest_sha256``)."""
    return bundle_identity(read_bundle(bundle, require_signature=False).manifest_bytes)


def _install_good(tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / store_layout.TRUSTED_KEY)
    store_install.install_model(test_bundles.good, state)
    return state


@pytest.fixture
def device(tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet) -> Iterator[InferenceHost]:
    host = InferenceHost(_install_good(tmp_path, deploy_keys, test_bundles), None).start()
    yield host
    host.stop()


def run_update(host: InferenceHost, args: dict[str, object], policy: ota.ProbationPolicy | None = None,
               settings: OtaSection | None = None) -> tuple[list[Ack], float]:
    updater = ota.OtaUpdater(host, policy or ota.ProbationPolicy(), settings)
    acks: list[Ack] = []
    t0 = time.monotonic()
    updater.start_update(ota.parse_update_args(args), "cmd-1", acks.append)
    updater.join(HANG_S)
    assert acks and acks[-1].status in ("succeeded", "failed"), acks
    return acks, time.monotonic() - t0


def _active_sha(host: InferenceHost) -> str:
    active = store_layout.active_model(host.state_dir)
    assert active is not None
    return active.sha256


def _assert_untouched(host: InferenceHost, test_bundles: BundleSet) -> None:
    """The old model is active in the store and running, nothing is left in downloads/."""
    assert _active_sha(host) == sha256_file(test_bundles.good)
    assert host.identity == identity(test_bundles.good)
    assert host.reloads == 0
    assert not list((host.state_dir / ota.DOWNLOADS).iterdir())


def test_test_bundles_differ_in_weights(test_bundles: BundleSet) -> None:
    """Guards the fixture itself: with the weights shared (repack() reusing the model bytes),
    every "serves the new model" check below and in test_ota_mqtt.py would hold without a swap."""
    good = read_bundle(test_bundles.good, require_signature=False).manifest
    v2 = read_bundle(test_bundles.good_v2, require_signature=False).manifest
    assert good.model.sha256 != v2.model.sha256
    assert identity(test_bundles.good) != identity(test_bundles.good_v2)


def test_update_succeeds_and_swaps_running_model(device: InferenceHost, http_root: tuple[Path, str],
                                                 test_bundles: BundleSet) -> None:
    args = {**publish(http_root, test_bundles.good_v2), "probation_s": 1.0}
    acks, elapsed = run_update(device, args)
    assert [a.status for a in acks] == ["in_progress", "succeeded"], acks
    assert "probation" in acks[0].reason
    final = acks[-1]
    assert final.result is not None
    assert final.result["active"]["bundle_sha256"] == sha256_file(test_bundles.good_v2)
    assert final.result["active"]["manifest_sha256"] == identity(test_bundles.good_v2)
    assert final.result["previous"]["manifest_sha256"] == identity(test_bundles.good)
    assert _active_sha(device) == sha256_file(test_bundles.good_v2)
    assert device.identity == identity(test_bundles.good_v2)  # the host runs the new bundle
    assert store_probation.read_probation(device.state_dir) is None
    assert device.reloads == 1 and device.errors == 0
    assert not list((device.state_dir / ota.DOWNLOADS).iterdir())
    print(f"update->succeeded {elapsed:.2f} s (1 s probation), swap gap {device.max_gap_s * 1000:.1f} ms, "
          f"timings {final.result['timings']}")


def test_manifest_only_update_is_a_swap(device: InferenceHost, http_root: tuple[Path, str],
                                        test_bundles: BundleSet, deploy_keys: DeployKeys,
                                        tmp_path: Path) -> None:
    """Same weights, new labels: installed, reloaded and reported as a new bundle."""
    new = deploy_helpers.relabelled(test_bundles.good, tmp_path / "relabelled.bundle",
                                    load_private_key(deploy_keys.private))
    model_sha = read_bundle(new, require_signature=False).manifest.model.sha256
    assert model_sha == read_bundle(test_bundles.good, require_signature=False).manifest.model.sha256
    acks, _ = run_update(device, {**publish(http_root, new), "probation_s": 0})
    assert [a.status for a in acks] == ["in_progress", "succeeded"], acks
    assert acks[-1].result is not None
    assert acks[-1].result["active"]["manifest_sha256"] == identity(new) != identity(test_bundles.good)
    assert device.reloads == 1 and device.identity == identity(new)


def test_reload_that_keeps_the_old_model_is_rolled_back(tmp_path: Path, deploy_keys: DeployKeys,
                                                        test_bundles: BundleSet,
                                                        http_root: tuple[Path, str]) -> None:
    """The host answers the reload but keeps running the old bundle. With a manifest-only update
    the weights' sha256 matches, so only the bundle identity can tell. Guards against the check
    after the reload being dropped, skipped when the host reports nothing, or comparing the
    weights' sha256 only."""
    host = StuckHost(_install_good(tmp_path, deploy_keys, test_bundles), None).start()
    try:
        new = deploy_helpers.relabelled(test_bundles.good, tmp_path / "relabelled.bundle",
                                        load_private_key(deploy_keys.private))
        acks, _ = run_update(host, {**publish(http_root, new), "probation_s": 0})
    finally:
        host.stop()
    assert [a.status for a in acks] == ["failed"], acks
    reason = acks[0].reason
    assert (f"the running agent reports bundle {identity(test_bundles.good)[:12]}, "
            f"not the installed bundle {identity(new)[:12]}") in reason, reason
    assert "rolled back to" in reason, reason
    assert _active_sha(host) == sha256_file(test_bundles.good)
    assert acks[0].result is not None
    assert acks[0].result["active"]["manifest_sha256"] == identity(test_bundles.good)
    assert host.reloads == 2  # the new model, then the old one again


# --------------------------------------------------------------------------- download failures

ENDLESS_CAP = 64 << 20  # the `endless` body stops here if the client never hangs up


class _FaultyServer(http.server.ThreadingHTTPServer):
    root: Path
    sent: dict[str, int]
    started: list[str]  # the modes asked for, in order
    stop: threading.Event  # set at teardown: `trickle` and `hang` end


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    """``GET /MODE/NAME`` serves ``ROOT/NAME`` wrongly, by MODE:

    - ``announce-more``: the whole file under a Content-Length 100 bytes too large;
    - ``endless``: the file, then zeros without end (up to ENDLESS_CAP), no Content-Length;
    - ``short``: the first two thirds, no Content-Length, then the connection closes;
    - ``short-announced``: the first two thirds under the full Content-Length;
    - ``chunked-short``: chunked encoding, the connection dropped inside the one chunk;
    - ``trickle``: the file under its Content-Length, one byte every 0.5 s (under any read timeout);
    - ``hang``: the headers, then nothing until the server stops.
    """

    server: _FaultyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").partition("/")
        self.server.started.append(mode)
        data = (self.server.root / name).read_bytes()
        cut = data[: len(data) * 2 // 3]
        self.close_connection = True
        if mode == "chunked-short":
            self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        if mode == "announce-more":
            self.send_header("Content-Length", str(len(data) + 100))
        elif mode in ("short-announced", "trickle", "hang"):
            self.send_header("Content-Length", str(len(data)))
        elif mode == "chunked-short":
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            if mode == "endless":
                self.wfile.write(data)
                sent = len(data)
                block = bytes(1 << 16)
                while sent < ENDLESS_CAP:
                    self.wfile.write(block)
                    sent += len(block)
            elif mode == "trickle":
                while sent < len(data) and not self.server.stop.wait(0.5):
                    self.wfile.write(data[sent:sent + 1])
                    self.wfile.flush()
                    sent += 1
            elif mode == "hang":
                self.wfile.flush()
                self.server.stop.wait(HANG_S)
            elif mode == "chunked-short":
                self.wfile.write(f"{len(data):x}\r\n".encode() + cut)
                sent = len(cut)
            elif mode in ("short", "short-announced"):
                self.wfile.write(cut)
                sent = len(cut)
            else:
                self.wfile.write(data)
                sent = len(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.server.sent[mode] = sent


@pytest.fixture(scope="module")
def faulty(http_root: tuple[Path, str]) -> Iterator[_FaultyServer]:
    server = _FaultyServer(("127.0.0.1", 0), _FaultyHandler)
    server.root, server.sent, server.started, server.stop = http_root[0], {}, [], threading.Event()
    _serve(server)
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        # each reason names its check: removing that check gives another reason (or a success)
        ("announce-more", "server announces {plus} bytes, expected {size}"),
        ("endless", "download is larger than the expected {size} bytes"),
        ("short", "download truncated: {part} of {size} bytes"),
        ("short-announced", "download truncated: {part} of {size} bytes"),
        # http.client raises IncompleteRead, which is no OSError: it used to escape download()
        # and end as "internal_error: IncompleteRead" with the partial file left behind
        ("chunked-short", "download failed: the server broke off the transfer (IncompleteRead)"),
    ],
)
def test_download_failures(device: InferenceHost, http_root: tuple[Path, str], faulty: _FaultyServer,
                           test_bundles: BundleSet, mode: str, reason: str) -> None:
    args = {**publish(http_root, test_bundles.good_v2), "probation_s": 0}  # no wait if it were installed
    size = test_bundles.good_v2.stat().st_size
    port = faulty.server_address[1]
    args["url"] = f"http://127.0.0.1:{port}/{mode}/{test_bundles.good_v2.name}"
    acks, _ = run_update(device, args)
    assert [a.status for a in acks] == ["failed"], acks
    want = reason.format(plus=size + 100, size=size, part=size * 2 // 3)
    assert acks[0].reason == want, acks[0].reason
    _assert_untouched(device, test_bundles)
    if mode == "endless":  # the device hung up: it did not read on to the server's cap
        deadline = time.monotonic() + HANG_S
        while "endless" not in faulty.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert faulty.sent["endless"] < ENDLESS_CAP


def _faulty_args(http_root: tuple[Path, str], faulty: _FaultyServer, mode: str, bundle: Path) -> dict[str, object]:
    args = publish(http_root, bundle)
    return {**args, "url": f"http://127.0.0.1:{faulty.server_address[1]}/{mode}/{bundle.name}", "probation_s": 0}


def test_a_trickling_download_fails_at_the_deadline_and_frees_the_updater(
        device: InferenceHost, http_root: tuple[Path, str], faulty: _FaultyServer, test_bundles: BundleSet) -> None:
    """Issue 11: one byte every 0.5 s never trips a read timeout; the configured deadline
    (``ota.download_timeout_s``) ends the update, and the next update is not refused as busy."""
    updater = ota.OtaUpdater(device, settings=OtaSection(download_timeout_s=2))
    acks: list[Ack] = []
    updater.start_update(ota.parse_update_args(_faulty_args(http_root, faulty, "trickle", test_bundles.good_v2)),
                         "u1", acks.append)
    updater.join(HANG_S)
    assert [(a.id, a.status) for a in acks] == [("u1", "failed")], acks
    assert acks[0].reason == "deadline: the download did not finish within 2 s (ota.download_timeout_s)"
    assert not updater.busy
    _assert_untouched(device, test_bundles)
    args = {**publish(http_root, test_bundles.good_v2), "probation_s": 0}
    updater.start_update(ota.parse_update_args(args), "u2", acks.append)
    updater.join(HANG_S)
    assert [(a.id, a.status) for a in acks[1:]] == [("u2", "in_progress"), ("u2", "succeeded")], acks
    assert device.identity == identity(test_bundles.good_v2)


def test_a_rollback_during_a_hanging_download_goes_ahead(
        device: InferenceHost, http_root: tuple[Path, str], faulty: _FaultyServer, test_bundles: BundleSet) -> None:
    """Issue 11: a rollback used to get ``failed: busy`` while a download hung. It now cancels the
    download (the connection is shut down, whatever the read timeout) and rolls back at once."""
    updater = ota.OtaUpdater(device)  # the defaults: a 600 s deadline, a 30 s read timeout
    acks: list[Ack] = []
    updater.start_update(ota.parse_update_args({**publish(http_root, test_bundles.good_v2), "probation_s": 0}),
                         "u1", acks.append)
    updater.join(HANG_S)
    assert acks[-1].status == "succeeded" and device.identity == identity(test_bundles.good_v2), acks
    hangs = faulty.started.count("hang")  # the download never ends: which bundle it is does not matter
    updater.start_update(ota.parse_update_args(_faulty_args(http_root, faulty, "hang", test_bundles.good_v2)),
                         "u2", acks.append)
    waited = threading.Event()
    while faulty.started.count("hang") == hangs and not waited.wait(0.01):
        pass  # until the server has the request: the worker now blocks in a read
    assert updater.busy
    back = updater.rollback("r1")
    assert (back.id, back.status, back.reason) == ("r1", "succeeded", "rolled back"), back
    assert device.identity == identity(test_bundles.good) and _active_sha(device) == sha256_file(test_bundles.good)
    updater.join(HANG_S)
    assert not updater.busy
    assert (acks[-1].id, acks[-1].status, acks[-1].reason) == (
        "u2", "failed", "cancelled: the rollback command r1 took over"), acks
    assert device.identity == identity(test_bundles.good)  # the cancelled update changed nothing after


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"sha256": "0" * 64}, "sha256 mismatch: got "),
        ({"size": 1}, "server announces "),
        ({"url_suffix": ".missing"}, "download failed: File not found"),  # the HTTP 404's reason
    ],
)
def test_download_checks(device: InferenceHost, http_root: tuple[Path, str], test_bundles: BundleSet,
                         mutate: dict[str, object], reason: str) -> None:
    args = {**publish(http_root, test_bundles.good_v2), "probation_s": 0}
    suffix = mutate.get("url_suffix", "")
    args = {**args, **{k: v for k, v in mutate.items() if k != "url_suffix"}, "url": f"{args['url']}{suffix}"}
    acks, _ = run_update(device, args)
    assert [a.status for a in acks] == ["failed"]
    assert acks[0].reason.startswith(reason), acks[0].reason
    _assert_untouched(device, test_bundles)


@pytest.fixture
def small_downloads(device: InferenceHost) -> Iterator[Path]:
    """``downloads/`` on a 24 MiB tmpfs (root only; skipped elsewhere)."""
    downloads = device.state_dir / ota.DOWNLOADS
    downloads.mkdir()
    with tmpfs(downloads, "24m"):
        yield downloads


def test_not_enough_free_space(device: InferenceHost, http_root: tuple[Path, str], test_bundles: BundleSet,
                               small_downloads: Path) -> None:
    """An announced 3 MiB bundle needs 3 x 3 MiB + the 16 MiB margin = 25 MiB: refused on a 24 MiB
    filesystem before any byte is fetched. With the check gone, or asking for 1 x size, the
    download starts and fails for another reason (the server announces another size)."""
    free = shutil.disk_usage(small_downloads).free
    assert 3 * (3 << 20) + fs.FREE_SPACE_MARGIN > free > (3 << 20) + fs.FREE_SPACE_MARGIN
    args = {**publish(http_root, test_bundles.good_v2), "size": 3 << 20, "probation_s": 0}
    acks, _ = run_update(device, args)
    assert [a.status for a in acks] == ["failed"], acks
    assert acks[0].reason.startswith(f"not enough free space in {small_downloads}"), acks[0].reason
    _assert_untouched(device, test_bundles)


# --------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def https(http_root: tuple[Path, str], pki: Pki, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, str]]:
    """Base URLs of three HTTPS servers on 127.0.0.1 serving ``http_root``: ``trusted`` (the test
    CA's server certificate for localhost/127.0.0.1), ``foreign_ca`` (right name, another CA)
    and ``wrong_host`` (the test CA, but for models.example.org only)."""
    base = tmp_path_factory.mktemp("https-certs")
    other = base / "other-ca"
    certs.create_ca(other, name="not the device's CA")
    pairs = {
        "trusted": pki.server,
        "foreign_ca": certs.issue(other, "localhost", server=True, dns=["localhost"], ips=["127.0.0.1"]),
        "wrong_host": certs.issue(pki.dir, "models.example.org", server=True, out_dir=base / "wrong-host"),
    }
    servers: list[http.server.ThreadingHTTPServer] = []
    urls = {}
    for name, pair in pairs.items():
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(http_root[0])))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert, pair.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        _serve(server)
        servers.append(server)
        urls[name] = f"https://127.0.0.1:{server.server_address[1]}"
    yield urls
    for server in servers:
        server.shutdown()
        server.server_close()


def _https_args(http_root: tuple[Path, str], https_base: str, bundle: Path) -> dict[str, object]:
    args = publish(http_root, bundle)
    args["url"] = str(args["url"]).replace(http_root[1], https_base)
    return args


def test_https_download_from_a_server_of_the_trusted_ca(device: InferenceHost, http_root: tuple[Path, str],
                                                        https: dict[str, str], pki: Pki,
                                                        test_bundles: BundleSet,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The device trusts a private CA through OpenSSL's SSL_CERT_FILE (as a systemd
    ``Environment=`` would set it). Guards against a context that loads no trust store."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
    args = {**_https_args(http_root, https["trusted"], test_bundles.good_v2), "probation_s": 0}
    acks, _ = run_update(device, args)
    assert [a.status for a in acks] == ["in_progress", "succeeded"], acks
    assert device.identity == identity(test_bundles.good_v2)


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        # guards against verify_mode CERT_NONE (an unverified context)
        ("foreign_ca", "certificate verify failed: unable to get local issuer certificate"),
        # guards against check_hostname = False
        ("wrong_host", "certificate verify failed: IP address mismatch"),
    ],
)
def test_https_refuses_a_bad_server_certificate(device: InferenceHost, http_root: tuple[Path, str],
                                                https: dict[str, str], pki: Pki, test_bundles: BundleSet,
                                                monkeypatch: pytest.MonkeyPatch, server: str,
                                                reason: str) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
    acks, _ = run_update(device, {**_https_args(http_root, https[server], test_bundles.good_v2), "probation_s": 0})
    assert [a.status for a in acks] == ["failed"], acks
    assert acks[0].reason.startswith("download failed: ") and reason in acks[0].reason, acks[0].reason
    _assert_untouched(device, test_bundles)


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a 302 to ``location`` + the path."""

    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_https_never_redirects_to_http(device: InferenceHost, http_root: tuple[Path, str], pki: Pki,
                                       test_bundles: BundleSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: a verified https:// download must not continue in clear text (a redirect is the
    server's word, and the server may be someone else's by then)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
    handler = type("ToHttp", (_RedirectHandler,), {"location": http_root[1]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _serve(server)
    try:
        args = publish(http_root, test_bundles.good_v2)
        url = str(args["url"]).replace(http_root[1], f"https://127.0.0.1:{server.server_address[1]}")
        acks, _ = run_update(device, {**args, "url": url, "probation_s": 0})
    finally:
        server.shutdown()
        server.server_close()
    assert [(a.status, a.reason) for a in acks] == [("failed", "redirect from https:// to http:// refused")], acks
    _assert_untouched(device, test_bundles)


# --------------------------------------------------------------------------- signatures, probation, rollback


def test_bad_signatures_refused(device: InferenceHost, http_root: tuple[Path, str],
                                test_bundles: BundleSet, deploy_keys: DeployKeys) -> None:
    before = _active_sha(device)
    acks, _ = run_update(device, publish(http_root, test_bundles.wrong_signature))
    assert acks[-1].status == "failed" and "does not verify" in acks[-1].reason
    acks, _ = run_update(device, publish(http_root, test_bundles.unsigned))
    assert acks[-1].status == "failed" and "not signed" in acks[-1].reason
    # the command's own bundle signature: must verify over the manifest with the pinned key
    args = publish(http_root, test_bundles.good_v2)
    wrong = base64.b64encode(bytes(64)).decode()
    acks, _ = run_update(device, {**args, "signature": wrong})
    assert acks[-1].status == "failed" and "bad signature" in acks[-1].reason
    assert _active_sha(device) == before and device.reloads == 0
    manifest = read_bundle(test_bundles.good_v2).manifest_bytes
    good_sig = base64.b64encode(load_private_key(deploy_keys.private).sign(manifest)).decode()
    acks, _ = run_update(device, {**args, "signature": good_sig, "probation_s": 0})
    assert acks[-1].status == "succeeded", acks
    assert device.identity == identity(test_bundles.good_v2)


def test_probation_failure_rolls_back(device: InferenceHost, http_root: tuple[Path, str],
                                      test_bundles: BundleSet) -> None:
    """A model whose input the running source does not fit: every inference errors. The probation
    is the longest allowed, so the update only ends (before run_update's hang bound) when the
    failure is detected early."""
    before = _active_sha(device)
    args = {**publish(http_root, test_bundles.wrong_input), "allow_new_input": True,
            "probation_s": ota.MAX_PROBATION_S}
    acks, elapsed = run_update(device, args)
    assert [a.status for a in acks] == ["in_progress", "failed"], acks
    assert "probation failed: error rate" in acks[-1].reason
    assert "rolled back to" in acks[-1].reason
    assert _active_sha(device) == before
    assert device.reloads == 2  # new model, then the old one again
    assert device.identity == identity(test_bundles.good)
    errors, inferences = device.errors, device.inferences
    deadline = time.monotonic() + HANG_S
    while device.inferences < inferences + 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert device.inferences >= inferences + 20 and device.errors == errors  # serving again, no errors
    print(f"probation failure -> rolled back in {elapsed:.2f} s")


def test_downgrade_needs_rollback_command(device: InferenceHost, http_root: tuple[Path, str],
                                          test_bundles: BundleSet) -> None:
    acks, _ = run_update(device, {**publish(http_root, test_bundles.good_v2), "probation_s": 0})
    assert acks[-1].status == "succeeded"
    acks, _ = run_update(device, {**publish(http_root, test_bundles.good), "probation_s": 0})
    assert acks[-1].status == "failed" and "downgrades need a signed rollback" in acks[-1].reason
    assert device.identity == identity(test_bundles.good_v2)
    updater = ota.OtaUpdater(device)
    t0 = time.monotonic()
    ack = updater.rollback("cmd-rb")
    elapsed = time.monotonic() - t0
    assert ack.status == "succeeded", ack
    assert _active_sha(device) == sha256_file(test_bundles.good)
    assert device.identity == identity(test_bundles.good)
    assert ack.result is not None and ack.result["active"]["manifest_sha256"] == identity(test_bundles.good)
    print(f"rollback command {elapsed * 1000:.1f} ms (store {ack.result['rollback_ms']} ms)")


def test_rollback_command_checks_what_the_agent_runs(tmp_path: Path, deploy_keys: DeployKeys,
                                                     test_bundles: BundleSet) -> None:
    """A rollback whose reload keeps the newer bundle running is not reported as succeeded."""
    state = _install_good(tmp_path, deploy_keys, test_bundles)
    store_install.install_model(test_bundles.good_v2, state)
    host = StuckHost(state, None).start()
    try:
        ack = ota.OtaUpdater(host).rollback("cmd-rb")
    finally:
        host.stop()
    assert ack.status == "failed", ack
    assert ack.reason == (f"rolled back on disk but the running agent reports bundle "
                          f"{identity(test_bundles.good_v2)[:12]}, not the installed bundle "
                          f"{identity(test_bundles.good)[:12]} (manifest sha256)")


def test_file_url(device: InferenceHost, test_bundles: BundleSet) -> None:
    args = {"url": test_bundles.good_v2.resolve().as_uri(), "sha256": sha256_file(test_bundles.good_v2),
            "size": test_bundles.good_v2.stat().st_size, "probation_s": 0}
    acks, _ = run_update(device, args)  # no ota.file_root: file:// refused
    assert [(a.status, a.reason) for a in acks] == [("failed", download.FILE_REFUSED)], acks
    acks, _ = run_update(device, args, settings=OtaSection(file_root=test_bundles.good_v2.resolve().parent))
    assert acks[-1].status == "succeeded", acks
    assert device.identity == identity(test_bundles.good_v2)


def test_crash_counter_during_probation(device: InferenceHost, test_bundles: BundleSet) -> None:
    """Agent restarts while a model is on probation count as crashes; too many roll back."""
    new = store_install.install_model(test_bundles.good_v2, device.state_dir)
    store_probation.start_probation(device.state_dir, new.active, duration_s=60, max_crashes=1)
    assert store_probation.note_agent_start(device.state_dir) is None  # first crash tolerated
    result = store_probation.note_agent_start(device.state_dir)
    assert result is not None and result.active.sha256 == sha256_file(test_bundles.good)


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"url": "ftp://x/y", "sha256": "a" * 64, "size": 1},
        {"url": "http://h/x", "sha256": "xyz", "size": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 0},
        {"url": "http://h/x", "sha256": "a" * 64, "size": True},
        {"url": "file://remote/etc/passwd", "sha256": "a" * 64, "size": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "extra": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "signature": "!!"},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "probation_s": 1e9},
    ],
)
def test_update_args_strict(args: dict[str, object]) -> None:
    with pytest.raises(CommandError):
        ota.parse_update_args(args)


def test_one_update_at_a_time(device: InferenceHost, http_root: tuple[Path, str],
                              test_bundles: BundleSet) -> None:
    updater = ota.OtaUpdater(device)
    acks: list[Ack] = []
    request = ota.parse_update_args({**publish(http_root, test_bundles.good_v2), "probation_s": 1})
    updater.start_update(request, "a", acks.append)
    with pytest.raises(ota.OtaError, match="busy"):
        updater.start_update(request, "b", acks.append)
    updater.join(HANG_S)
    assert acks[-1].status == "succeeded"
