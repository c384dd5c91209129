"""exec: command lines and the bounded stderr tail."""

from __future__ import annotations

import os

import pytest

from edge_agent.errors import SourceError
from edge_agent.sources.command import STDERR_REASON_CHARS, StderrTail, parse_command


def test_command_is_split_like_a_shell_but_not_run_by_one() -> None:
    assert parse_command("exec:gst-launch-1.0 videotestsrc ! jpegenc ! fdsink 'fd=1'") == [
        "gst-launch-1.0", "videotestsrc", "!", "jpegenc", "!", "fdsink", "fd=1"]
    assert parse_command("EXEC:echo $HOME; rm x") == ["echo", "$HOME;", "rm", "x"]
    with pytest.raises(SourceError, match="check its quotes"):
        parse_command("exec:ffmpeg -i 'unclosed")
    with pytest.raises(SourceError, match="no command given"):
        parse_command("exec:  ")


def test_stderr_tail_keeps_the_last_lines_in_one_bounded_line() -> None:
    read, write = os.pipe()
    with os.fdopen(read, "rb", buffering=0) as pipe:
        tail = StderrTail(pipe)
        with os.fdopen(write, "wb") as out:
            out.write(b"frame=1\rframe=2\r" + b"noise\n" * 100_000 + b"ERROR: camera busy\n\n")
        tail.join(10)
        text = tail.text()
    assert text.endswith("noise | ERROR: camera busy") and "\n" not in text
    assert len(text) <= STDERR_REASON_CHARS + 1
