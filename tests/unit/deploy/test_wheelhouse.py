"""edge-deploy wheelhouse and install-agent --wheelhouse / --instance: arguments, steps and refusals.

The real install from a wheelhouse into a real systemd box is `make device-check`
(tools/device_check); these tests pin what each step runs and what is refused before any upload.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy import actions, cli, wheelhouse


def _wheelhouse(tmp_path: Path, *names: str) -> Path:
    directory = tmp_path / "wheels"
    directory.mkdir()
    for name in names:
        (directory / name).write_bytes(b"PK")
    return directory


def test_platform_tags_are_newest_first_without_gaps() -> None:
    tags = wheelhouse.platform_tags("aarch64")
    minors = [int(tag.split("_")[2]) for tag in tags[:-1]]
    assert minors == list(range(36, 16, -1))  # a gap at 2_27 makes pip pick ai-edge-litert 1.x
    assert tags[-1] == "manylinux2014_aarch64"
    assert wheelhouse.platform_tags("x86_64")[0] == "manylinux_2_36_x86_64"
    with pytest.raises(wheelhouse.WheelhouseError, match="unknown platform 'armv7l'"):
        wheelhouse.platform_tags("armv7l")


def test_a_wheelhouse_needs_exactly_one_agent_wheel(tmp_path: Path) -> None:
    with pytest.raises(wheelhouse.WheelhouseError, match="not a directory"):
        wheelhouse.check_wheelhouse(tmp_path / "missing")
    empty = _wheelhouse(tmp_path, "numpy-2.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    with pytest.raises(wheelhouse.WheelhouseError, match=r"exactly one edge_infer-\*\.whl \(found none\)"):
        wheelhouse.check_wheelhouse(empty)
    (empty / "edge_infer-0.1-py3-none-any.whl").write_bytes(b"PK")
    assert wheelhouse.check_wheelhouse(empty).name == "edge_infer-0.1-py3-none-any.whl"
    (empty / "edge_infer-0.2-py3-none-any.whl").write_bytes(b"PK")
    with pytest.raises(wheelhouse.WheelhouseError, match=r"found edge_infer-0\.1"):
        wheelhouse.check_wheelhouse(empty)


def test_build_refuses_a_non_empty_output_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(wheelhouse.WheelhouseError, match="exists and is not empty"):
        wheelhouse.build_wheelhouse(out, "x86_64")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_refuses_a_bad_wheelhouse_before_connecting(tmp_path: Path) -> None:
    directory = _wheelhouse(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "install-agent", "--host", "root@127.0.0.1:9",
                           "--wheelhouse", str(directory)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "exactly one edge_infer-*.whl" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_wheelhouse_steps_upload_every_wheel_and_install_without_an_index(tmp_path: Path) -> None:
    directory = _wheelhouse(tmp_path, "edge_infer-0.1-py3-none-any.whl", "numpy-2.0-cp311-cp311-x.whl")
    args = cli.build_parser().parse_args(["install-agent", "--host", "pi@a", "--wheelhouse", str(directory)])
    steps = actions.install_agent_steps(args)
    create = next(s for s in steps if s.creates_dir)
    remote = create.creates_dir
    uploads = [s for s in steps if s.upload is not None and s.destination.startswith(remote + "/")]
    assert sorted(s.upload.name for s in uploads if s.upload) == sorted(p.name for p in directory.iterdir())
    install = next(s for s in steps if s.done_with == remote)
    assert f"--no-index --find-links {remote} {remote}/edge_infer-0.1-py3-none-any.whl" in install.command
    assert f"rm -rf {remote}" in install.command
    assert steps.index(create) < steps.index(uploads[0]) < steps.index(install)
    assert not any("pip" in s.command and "--no-index" not in s.command and "install" in s.command
                   and "edge-infer" in s.command for s in steps)  # never the index


def test_instance_installs_the_template_with_its_own_config(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["install-agent", "--host", "pi@a", "--instance", "door"])
    steps = actions.install_agent_steps(args)
    assert any(s.upload == actions.DEFAULT_TEMPLATE_FILE for s in steps)
    assert not any(s.upload == actions.DEFAULT_UNIT_FILE for s in steps)
    commands = "\n".join(s.command for s in steps)
    assert actions.TEMPLATE_PATH in commands and "/etc/edge-agent/door.toml" in commands
    assert steps[-1].description == "enable and start edge-agent@door"
    assert "enable --now edge-agent@door" in steps[-1].command


@pytest.mark.parametrize("name", ["Door", "a b", "-x", "x" * 33, "../etc"])
def test_a_bad_instance_name_is_refused(name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "install-agent", "--host", "root@127.0.0.1:9",
                           f"--instance={name}"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--instance must be" in proc.stderr, proc.stderr


def test_service_for_state_dir() -> None:
    assert actions.service_for_state_dir("/var/lib/edge-agent") == "edge-agent"
    assert actions.service_for_state_dir("/var/lib/edge-agent/") == "edge-agent"
    assert actions.service_for_state_dir("/var/lib/edge-agent-door") == "edge-agent@door"
    assert actions.service_for_state_dir("/var/lib/edge-agent-Do or") is None
    assert actions.service_for_state_dir("/srv/models") is None


def _run_final_step(tmp_path: Path, active: bool, condition: str) -> subprocess.CompletedProcess[str]:
    """The last install-agent step against a recording systemctl that answers like systemd would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/calls\n'
        'case "$1" in\n'
        f'  is-active) [ "{int(active)}" = 1 ] && {{ echo active; exit 0; }}; echo inactive; exit 3;;\n'
        f'  show) echo {condition};;\n'
        "esac\nexit 0\n")
    (bin_dir / "systemctl").chmod(0o755)
    args = cli.build_parser().parse_args(["install-agent", "--host", "pi@a"])
    step = actions.install_agent_steps(args)[-1]
    return subprocess.run(["sh", "-c", step.command], capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_final_step_accepts_a_service_waiting_for_its_model(tmp_path: Path) -> None:
    assert _run_final_step(tmp_path, active=True, condition="yes").returncode == 0
    waiting = _run_final_step(tmp_path, active=False, condition="no")
    assert waiting.returncode == 0 and actions.WAITING_FOR_MODEL in waiting.stdout
    failed = _run_final_step(tmp_path, active=False, condition="yes")  # started, then died
    assert failed.returncode == 1 and actions.WAITING_FOR_MODEL not in failed.stdout
