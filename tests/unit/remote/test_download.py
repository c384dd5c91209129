"""Issue 11: a download has an overall deadline and can be aborted; redirects go only to http(s)
and never downgrade; ``file://`` names only regular files under ``ota.file_root``.

Real HTTP and HTTPS servers on 127.0.0.1 (one route trickles its body, one never sends it), a
private CA trusted through ``SSL_CERT_FILE``, a real FIFO, real symlinks and a small tmpfs. Hangs
are bounded by joins with generous limits; nothing is timed. Issue 16: each test here fails on a
mutant of edge_agent/remote/download.py that the mutation run found surviving.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest

from deploy import certs
from edge_agent.config import AgentConfig, OtaSection
from edge_agent.errors import ConfigError
from edge_agent.remote.download import (
    FILE_REFUSED,
    Abort,
    DownloadError,
    download,
    file_url_problem,
    url_problem,
)
from edge_agent.util.fs import FREE_SPACE_MARGIN
from tests.fixtures_disk import tmpfs

HANG_S = 60.0  # bounds a hang only
BODY = bytes(range(256)) * 4
SHA = hashlib.sha256(BODY).hexdigest()


HUGE = 64 << 20  # far more than any socket buffers hold


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/good`` the body; ``/trickle`` one byte per 0.2 s (far under the read timeout);
    ``/silent`` headers then nothing; ``/redirect?to=URL`` a 302 (``/redirect?code=308&to=URL``
    another code) to URL; ``/uri?to=URL`` a 302 naming URL in a ``URI`` header only; ``/loop`` a
    302 to itself; ``/ua`` the request's User-Agent as the body; ``/chunk-cut`` a chunked body cut
    inside its first chunk; ``/huge`` 64 MiB without Content-Length (it records whether it could
    send them all)."""

    protocol_version = "HTTP/1.1"
    stop: ClassVar[threading.Event]
    requests: ClassVar[list[str]]

    def do_GET(self) -> None:  # the http.server API
        self.requests.append(self.path)
        if self.path.startswith(("/redirect?", "/uri?", "/loop")):
            self._redirect()
        elif self.path == "/ua":
            self._send(self.headers.get("User-Agent", "").encode())
        elif self.path == "/chunk-cut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"400\r\n" + BODY[:10])
            self.close_connection = True
        elif self.path == "/huge":
            self._huge()
        elif self.path in ("/good", "/trickle", "/silent"):
            self._body()
        else:
            self.send_error(404)

    def _redirect(self) -> None:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        code = 302
        if query.startswith("code="):
            code, query = int(query[5:8]), query[9:]
        to = query.removeprefix("to=") if self.path != "/loop" else "/loop"
        self.send_response(code)
        self.send_header("URI" if self.path.startswith("/uri?") else "Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _huge(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        block = bytes(1 << 20)
        try:
            for _ in range(HUGE // len(block)):
                self.wfile.write(block)
            self.wfile.flush()
        except OSError:  # the client closed the connection
            self.requests.append("/huge: broken off")
            return
        self.requests.append("/huge: sent all")

    def _body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.path == "/good":
            self.wfile.write(BODY)
        elif self.path == "/trickle":
            for i in range(len(BODY)):
                if self.stop.wait(0.2):
                    return
                try:
                    self.wfile.write(BODY[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
        else:
            self.stop.wait(HANG_S)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 (HTTPS with ``tls``): its base URL and the paths it was asked for."""
    handler: type[_Handler] = type("Handler", (_Handler,), {"stop": threading.Event(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}", handler.requests
    finally:
        handler.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(HANG_S)


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    with _serve() as served:
        yield served


class Pki(NamedTuple):
    ca: Path  # the private CA's certificate (what SSL_CERT_FILE names)
    server: ssl.SSLContext  # the server side, certificate for 127.0.0.1 issued by the CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.create_ca(root)
    pair = certs.issue(root, "localhost", server=True, dns=["localhost"], ips=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return Pki(ca.cert, context)


@pytest.fixture
def https(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server whose certificate the device trusts (its CA in SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    with _serve(pki.server) as served:
        yield served


def _error(url: str, target: Path, limits: OtaSection, abort: Abort | None = None) -> str:
    """The DownloadError of a download run in a thread (a hang fails the test instead of blocking it)."""
    outcome: list[BaseException | Path] = []

    def run() -> None:
        try:
            outcome.append(download(url, target, len(BODY), SHA, limits, abort))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_S)
    assert not worker.is_alive(), "the download hung"
    assert isinstance(outcome[0], DownloadError), outcome
    assert not target.exists()  # nothing half-written left behind
    return str(outcome[0])


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h/m", None),
        ("https://h:8443/m", None),
        ("file:///srv/m", None),
        ("file://localhost/srv/m", None),
        ("ftp://h/m", "url must be http://, https:// or file://"),
        ("file://evil/m", "file:// URLs need an absolute local path"),
        ("file:m", "file:// URLs need an absolute local path"),
        ("http:///m", "url has no host"),
        ("http://[::1/m", "url is malformed: Invalid IPv6 URL"),
        ("http://h:abc/m", "url is malformed: Port could not be cast to integer value as 'abc'"),
        ("https://h:99999/m", "url is malformed: Port out of range 0-65535"),
    ],
)
def test_url_problem(url: str, problem: str | None) -> None:
    """A malformed URL is refused with the reason (it used to raise ValueError, an internal error
    in the command's ack, or fail later as "the server broke off the transfer (InvalidURL)")."""
    assert url_problem(url) == problem


# --------------------------------------------------------------------------- deadline and abort


def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """One byte every 0.2 s never trips the 30 s read timeout; the whole download's deadline stops it."""
    base, _ = server
    limits = OtaSection(download_timeout_s=1.5, read_timeout_s=30)
    reason = _error(f"{base}/trickle", tmp_path / "dl.bundle", limits)
    assert reason == "deadline: the download did not finish within 1.5 s (ota.download_timeout_s)"
    assert download(f"{base}/good", tmp_path / "ok.bundle", len(BODY), SHA, limits).read_bytes() == BODY


def test_an_abort_breaks_off_a_download_blocked_in_a_read(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """The server sent its headers and then nothing: the read blocks (60 s read timeout) until another
    thread aborts; the socket is shut down, so the read returns at once with the abort's reason."""
    base, requests = server
    abort = Abort()
    limits = OtaSection(download_timeout_s=600, read_timeout_s=HANG_S)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(_error(f"{base}/silent", tmp_path / "dl", limits, abort)))
    worker.start()
    deadline = threading.Event()
    while "/silent" not in requests and not deadline.wait(0.01):
        pass
    abort.cancel("cancelled: the rollback command r1 took over")
    abort.cancel("a second reason does not replace the first")
    worker.join(HANG_S)
    assert result == ["cancelled: the rollback command r1 took over"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_abort_before_the_connection_is_made_stops_it_at_once(tmp_path: Path, scheme: str,
                                                                 request: pytest.FixtureRequest) -> None:
    """The new connection's socket is shut down as soon as it is made (for https before the TLS
    handshake): not even the request goes out."""
    base, requests = request.getfixturevalue("server" if scheme == "http" else "https")
    abort = Abort()
    abort.cancel("cancelled: early")
    assert _error(f"{base}/good", tmp_path / "dl", OtaSection(), abort) == "cancelled: early"
    assert requests == []


def test_a_cancel_after_the_download_is_harmless(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """A rollback may cancel a download that has just finished: its socket is closed by then, and
    shutting a closed socket down must not raise into the rollback."""
    base, _ = server
    abort = Abort()
    assert abort.reason is None
    assert download(f"{base}/good", tmp_path / "dl", len(BODY), SHA, OtaSection(), abort).read_bytes() == BODY
    abort.cancel("cancelled: too late")
    assert abort.reason == "cancelled: too late"
    with pytest.raises(DownloadError, match=r"^cancelled: too late$"):
        abort.check()


def test_a_download_never_holds_up_the_exit(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """The OTA worker is a daemon thread, so a shutdown does not wait for a download; neither may the
    download's deadline timer (a non-daemon timer would keep the process alive for up to
    ota.download_timeout_s after the agent was told to stop)."""
    base, requests = server
    before = {t for t in threading.enumerate() if not t.daemon}
    abort = Abort()
    limits = OtaSection(download_timeout_s=600, read_timeout_s=HANG_S)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(_error(f"{base}/silent", tmp_path / "dl", limits, abort)),
                              daemon=True)
    worker.start()
    waited = threading.Event()
    for _ in range(int(HANG_S / 0.01)):  # bounds a hang only
        if "/silent" in requests or waited.wait(0.01):
            break
    lingering = [t.name for t in threading.enumerate() if not t.daemon and t not in before]
    abort.cancel("cancelled: shutting down")
    worker.join(HANG_S)
    assert result == ["cancelled: shutting down"]
    assert lingering == []


# --------------------------------------------------------------------------- redirects


def test_redirects_only_to_http_and_within_the_limit(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, _ = server
    target = tmp_path / "dl.bundle"
    hop = f"{base}/redirect?to={base}/good"
    assert download(hop, target, len(BODY), SHA, OtaSection()).read_bytes() == BODY
    assert _error(hop, target, OtaSection(max_redirects=0)) == "more than 0 redirects (ota.max_redirects)"
    two = f"{base}/redirect?to={base}/redirect?to={base}/good"
    assert _error(two, target, OtaSection(max_redirects=1)) == "more than 1 redirects (ota.max_redirects)"
    assert download(two, target, len(BODY), SHA, OtaSection(max_redirects=2)).read_bytes() == BODY
    for scheme_url, scheme in [("ftp://127.0.0.1/m.bundle", "ftp"), (f"file://{tmp_path}/m.bundle", "file"),
                               ("data:,x", "data")]:
        assert _error(f"{base}/redirect?to={scheme_url}", target, OtaSection(file_root=tmp_path)) == (
            f"redirect to a {scheme}: URL refused (only http:// and https://)")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_every_redirect_code_is_checked(tmp_path: Path, server: tuple[str, list[str]], code: int) -> None:
    base, _ = server
    assert _error(f"{base}/redirect?code={code}&to=ftp://127.0.0.1/m", tmp_path / "dl", OtaSection()) == (
        "redirect to a ftp: URL refused (only http:// and https://)")


def test_a_relative_redirect_a_uri_header_and_a_loop(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """A relative Location is resolved against the request's URL; the old ``URI`` header (which
    urllib follows too) is checked like Location; a redirect loop ends at ota.max_redirects (5, more
    than urllib's own limit of 4 visits of one URL)."""
    base, requests = server
    target = tmp_path / "dl.bundle"
    assert download(f"{base}/redirect?to=/good", target, len(BODY), SHA, OtaSection()).read_bytes() == BODY
    assert _error(f"{base}/uri?to=ftp://127.0.0.1/m", target, OtaSection()) == (
        "redirect to a ftp: URL refused (only http:// and https://)")
    requests.clear()
    assert _error(f"{base}/loop", target, OtaSection()) == "more than 5 redirects (ota.max_redirects)"
    assert requests == ["/loop"] * 6


# --------------------------------------------------------------------------- https and timeouts


def test_https_against_the_configured_trust_store(tmp_path: Path, https: tuple[str, list[str]],
                                                  server: tuple[str, list[str]]) -> None:
    """Downloads and redirects over https://, to and from http:// (never down to it)."""
    base, _ = https
    plain, plain_requests = server
    target = tmp_path / "dl.bundle"
    assert download(f"{base}/good", target, len(BODY), SHA, OtaSection()).read_bytes() == BODY
    assert download(f"{base}/redirect?to={base}/good", target, len(BODY), SHA, OtaSection()).read_bytes() == BODY
    assert download(f"{plain}/redirect?to={base}/good", target, len(BODY), SHA, OtaSection()).read_bytes() == BODY
    for code in (302, 308):
        assert _error(f"{base}/redirect?code={code}&to={plain}/good", target, OtaSection()) == (
            "redirect from https:// to http:// refused")
    assert "/good" not in plain_requests  # nothing went out in clear text


@pytest.mark.parametrize(("scheme", "reason"), [("http", "timed out"), ("https", "The read operation timed out")])
def test_reads_time_out(tmp_path: Path, request: pytest.FixtureRequest, scheme: str, reason: str) -> None:
    """The read timeout reaches the connection, plain or TLS (the deadline is far away)."""
    base, _ = request.getfixturevalue("server" if scheme == "http" else "https")
    limits = OtaSection(read_timeout_s=0.5, download_timeout_s=HANG_S / 3)
    assert _error(f"{base}/silent", tmp_path / "dl", limits) == f"download failed: {reason}"


def test_https_verifies_even_if_the_process_default_does_not(tmp_path: Path, pki: Pki,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Some library in the process may switch http.client's default context to an unverified one
    (``ssl._create_default_https_context``, what PYTHONHTTPSVERIFY=0 does on some distributions):
    the download keeps verifying against the trust store, which here lacks the server's CA."""
    monkeypatch.setattr(ssl, "_create_default_https_context", ssl._create_unverified_context)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    with _serve(pki.server) as (base, _):
        reason = _error(f"{base}/good", tmp_path / "dl", OtaSection())
    assert reason.startswith("download failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                             "unable to get local issuer certificate"), reason


# --------------------------------------------------------------------------- errors


def test_failures_say_why(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, _ = server
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = tmp_path / "dl"
    assert _error(f"http://127.0.0.1:{port}/m", target, OtaSection()) == "download failed: Connection refused"
    assert _error(f"{base}/chunk-cut", target, OtaSection()) == (
        "download failed: the server broke off the transfer (IncompleteRead)")
    assert _error("http://[::1/m", target, OtaSection()) == "download failed: Invalid IPv6 URL"


def test_the_request_names_the_agent(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, _ = server
    agent = b"edge-agent-ota"
    assert download(f"{base}/ua", tmp_path / "ua", len(agent), hashlib.sha256(agent).hexdigest()).read_bytes() == agent


def test_a_body_far_larger_than_announced_is_not_read_to_the_end(tmp_path: Path,
                                                                 server: tuple[str, list[str]]) -> None:
    """Without Content-Length the size is checked while reading: the download stops soon after
    ``size`` bytes and closes the connection, so the server cannot send its 64 MiB."""
    base, requests = server
    target = tmp_path / "dl"
    assert _error(f"{base}/huge", target, OtaSection()) == (
        f"download is larger than the expected {len(BODY)} bytes")
    waited = threading.Event()
    for _ in range(int(HANG_S / 0.05)):  # bounds a hang only
        if any(r.startswith("/huge: ") for r in requests) or waited.wait(0.05):
            break
    assert requests[-1] == "/huge: broken off"


def test_free_space_for_three_times_the_size(tmp_path: Path) -> None:
    """The download, its copy into the store and the store's previous model: three times the size
    (plus the margin) must be free where the download goes, else nothing is fetched."""
    root = tmp_path / "models"
    root.mkdir()
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk, "24m"):
        free = shutil.disk_usage(disk).free
        size = (free - FREE_SPACE_MARGIN) // 3  # fits three times, not four
        assert 4 * size + FREE_SPACE_MARGIN > free
        data = os.urandom(size + 1)
        (root / "m.bundle").write_bytes(data[:size])
        (root / "big.bundle").write_bytes(data)
        limits = OtaSection(file_root=root)
        fits = download((root / "m.bundle").as_uri(), disk / "m.bundle", size,
                        hashlib.sha256(data[:size]).hexdigest(), limits)
        assert fits.read_bytes() == data[:size]
        fits.unlink()
        needed = 3 * (size + 1) + FREE_SPACE_MARGIN
        assert _error_sized((root / "big.bundle").as_uri(), disk / "big.bundle", data, limits) == (
            f"not enough free space in {disk}: {free // 1_048_576} MiB free, {needed // 1_048_576} MiB needed")


def _error_sized(url: str, target: Path, data: bytes, limits: OtaSection) -> str:
    with pytest.raises(DownloadError) as info:
        download(url, target, len(data), hashlib.sha256(data).hexdigest(), limits)
    assert not target.exists()
    return str(info.value)


# --------------------------------------------------------------------------- file://


def test_file_urls_need_a_configured_root(tmp_path: Path) -> None:
    source = tmp_path / "m.bundle"
    source.write_bytes(BODY)
    assert file_url_problem(source.as_uri(), None) == FILE_REFUSED
    assert _error(source.as_uri(), tmp_path / "dl", OtaSection()) == FILE_REFUSED
    assert file_url_problem("https://h/m.bundle", None) is None


def test_file_urls_under_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "m.bundle").write_bytes(BODY)
    (tmp_path / "secret").write_bytes(BODY)
    os.symlink(tmp_path / "secret", root / "link.bundle")  # inside as written, outside once resolved
    os.symlink(root, tmp_path / "alias")  # the root reached through a symlink of its own
    limits = OtaSection(file_root=root)
    target = tmp_path / "dl.bundle"
    assert download((root / "m.bundle").as_uri(), target, len(BODY), SHA, limits).read_bytes() == BODY
    assert download((root / "m.bundle").as_uri(), target, len(BODY), SHA,
                    OtaSection(file_root=tmp_path / "alias")).read_bytes() == BODY
    assert _error("file:///etc/shadow", target, limits) == f"file:// path /etc/shadow is outside ota.file_root {root}"
    assert _error(f"file://{root}/../secret", target, limits) == (
        f"file:// path {tmp_path}/secret is outside ota.file_root {root}")
    assert _error((root / "link.bundle").as_uri(), target, limits) == (
        f"file:// path {root}/link.bundle leads outside ota.file_root {root}")
    assert _error((root / "missing").as_uri(), target, limits) == "download failed: No such file or directory"


def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: it is opened non-blocking and refused."""
    fifo = tmp_path / "pipe.bundle"
    os.mkfifo(fifo)
    (tmp_path / "dir.bundle").mkdir()
    limits = OtaSection(file_root=tmp_path)
    assert _error(fifo.as_uri(), tmp_path / "dl", limits) == f"file:// path {fifo} is not a regular file"
    assert _error((tmp_path / "dir.bundle").as_uri(), tmp_path / "dl", limits) == (
        f"file:// path {tmp_path}/dir.bundle is not a regular file")


# --------------------------------------------------------------------------- configuration


def test_the_ota_section_and_its_limits() -> None:
    config = AgentConfig.model_validate({"ota": {"download_timeout_s": 2, "file_root": "/srv/models"}})
    assert config.ota == OtaSection(download_timeout_s=2.0, read_timeout_s=30.0, max_redirects=5,
                                    file_root=Path("/srv/models"))
    assert AgentConfig.model_validate({}).ota.file_root is None  # file:// refused by default
    assert AgentConfig.model_validate({}).ota.download_timeout_s == 600.0
    from edge_agent.config import load_config

    with pytest.raises(ConfigError, match=r"invalid 'ota.download_timeout_s': must be > 0"):
        load_config(None, environ={"EDGE_AGENT_OTA__DOWNLOAD_TIMEOUT_S": "0"})
    with pytest.raises(ConfigError, match=r"unknown setting 'ota.deadline'"):
        load_config(None, environ={"EDGE_AGENT_OTA__DEADLINE": "1"})
