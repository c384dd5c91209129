"""edge-deploy against a misbehaving device: a real sshd whose forced command answers badly.

Each case runs one ``push``/``status`` over two hosts, the honest device (tests/fixtures_ssh.py
``sshd_device``) and the hostile one (``hostile_device``): the hostile host gets one failed line,
the honest one is still installed and reported, the exit code is 1, and nothing the device sent
reaches the terminal raw.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.store import layout as store_layout
from edge_agent.util.fs import sha256_file
from tests.fixtures_ssh import BundleSet, HostileDevice, SshDevice

pytestmark = pytest.mark.integration

# Runs edge-deploy in-process and reports its peak RSS (KiB) on the last line of stderr.
_MEASURED = (
    "import sys, tracemalloc\n"
    "from deploy.cli import main\n"
    "tracemalloc.start()\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "finally:\n"
    "    print(tracemalloc.get_traced_memory()[1], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # anything but \t and \n


def _deploy(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """edge-deploy's result and the peak of the memory Python allocated in it, in MiB (not RSS: the
    shared libraries' file pages in RSS vary with the page cache by more than 100 MiB here)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True,
                          timeout=240, check=False)
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].isdigit(), proc.stderr[-2000:]
    return proc, int(lines[-1]) // (1024 * 1024)


def _two_hosts(honest: SshDevice, hostile: HostileDevice) -> list[str]:
    return ["--host", f"{honest.host}:{honest.port}", "--host", hostile.host, *honest.ssh_args(with_host=False)]


def _table_rows(out: str, honest: SshDevice, hostile: HostileDevice) -> tuple[str, str]:
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["HOST", "RESULT", "SUMMARY"], out
    assert len(lines) == 3, out  # one line per host, whatever the device sent
    good = next(line for line in lines if line.startswith(f"{honest.host}:{honest.port} "))
    bad = next(line for line in lines if line.startswith(f"{hostile.host} "))
    return good, bad


_ESC = r"\x1b]2;owned\x07\x1b[2J\x1b[31m"  # tests/hostile_device.py's escape sequences, escaped
HOSTILE = {
    # mode: what the hostile host's line says after push, and after status (None: status is ok)
    "nested": ("install failed  invalid answer from the device: JSON nested more than 16 deep",
               "status failed  invalid answer from the device: JSON nested more than 16 deep"),
    "active-x": ("invalid answer from the device: active: must be a table, got string",
                 "invalid answer from the device: active: must be a table, got string"),
    "escapes": (f"refused at {_ESC}; active evil 1{_ESC} (abababababab)  {_ESC}wiped",
                None),
    "escapes-stderr": (f"install failed  edge-agent: {_ESC}bad\\rline",
                       f"status failed  edge-agent: {_ESC}bad\\rline"),
    "huge": ("install failed  answered more than 1 MiB on stdout; stopped reading",
             "status failed  answered more than 1 MiB on stdout; stopped reading"),
}


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_a_hostile_answer_fails_that_host_only(
    sshd_device: SshDevice, hostile_device: HostileDevice, device_state: Path, test_bundles: BundleSet,
    mode: str,
) -> None:
    hostile_device.behave(mode)
    pushed, status = HOSTILE[mode]
    hosts = _two_hosts(sshd_device, hostile_device)
    proc, peak_mib = _deploy("push", str(test_bundles.good), *hosts, "--state-dir", str(device_state))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    good, bad = _table_rows(proc.stdout, sshd_device, hostile_device)
    assert " ok " in good and "installed; active" in good, good
    assert store_layout.active_model(device_state).sha256 == sha256_file(test_bundles.good)  # type: ignore[union-attr]
    assert "FAILED" in bad and re.sub(" +", " ", pushed) in re.sub(" +", " ", bad), bad
    assert not _CONTROL.search(proc.stdout), proc.stdout
    assert peak_mib < 16, peak_mib  # a 50 MB answer was held whole (RSS 320 MiB; 400 MB: 2.3 GiB)

    proc, peak_mib = _deploy("status", *hosts, "--state-dir", str(device_state))
    assert proc.returncode == (0 if status is None else 1), proc.stdout + proc.stderr
    good, bad = _table_rows(proc.stdout, sshd_device, hostile_device)
    assert " ok " in good and "active " in good and "active none" not in good, proc.stdout
    if status is None:
        assert " ok " in bad and f"active evil 1{_ESC} (abababababab)" in bad, bad
    else:
        assert "FAILED" in bad and re.sub(" +", " ", status) in re.sub(" +", " ", bad), bad
    assert not _CONTROL.search(proc.stdout), proc.stdout
    assert peak_mib < 16, peak_mib

    proc, _ = _deploy("status", *hosts, "--state-dir", str(device_state), "--json")
    rows = json.loads(proc.stdout)
    assert [row["ok"] for row in rows] == [True, status is None], rows
    assert not _CONTROL.search(proc.stdout), proc.stdout


