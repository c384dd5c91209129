"""Fetching a model bundle for an over-the-air update (:mod:`.ota`): URL, size, sha256, free space,
an overall deadline, and an :class:`Abort` another thread can pull.

``https://`` downloads verify the server certificate and host name against the system
trust store; a private CA is trusted through OpenSSL's ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` environment variables. The limits come from the ``[ota]`` config section
(docs/agent.md): the deadline covers the whole download (a server trickling one byte per
read timeout is cut off), redirects go only to http:// or https:// (never from https:// to
http://), and ``file://`` URLs name regular files under ``ota.file_root`` or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import ssl
import stat
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edge_agent.config import OtaSection
from edge_agent.errors import EdgeError, NoSpaceError
from edge_agent.util.fs import check_free_space

BLOCK = 1 << 16
FILE_REFUSED = "file:// URLs are refused: no [ota] file_root is configured on the device"


class DownloadError(EdgeError):
    """A download failed: transfer, size, sha256 or free space (the reason goes into the ack)."""


class Abort:
    """Stops a running download from another thread (a rollback command, the deadline).

    The first reason given wins. Cancelling shuts the download's sockets down, so a read
    blocked on a silent or trickling server returns at once instead of after its timeout.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._sockets: list[socket.socket] = []

    @property
    def reason(self) -> str | None:
        """Why the download was stopped, or None while it may go on."""
        return self._reason

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down on :meth:`cancel` (at once when already cancelled)."""
        with self._lock:
            self._sockets.append(sock)
            cancelled = self._reason is not None
        if cancelled:
            _shut(sock)

    def check(self) -> None:
        """Raise DownloadError with the reason once cancelled."""
        if self._reason is not None:
            raise DownloadError(self._reason)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded (http://, https:// or an absolute local file://), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a port that is no number in 0..65535 raises
    except ValueError as exc:
        return f"url is malformed: {exc}"
    if parts.scheme not in ("http", "https", "file"):
        return "url must be http://, https:// or file://"
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        return "file:// URLs need an absolute local path"
    if parts.scheme != "file" and not parts.hostname:
        return "url has no host"
    return None


def file_url_problem(url: str, root: Path | None) -> str | None:
    """Why a ``file://`` ``url`` is refused before anything is opened (no ``file_root``, or a path
    outside it as written), or None; other URLs pass. Symlinks are checked when the file is opened."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file":
        return None
    if root is None:
        return FILE_REFUSED
    path = Path(os.path.normpath(urllib.parse.unquote(parts.path)))
    if not (path.is_relative_to(os.path.normpath(os.path.abspath(root)))
            or path.is_relative_to(os.path.realpath(root))):  # the root as configured or resolved
        return f"file:// path {path} is outside ota.file_root {root}"
    return None


def download(url: str, target: Path, size: int, sha256: str, limits: OtaSection | None = None,
             abort: Abort | None = None) -> Path:
    """Fetch ``url`` into ``target`` with size, hash and free-space checks; fsynced.

    ``limits`` (default: the ``[ota]`` defaults) gives the deadline, the read timeout, the
    redirects and the ``file://`` root; ``abort`` lets another thread stop the download.

    Raises:
        DownloadError: network/file error, deadline, cancelled, size or sha256 mismatch, not enough space.
    """
    limits = limits or OtaSection()
    abort = abort or Abort()
    try:
        check_free_space(target.parent, 3 * size)
    except NoSpaceError as exc:
        raise DownloadError(str(exc)) from exc
    timer = threading.Timer(limits.download_timeout_s, abort.cancel, (
        f"deadline: the download did not finish within {limits.download_timeout_s:g} s (ota.download_timeout_s)",))
    timer.daemon = True
    timer.start()
    try:
        digest, received = _fetch(url, target, size, limits, abort)
    except DownloadError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError are OSErrors
        target.unlink(missing_ok=True)
        abort.check()  # a read broken off by the deadline or a rollback says so
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        if isinstance(reason, OSError):  # URLError wraps the socket's error: "Connection refused"
            reason = reason.strerror or reason
        raise DownloadError(f"download failed: {reason}") from exc
    finally:
        timer.cancel()
    if received != size:
        target.unlink(missing_ok=True)
        raise DownloadError(f"download truncated: {received} of {size} bytes")
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")
    return target


