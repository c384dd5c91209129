"""Forced command of the hostile sshd (tests/fixtures_ssh.py ``hostile_device``): a misbehaving device.

``python hostile_device.py MODE_FILE``. Uploads (the SFTP subsystem) and plain shell commands
(``true``, ``rm -f``, the upload probe) run as asked; an ``edge-agent`` command gets the answer
MODE_FILE names instead of the agent's (``MODE [SIZE]``). ``honest`` runs it too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
_AGENT_COMMAND = re.compile(r"\b(install-model|rollback|models)\b.*--json")
_ESC = "\x1b]2;owned\x07\x1b[2J\x1b[31m"  # set the window title, clear the screen, turn red


def _model(version: str) -> dict[str, object]:
    return {"name": "evil", "version": version, "sha256": "ab" * 32, "short_sha": "abab", "task": "classify"}


def _answer(mode: str, size: int) -> None:
    """Write what a device in ``mode`` answers to an edge-agent command; may never return."""
    out = sys.stdout
    if mode == "nested":
        out.write('{"ok": true, "active": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    elif mode == "active-x":
        out.write(json.dumps({"ok": True, "status": "installed", "active": "x", "previous": None}) + "\n")
    elif mode == "escapes":
        out.write(json.dumps({"ok": False, "error": f"{_ESC}wiped", "step": _ESC,
                              "active": _model(f"1{_ESC}")}) + "\n")
    elif mode == "escapes-stderr":
        sys.stderr.write(f"edge-agent: {_ESC}bad\rline\n")
        sys.exit(1)
    elif mode == "huge":  # SIZE bytes of text (default 50 MB), then an answer never to be reached
        os.execvp("sh", ["sh", "-c", f"yes | head -c {size or 50_000_000}; echo '{{\"ok\": true}}'"])
    elif mode == "crash":  # the agent dies after the upload: nothing answered, nothing removed
        sys.exit(137)
    elif mode == "trickle":  # alive, but never answers: one byte every half second
        while True:
            out.write(".")
            out.flush()
            time.sleep(0.5)
    out.flush()


def main() -> None:
    mode, _, size = Path(sys.argv[1]).read_text().strip().partition(" ")
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if command == "internal-sftp":
        os.execv(SFTP_SERVER, [SFTP_SERVER])
    if mode == "honest" or not _AGENT_COMMAND.search(command):
        os.execvp("sh", ["sh", "-c", command])
    _answer(mode, int(size or 0))


if __name__ == "__main__":
    main()
