"""A process that cannot read /proc/cpuinfo gets LiteRT without XNNPACK: the agent says so, once.

systemd's ProcSubset=pid mounts /proc without /proc/cpuinfo; `make device-check` found the
shipped unit doing that (inference about 100x slower in the box). Here a real proc mount with
``subset=pid`` in a private mount and PID namespace reproduces it for a real interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.runtimes.litert import CPUINFO_WARNING
from tests.tflite_builders import colours_model

_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from edge_agent.runtimes import create_runtime
model = open(sys.argv[1], "rb").read()
for _ in range(2):
    create_runtime("litert", model)
print("created")
"""


def _run(tmp_path: Path, subset_pid: bool) -> subprocess.CompletedProcess[str]:
    model = tmp_path / "m.tflite"
    model.write_bytes(colours_model())
    mount = "mount -t proc -o subset=pid proc /proc && " if subset_pid else "mount -t proc proc /proc && "
    root = str(Path(__file__).resolve().parents[3])
    return subprocess.run(["unshare", "-mpf", "sh", "-c", f'{mount}exec "$@"', "sh", sys.executable, "-c", _SCRIPT,
                           str(model)], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": root})


def _namespaces_work() -> bool:
    """Private mount and PID namespaces can be made here (not in pi-check's chroot under qemu)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-mpf", "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs root and private mount/PID namespaces (unshare -mpf)")
def test_hidden_cpuinfo_is_reported_once(tmp_path: Path) -> None:
    hidden = _run(tmp_path, subset_pid=True)
    assert hidden.returncode == 0 and "created" in hidden.stdout, hidden.stderr
    assert hidden.stderr.count(CPUINFO_WARNING) == 1, hidden.stderr  # two interpreters, one warning
    visible = _run(tmp_path, subset_pid=False)
    assert visible.returncode == 0 and "created" in visible.stdout, visible.stderr
    assert CPUINFO_WARNING not in visible.stderr and "Error in cpuinfo" not in visible.stderr