def _fetch(url: str, target: Path, size: int, limits: OtaSection, abort: Abort) -> tuple[Any, int]:
    """Copy ``url`` into ``target`` block by block; (sha256 object, bytes received)."""
    digest = hashlib.sha256()
    received = 0
    with _open_url(url, limits, abort) as (stream, announced):
        if announced is not None and announced != size:
            raise DownloadError(f"server announces {announced} bytes, expected {size}")
        with target.open("wb") as out:
            while True:
                abort.check()
                block = stream.read1(BLOCK)  # one recv at most: a trickle cannot hold a 64 KiB read
                if not block:
                    break
                received += len(block)
                if received > size:
                    raise DownloadError(f"download is larger than the expected {size} bytes")
                digest.update(block)
                out.write(block)
            abort.check()  # a socket shut down by the deadline reads as the end of the data
            out.flush()
            os.fsync(out.fileno())
    return digest, received


@contextlib.contextmanager
def _open_url(url: str, limits: OtaSection, abort: Abort) -> Iterator[tuple[Any, int | None]]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        with _open_local(parts, limits.file_root) as (handle, length):
            yield handle, length
        return
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HttpHandler(abort), _HttpsHandler(abort),
                    _RedirectHandler(limits.max_redirects), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": "edge-agent-ota"})
    timeout = min(limits.read_timeout_s, limits.download_timeout_s)
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
    except http.client.HTTPException as exc:
        # Not an OSError: a body cut inside a chunk (IncompleteRead), a bad status line …
        raise OSError(f"the server broke off the transfer ({type(exc).__name__})") from exc


@contextlib.contextmanager
def _open_local(parts: urllib.parse.SplitResult, root: Path | None) -> Iterator[tuple[IO[bytes], int]]:
    """A regular file under ``root`` (symlinks resolved), opened without blocking on a FIFO."""
    url = urllib.parse.urlunsplit(parts)
    problem = file_url_problem(url, root)
    if problem is not None:
        raise DownloadError(problem)
    assert root is not None  # file_url_problem refuses file:// without a root
    path = os.path.normpath(urllib.parse.unquote(parts.path))
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(os.path.realpath(root)):
        raise DownloadError(f"file:// path {path} leads outside ota.file_root {root}")
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer; O_NOFOLLOW: no link swapped in since.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DownloadError(f"file:// path {path} is not a regular file")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle, info.st_size


class _WatchedConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket the download's :class:`Abort` can shut down."""

    abort: Abort

    def connect(self) -> None:
        super().connect()
        self.abort.watch(self.sock)


class _WatchedHttpsConnection(http.client.HTTPSConnection, _WatchedConnection):
    """HTTPS: the plain socket is watched (via ``_WatchedConnection.connect``) before the TLS handshake."""


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, abort: Abort) -> None:
        super().__init__()
        self._abort = abort

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)

    def _connection(self, host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = _WatchedConnection(host, **kwargs)
        conn.abort = self._abort
        return conn


class _HttpsHandler(urllib.request.HTTPSHandler):
    """Verifies the certificate and host name against the system trust store (also after a redirect)."""

    def __init__(self, abort: Abort) -> None:
        super().__init__()
        self._abort = abort

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=ssl.create_default_context())

    def _connection(self, host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = _WatchedHttpsConnection(host, **kwargs)
        conn.abort = self._abort
        return conn


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most ``limit`` redirects, only to http:// or https://, never from https:// to http://."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._left = limit
        self._limit = limit
        # urllib's own loop checks answer in several lines: ours come first.
        self.max_redirections = self.max_repeats = limit + 1  # type: ignore[misc]  # per opener, on purpose

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            problem = self._problem(req.full_url, urllib.parse.urljoin(req.full_url, location))
            if problem is not None:
                fp.close()
                raise DownloadError(problem)
            self._left -= 1
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def _problem(self, old_url: str, new_url: str) -> str | None:
        old, new = urllib.parse.urlsplit(old_url).scheme, urllib.parse.urlsplit(new_url).scheme
        if new not in ("http", "https"):
            return f"redirect to a {new}: URL refused (only http:// and https://)"
        if old == "https" and new == "http":
            return "redirect from https:// to http:// refused"
        if self._left <= 0:
            return f"more than {self._limit} redirects (ota.max_redirects)"
        return None
