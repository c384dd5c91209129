"""The ssh/scp runner: bounded output, deadlines, no stdin, one-line failures (real child processes)."""

from __future__ import annotations

import time
from pathlib import Path

from deploy.ssh import EXIT_STOPPED, MAX_OUTPUT_BYTES, Completed, Ssh, Target, run_argv, ssh_failure


def test_output_is_read_in_full_up_to_the_bound() -> None:
    proc = run_argv(["sh", "-c", f"head -c {MAX_OUTPUT_BYTES} /dev/zero; echo err >&2; exit 3"], 30, "slow")
    assert (proc.returncode, len(proc.stdout), proc.stderr, proc.stopped) == (3, MAX_OUTPUT_BYTES, "err\n", "")


def test_a_run_past_the_bound_is_killed_and_not_parsed() -> None:
    proc = run_argv(["sh", "-c", "echo '{\"ok\": true}'; exec yes"], 60, "slow")  # endless
    assert proc == Completed(EXIT_STOPPED, "", proc.stderr, "answered more than 1 MiB on stdout; stopped reading")
    assert ssh_failure(proc) == "answered more than 1 MiB on stdout; stopped reading"
    proc = run_argv(["sh", "-c", "yes >&2"], 60, "slow", limit=1000)
    assert proc.stopped == "answered more than 1000 bytes on stderr; stopped reading"


def test_a_run_past_its_time_is_killed() -> None:
    proc = run_argv(["sh", "-c", "echo partial; exec sleep 60"], 0.5, "timed out after 1 s (--host-timeout)")
    assert (proc.returncode, proc.stdout, proc.stopped) == (EXIT_STOPPED, "", "timed out after 1 s (--host-timeout)")
    # a child that closes its output but does not exit is waited for only until the deadline
    proc = run_argv(["sh", "-c", "exec sleep 60 >&- 2>&-"], 0.5, "late")
    assert proc.stopped == "late"
    assert run_argv(["true"], 0, "no time left").stopped == "no time left"


def test_no_stdin_reaches_the_device() -> None:
    proc = run_argv(["cat"], 30, "cat waited for a terminal")
    assert (proc.returncode, proc.stdout, proc.stopped) == (0, "", "")


def test_a_spent_deadline_runs_nothing_but_clean_up_still_gets_a_login(tmp_path: Path) -> None:
    ssh = Ssh(Target("pi@a"), None, tmp_path / "kh", connect_timeout=1, host_timeout=1,
              started=time.monotonic() - 5)
    proc = ssh.run("true")
    assert proc.stopped == "timed out after 1 s (--host-timeout)" and proc.returncode == EXIT_STOPPED
    assert ssh.login_timeout == 7
    argv = ssh.ssh_argv("true")
    for option in ("ConnectTimeout=1", "ServerAliveInterval=1", "ServerAliveCountMax=3", "LogLevel=ERROR"):
        assert option in argv, option
    assert "LogLevel=INFO" in ssh.ssh_argv("true", log_level="INFO")


def test_a_failure_line_keeps_a_carriage_return_visible() -> None:
    proc = Completed(1, "", "first\nedge-agent: bad\rfake ok\n")
    assert ssh_failure(proc) == "edge-agent: bad\rfake ok"  # HostResult escapes it as \r


def test_a_silent_failure_names_its_exit_code() -> None:
    assert ssh_failure(Completed(137, "", "")) == "exit code 137"
    assert ssh_failure(Completed(1, "", "\n\n")) == "exit code 1"
