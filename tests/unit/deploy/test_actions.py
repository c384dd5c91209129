"""install-agent's remote commands run through a real shell: every device path is one quoted word."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from deploy import actions, cli

_RECORDER = """#!/bin/sh
# a stand-in for {name}: logs its arguments, one per line
printf '%s\\n' "{name}" "$@" >> {log}
{extra}
"""


def _stub(path: Path, name: str, log: Path, extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_RECORDER.format(name=name, log=log, extra=extra))
    path.chmod(0o755)


def test_venv_and_root_reach_the_shell_as_one_word_each(tmp_path: Path) -> None:
    """A --venv full of shell syntax creates and uses exactly that directory; nothing else runs."""
    venv = "/opt/v;touch${IFS}PWNED1;'$(touch${IFS}PWNED2)`touch${IFS}PWNED3`\"x"
    root = tmp_path / "root$(touch PWNED4)"
    log = tmp_path / "argv.log"
    bin_dir = tmp_path / "bin"
    # python3 -m venv DIR: records DIR and puts a recording pip into it
    _stub(bin_dir / "python3", "python3", log,
          extra=f'mkdir -p "$3/bin" && cp {bin_dir / "pip-template"} "$3/bin/pip"')
    _stub(bin_dir / "pip-template", "pip", log)
    args = cli.build_parser().parse_args(["install-agent", "--host", "pi@a", "--root", str(root),
                                          "--venv", venv])
    steps = actions.install_agent_steps(args)
    create, install = steps[0], steps[1]
    assert create.description == "create the virtualenv" and install.description.startswith("install the agent")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for step in (create, install):
        subprocess.run(["sh", "-c", step.command], cwd=tmp_path, env=env, check=True, timeout=30)
    expected = f"{root}{venv}"
    assert log.read_text().splitlines() == [
        "python3", "-m", "venv", expected,
        "pip", "--disable-pip-version-check", "install", "--upgrade", actions.DEFAULT_PACKAGE,
    ]
    assert (Path(expected) / "bin" / "pip").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("PWNED")) == []
