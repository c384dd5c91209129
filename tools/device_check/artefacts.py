"""What the operator brings: bundles converted on the host, keys, the wheelhouse and the configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.pi_check.host import BUNDLE, VIDEO, _env, _python, build_bundle_and_video
from tools.pi_check.steps import StepError

V2_BUNDLE = "digits-1.1.0.bundle"


def reuse_pi_artefacts(pi_artefacts: Path | None, out: Path) -> bool:
    """Copy pi-check's bundle, video and trained model into ``out`` if all three are there."""
    if pi_artefacts is None or not all((pi_artefacts / name).exists() for name in (BUNDLE, VIDEO, "digits")):
        return False
    shutil.copytree(pi_artefacts, out, dirs_exist_ok=True)
    return True


def build_bundles(project: Path, out: Path, pi_artefacts: Path | None = None) -> str:
    """digits 1.0.0 and the test video (as pi-check makes them), and digits 1.1.0 from the same model.

    ``pi_artefacts`` is pi-check's cached folder of the same key (same converter, same TensorFlow),
    when ``make pi-check`` ran first on this machine: it is copied instead of training again.
    Returns what was done, for the step's note.
    """
    if reuse_pi_artefacts(pi_artefacts, out):
        how = "1.0.0 from pi-check's cache, 1.1.0 converted"
    else:
        build_bundle_and_video(project, out)
        how = "trained and converted"
    model = out / "digits"
    _python(project, ["-m", "converter", str(model / "digits.keras"), "--calibration", str(model / "train"),
                      "--validation", str(model / "test"), "--output", str(out / V2_BUNDLE), "--name", "digits",
                      "--version", "1.1.0"], "edge-convert (1.1.0)")
    return how


@dataclass(frozen=True)
class Operator:
    """The operator's files: SSH key, signing key pair, signed bundles, video."""

    dir: Path
    project: Path

    @property
    def ssh_key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def signing_key(self) -> Path:
        return self.dir / "signing.pem"

    @property
    def public_key(self) -> Path:
        return self.dir / "signing.pub"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def tool(self, name: str, *args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``edge-deploy`` / ``edge-fleet`` as the operator runs them (this checkout's code)."""
        module = {"edge-deploy": "deploy.cli", "edge-fleet": "deploy.fleet"}[name]
        return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                              env=_env(self.project), cwd=str(self.dir), timeout=timeout, check=False)

    def must(self, name: str, *args: str | Path, timeout: float = 900) -> str:
        proc = self.tool(name, *args, timeout=timeout)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-6:])
            raise StepError(f"{name} {args[0]} failed (exit {proc.returncode}): {tail}")
        return proc.stdout + proc.stderr

    def set_up(self, artefacts: Path) -> dict[str, Path]:
        """Keys, and the two bundles signed with the fleet's key; returns the signed bundles by version."""
        self.dir.mkdir(parents=True, exist_ok=True)
        keygen = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "device-check", "-f",
                                 str(self.ssh_key)], capture_output=True, text=True, check=False)
        if keygen.returncode != 0:
            raise StepError(f"ssh-keygen failed: {keygen.stderr.strip()}")
        self.must("edge-deploy", "keygen", "--private", self.signing_key, "--public", self.public_key)
        bundles = {}
        for version, name in (("1.0.0", BUNDLE), ("1.1.0", V2_BUNDLE)):
            signed = self.dir / name
            self.must("edge-deploy", "sign", artefacts / name, "--key", self.signing_key, "--output", signed)
            bundles[version] = signed
        return bundles

    def ssh_args(self, port: int) -> list[str]:
        return ["--host", f"root@127.0.0.1:{port}", "--identity", str(self.ssh_key), "--known-hosts",
                str(self.known_hosts)]


def video(artefacts: Path) -> Path:
    return artefacts / VIDEO


def agent_config(device_id: str, broker_port: int, camera_url: str) -> str:
    """The device's config.toml: the camera, the host's broker, health every 2 s, every result."""
    return f"""# written by make device-check
device_id = "{device_id}"

[model]
public_key = "/etc/edge-agent/trusted.pub"
threads = 1
# This device's budget, not the converter host's: the box shares a busy CI machine.
latency_budget_ms = 1000

[source]
uri = "{camera_url}"
type = "stream"
fps = 10
read_timeout_s = 3

[events]
policy = "every"

[health]
interval_s = 2

[mqtt]
broker = "mqtt://127.0.0.1:{broker_port}"
keepalive = 5
reconnect_max_s = 2
"""