def test_an_install_the_device_never_finished_leaves_no_upload_behind(
    sshd_device: SshDevice, hostile_device: HostileDevice, device_state: Path, test_bundles: BundleSet,
    tmp_path: Path,
) -> None:
    """The agent dies after the upload without running our ``rm``; the honest host is still installed."""
    hostile_device.behave("crash")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    proc, _ = _deploy("push", str(test_bundles.good), *_two_hosts(sshd_device, hostile_device),
                      "--state-dir", str(device_state), "--upload-dir", str(uploads))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    good, bad = _table_rows(proc.stdout, sshd_device, hostile_device)
    assert " ok " in good and "installed; active" in good, proc.stdout
    assert "FAILED" in bad and re.search(r"install failed +exit code 137$", bad), bad
    assert list(uploads.iterdir()) == []


def test_a_device_that_never_answers_fails_at_the_host_deadline_and_leaves_no_upload(
    sshd_device: SshDevice, hostile_device: HostileDevice, device_state: Path, test_bundles: BundleSet,
    tmp_path: Path,
) -> None:
    """Alive but silent (one byte every half second, never an answer): stopped at --host-timeout."""
    hostile_device.behave("trickle")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    proc, _ = _deploy("push", str(test_bundles.good), "--host", hostile_device.host,
                      *sshd_device.ssh_args(with_host=False), "--state-dir", str(device_state),
                      "--upload-dir", str(uploads), "--host-timeout", "10", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [row] = json.loads(proc.stdout)
    assert not row["ok"] and row["detail"] == "timed out after 10 s (--host-timeout)", row
    assert list(uploads.iterdir()) == []


class _BannerThenSilence:
    """A TCP server on 127.0.0.1 that greets like sshd and then never says another word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            client.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            self.clients.append(client)

    def close(self) -> None:
        self.sock.close()
        for client in self.clients:
            client.close()


@pytest.fixture
def banner_then_silence() -> Iterator[_BannerThenSilence]:
    server = _BannerThenSilence()
    yield server
    server.close()


def test_a_host_that_stalls_after_its_banner_fails_within_the_deadline(
    sshd_device: SshDevice, device_state: Path, banner_then_silence: _BannerThenSilence
) -> None:
    stalled = f"{sshd_device.host}:{banner_then_silence.port}"
    proc, _ = _deploy("status", "--host", f"{sshd_device.host}:{sshd_device.port}", "--host", stalled,
                      *sshd_device.ssh_args(with_host=False), "--state-dir", str(device_state),
                      "--connect-timeout", "1", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {row["host"]: row for row in json.loads(proc.stdout)}
    assert rows[f"{sshd_device.host}:{sshd_device.port}"]["ok"]
    row = rows[stalled]
    assert not row["ok"] and row["summary"] == "unreachable", row
    assert row["detail"] == (f"cannot connect to 127.0.0.1:{banner_then_silence.port}: the device stopped answering "
                             "during the login (see --connect-timeout)"), row
