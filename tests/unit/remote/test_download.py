"""Issue 11: a download has an overall deadline and can be aborted; redirects go only to http(s)
and never downgrade; ``file://`` names only regular files under ``ota.file_root``.

Real HTTP servers on 127.0.0.1 (one trickles its body, one never sends it), a real FIFO and
real symlinks. Hangs are bounded by joins with generous limits; nothing is timed.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edge_agent.config import AgentConfig, OtaSection
from edge_agent.errors import ConfigError
from edge_agent.remote.download import FILE_REFUSED, Abort, DownloadError, download, file_url_problem

HANG_S = 60.0  # bounds a hang only
BODY = bytes(range(256)) * 4
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/good`` the body; ``/trickle`` one byte per 0.2 s (far under the read timeout);
    ``/silent`` headers then nothing; ``/redirect?to=URL`` a 302 to URL."""

    protocol_version = "HTTP/1.1"
    stop: ClassVar[threading.Event]
    requests: ClassVar[list[str]]

    def do_GET(self) -> None:  # the http.server API
        self.requests.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in ("/good", "/trickle", "/silent"):
            self.send_error(404)
            return
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


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    handler = type("Handler", (_Handler,), {"stop": threading.Event(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    handler.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(HANG_S)


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


def test_an_abort_before_the_connection_is_made_stops_it_at_once(tmp_path: Path,
                                                                 server: tuple[str, list[str]]) -> None:
    base, _ = server
    abort = Abort()
    abort.cancel("cancelled: early")
    assert _error(f"{base}/good", tmp_path / "dl", OtaSection(), abort) == "cancelled: early"


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
