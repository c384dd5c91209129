"""Session fixtures: a real sshd standing in for a device, plus keys and small test bundles.

``sshd`` runs on a free 127.0.0.1 port with a throw-away host key and a single
key-only login (the current user; root in CI) through an AuthorizedKeysFile in
a temp directory. ``StrictModes no`` and ``UsePAM no`` keep it independent of
the host's configuration; no system sshd is needed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.model.bundle import sign_bundle
from edge_agent.model.keys import generate_keypair, load_private_key
from edge_agent.store import layout as store_layout
from tests import deploy_helpers

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class SshDevice:
    """Where and how to reach the fake device."""

    host: str  # user@127.0.0.1
    port: int
    identity: Path
    known_hosts: Path
    agent_path: Path

    def ssh_args(self, with_host: bool = True) -> list[str]:
        host = ["--host", self.host, "--port", str(self.port)] if with_host else []
        return [*host, "--identity", str(self.identity), "--known-hosts", str(self.known_hosts),
                "--agent-path", str(self.agent_path)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)


def _start_sshd(base: Path, authorized: Path, extra_config: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """A key-only sshd on a free 127.0.0.1 port with a throw-away host key, ready to log in."""
    host_key = base / "host_ed25519"
    _keygen(host_key)
    port = _free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {base / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding no\n"
        "X11Forwarding no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        f"AllowUsers {user}\nMaxStartups 50\nMaxSessions 50\n{extra_config}"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation directory
    with (base / "sshd.log").open("wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, port
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(base / 'sshd.log').read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("sshd did not listen within 10 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _need_openssh() -> None:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("openssh server/client not installed")


@pytest.fixture(scope="session")
def sshd_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshDevice]:
    _need_openssh()
    base = tmp_path_factory.mktemp("sshd")
    client_key = base / "client_ed25519"
    _keygen(client_key)
    authorized = base / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o600)
    proc, port = _start_sshd(base, authorized)
    user = pwd.getpwuid(os.getuid()).pw_name
    yield SshDevice(
        host=f"{user}@127.0.0.1", port=port, identity=client_key,
        known_hosts=base / "known_hosts", agent_path=VENV_BIN / "edge-agent",
    )
    _stop(proc)


@dataclass(frozen=True)
class HostileDevice:
    """A second sshd whose forced command (tests/hostile_device.py) plays a misbehaving device.

    It logs in with the same key as :func:`sshd_device`, runs uploads and plain shell commands
    (``true``, ``rm``) as asked, but answers every ``edge-agent`` command as :meth:`behave` says.
    """

    host: str  # user@127.0.0.1:PORT
    port: int
    mode_file: Path

    def behave(self, mode: str) -> None:
        self.mode_file.write_text(mode)


@pytest.fixture(scope="session")
def hostile_device(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshDevice) -> Iterator[HostileDevice]:
    base = tmp_path_factory.mktemp("hostile-sshd")
    mode_file = base / "mode"
    mode_file.write_text("honest")
    script = Path(__file__).with_name("hostile_device.py")
    forced = f"{sys.executable} {script} {mode_file}"
    authorized = sshd_device.identity.with_name("authorized_keys")  # the same key logs in to both
    proc, port = _start_sshd(base, authorized, f"ForceCommand {forced}\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    yield HostileDevice(host=f"{user}@127.0.0.1:{port}", port=port, mode_file=mode_file)
    _stop(proc)


# --------------------------------------------------------------------------- keys and bundles


@dataclass(frozen=True)
class DeployKeys:
    private: Path
    public: Path


@dataclass(frozen=True)
class BundleSet:
    """Signed test bundles: good, good_v2 (same input), and every kind of bad one."""

    good: Path
    good_v2: Path
    wrong_input: Path
    too_slow: Path
    tampered: Path
    truncated: Path
    unsigned: Path
    wrong_signature: Path
    from_digits: bool


@pytest.fixture(scope="session")
def deploy_keys(tmp_path_factory: pytest.TempPathFactory) -> DeployKeys:
    base = tmp_path_factory.mktemp("deploy-keys")
    keys = DeployKeys(private=base / "signing.key", public=base / "signing.pub")
    generate_keypair(keys.private, keys.public)
    return keys


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real float TFLite models: 'a' and 'a2' (16x16x1), 'b' (8x8x3, a different input)."""
    base = tmp_path_factory.mktemp("tiny-models")
    specs: list[dict[str, object]] = [
        {"shape": [1, 16, 16, 1], "seed": 1, "out": str(base / "a.tflite"), "classes": 10},
        {"shape": [1, 16, 16, 1], "seed": 2, "out": str(base / "a2.tflite"), "classes": 10},
        {"shape": [1, 8, 8, 3], "seed": 3, "out": str(base / "b.tflite"), "classes": 4},
    ]
    deploy_helpers.build_tiny_models(specs)
    return {name: (base / f"{name}.tflite").read_bytes() for name in ("a", "a2", "b")}


@pytest.fixture(scope="session")
def test_bundles(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    deploy_keys: DeployKeys,
    tiny_models: dict[str, bytes],
) -> BundleSet:
    """The converter's digits bundle when available (re-signed with our key), else a tiny model."""
    base = tmp_path_factory.mktemp("bundles")
    key = load_private_key(deploy_keys.private)
    good = base / "good.bundle"
    from_digits = False
    if os.environ.get("EDGE_TEST_TINY_ONLY") != "1":
        with contextlib.suppress(pytest.FixtureLookupError):
            digits = Path(request.getfixturevalue("digits_bundle"))
            sign_bundle(digits, key, output=good)
            from_digits = True
    if not from_digits:
        deploy_helpers.bundle_from_model(good, tiny_models["a"], name="tiny", version="1.0.0",
                                         sign_key=key)
    version = deploy_helpers.read_bundle(good, require_signature=False).manifest.version
    good_v2 = deploy_helpers.repack(good, base / "good_v2.bundle", key, version=f"{version}.1")
    wrong_input = deploy_helpers.bundle_from_model(
        base / "wrong_input.bundle", tiny_models["b"], name="other", version="1.0.0", sign_key=key
    )
    too_slow = deploy_helpers.repack(good, base / "too_slow.bundle", key, version=f"{version}.2",
                                     latency_budget_ms=0.0001)
    return BundleSet(
        good=good,
        good_v2=good_v2,
        wrong_input=wrong_input,
        too_slow=too_slow,
        tampered=deploy_helpers.tampered(good_v2, base / "tampered.bundle"),
        truncated=deploy_helpers.truncated(good_v2, base / "truncated.bundle"),
        unsigned=deploy_helpers.unsigned(good_v2, base / "unsigned.bundle"),
        wrong_signature=deploy_helpers.wrongly_signed(good_v2, base / "wrong_sig.bundle"),
        from_digits=from_digits,
    )


@pytest.fixture
def device_state(tmp_path: Path, deploy_keys: DeployKeys) -> Path:
    """An empty model store (``device-state``) that pins the deploy key, as a provisioned device's."""
    state = tmp_path / "device-state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / store_layout.TRUSTED_KEY)
    return state
