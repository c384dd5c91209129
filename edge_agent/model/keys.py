"""Ed25519 keys: the one reader of public keys (PEM, OpenSSH or raw/base64) and the key pair files.

Bundle signatures and signed commands use the same key formats; only the error a user
sees differs (a bad bundle key is a SignatureError, a bad command key a ConfigError).
cryptography costs ~8 MB RSS, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError, EdgeError, SignatureError
from edge_agent.util.fs import atomic_write

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519_RAW_BYTES = 32


def decode_public_key(data: bytes) -> object:
    """Decode a public key from PEM (SubjectPublicKeyInfo), OpenSSH, or 32 raw/base64 bytes.

    Returns the key object, which may be of another type than Ed25519 (callers check).

    Raises:
        ValueError: not a key in any of these formats.
        cryptography.exceptions.UnsupportedAlgorithm: an OpenSSL build without the algorithm.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if data.startswith(b"-----BEGIN"):
        return serialization.load_pem_public_key(data)
    if data.startswith(b"ssh-ed25519"):
        return serialization.load_ssh_public_key(data)
    raw = data if len(data) == ED25519_RAW_BYTES else base64.b64decode(data.strip(), validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def read_public_key(path: Path, error: type[EdgeError], what: str) -> Ed25519PublicKey:
    """Read an Ed25519 public key file (PEM, OpenSSH or raw); every failure is one ``error`` line.

    ``what`` names the key in the messages ("public key", "command public key").
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise error(f"{what} {path} not found") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        key = decode_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise error(f"{path} is not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise error(f"{path} is not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The key bundle signatures are verified with (errors: :class:`SignatureError`)."""
    return read_public_key(path, SignatureError, "public key")


def load_command_public_key(path: Path) -> Ed25519PublicKey:
    """The key pinned for signed commands, a setting of the agent (errors: :class:`ConfigError`)."""
    return read_public_key(path, ConfigError, "command public key")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (PEM, PKCS#8, unencrypted)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise SignatureError(f"signing key {path} not found; create one with `edge-deploy keygen`") from exc
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair; the private key file is created mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem, mode=0o644)
