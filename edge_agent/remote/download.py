"""Fetching a model bundle for an over-the-air update (:mod:`.ota`): URL, size, sha256, free space.

``https://`` downloads verify the server certificate and host name against the system
trust store; a private CA is trusted through OpenSSL's ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` environment variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeError, NoSpaceError
from edge_agent.util.fs import check_free_space

DOWNLOAD_TIMEOUT_S = 30.0


class DownloadError(EdgeError):
    """A download failed: transfer, size, sha256 or free space (the reason goes into the ack)."""


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded (http://, https:// or an absolute local file://), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):
        return "url must be http://, https:// or file://"
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        return "file:// URLs need an absolute local path"
    if parts.scheme != "file" and not parts.hostname:
        return "url has no host"
    return None


def download(url: str, target: Path, size: int, sha256: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` into ``target`` with size, hash and free-space checks; fsynced.

    Raises:
        DownloadError: network/file error, size or sha256 mismatch, not enough space.
    """
    try:
        check_free_space(target.parent, 3 * size)
    except NoSpaceError as exc:
        raise DownloadError(str(exc)) from exc
    digest = hashlib.sha256()
    received = 0
    try:
        with _open_url(url, timeout_s) as (stream, announced):
            if announced is not None and announced != size:
                raise DownloadError(f"server announces {announced} bytes, expected {size}")
            with target.open("wb") as out:
                while block := stream.read(1 << 16):
                    received += len(block)
                    if received > size:
                        raise DownloadError(f"download is larger than the expected {size} bytes")
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
    except DownloadError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError are OSErrors
        target.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DownloadError(f"download failed: {reason}") from exc
    if received != size:
        target.unlink(missing_ok=True)
        raise DownloadError(f"download truncated: {received} of {size} bytes")
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")
    return target


@contextlib.contextmanager
def _open_url(url: str, timeout_s: float) -> Any:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.parse.unquote(parts.path))
        with path.open("rb") as handle:
            yield handle, path.stat().st_size
        return
    import http.client
    from urllib.request import Request, urlopen

    context = ssl.create_default_context() if parts.scheme == "https" else None
    request = Request(url, headers={"User-Agent": "edge-agent-ota"})
    try:
        with urlopen(request, timeout=timeout_s, context=context) as response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
    except http.client.HTTPException as exc:
        # Not an OSError: a body cut inside a chunk (IncompleteRead), a bad status line …
        raise OSError(f"the server broke off the transfer ({type(exc).__name__})") from exc
