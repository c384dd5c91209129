"""Host-side artefacts: the digits bundle and test video (converted here, as a user would on a PC),
and the host's own run of the agent on that video, to compare the Pi's with."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tools.pi_check.cache import digest, tree_digest
from tools.pi_check.steps import StepError

BUNDLE = "digits.bundle"
VIDEO = "digits.avi"
_VIDEO_SCRIPT = ("import sys; from pathlib import Path; from deploy.demo import render_test_video; "
                 "render_test_video(Path(sys.argv[1]))")


def bundle_key(project: Path) -> str:
    """Rebuilt when the converter, the code it shares with the agent or TensorFlow changes."""
    try:
        tf = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf = "none"
    shared = ["converter/**/*.py", "edge_agent/model/**/*.py", "edge_agent/runtimes/**/*.py",
              "edge_agent/tasks/**/*.py", "edge_agent/util/**/*.py", "edge_agent/*.py"]
    return digest([tree_digest(project, shared), tf])


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def _python(project: Path, args: list[str], what: str, timeout: float = 900) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(project),
                          cwd=str(project), timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise StepError(f"{what} failed on the host (exit {proc.returncode}): {tail}")
    return proc.stdout


def build_bundle_and_video(project: Path, out: Path) -> None:
    """Train the converter's digits example, convert it to an int8 bundle, render the test video."""
    model = out / "digits"
    _python(project, ["-m", "converter.examples", "digits", "--out", str(model)], "training the digits model")
    _python(project, ["-m", "converter", str(model / "digits.keras"), "--calibration", str(model / "train"),
                      "--validation", str(model / "test"), "--output", str(out / BUNDLE), "--name", "digits",
                      "--version", "1.0.0"], "edge-convert")
    _python(project, ["-c", _VIDEO_SCRIPT, str(out / VIDEO)], "rendering the test video")


DEVICE_ID = "pi-check"


def run_agent_on_host(project: Path, bundle: Path, video: Path, state: Path) -> str:
    """stdout of ``edge-agent run --events every`` on the host (this checkout's code)."""
    return _python(project, ["-m", "edge_agent", *agent_run_args(str(bundle), str(video), str(state))],
                   "edge-agent run")


def agent_run_args(bundle: str, video: str, state: str) -> list[str]:
    """The same ``run`` arguments on both sides.

    The device id is given: the default one comes from the host name and /etc/machine-id, which the
    host and the chroot do not share (a debootstrap rootfs has none).
    """
    return ["run", "--bundle", bundle, "--source", video, "--events", "every", "--state-dir", state,
            "--device-id", DEVICE_ID]
