"""Step progress lines and the terminal spinner (converter/progress.py)."""

from __future__ import annotations

import io
import re

import pytest

from converter.progress import Steps


def test_plain_lines_with_elapsed_seconds_in_logs() -> None:
    out = io.StringIO()
    with Steps(out, tty=False) as steps:
        steps.start("loading model")
        steps.start("quantising")  # ends the previous step
    lines = out.getvalue().splitlines()
    assert lines[0] == "edge-convert: loading model ..."
    assert re.fullmatch(r"edge-convert: loading model: done in \d+\.\d s", lines[1])
    assert lines[2] == "edge-convert: quantising ..."
    assert re.fullmatch(r"edge-convert: quantising: done in \d+\.\d s", lines[3])
    assert set(steps.durations) == {"loading model", "quantising"}
    assert "\r" not in out.getvalue()


def test_failed_step_says_so() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), Steps(out, tty=False) as steps:
        steps.start("converting")
        raise RuntimeError("boom")
    assert re.search(r"converting: failed after \d+\.\d s", out.getvalue())


def test_spinner_on_a_terminal_ends_with_a_tick() -> None:
    out = io.StringIO()
    steps = Steps(out, tty=True)
    steps.start("quantising")
    steps.finish()
    text = out.getvalue()
    assert text.startswith("\r\033[K") and "quantising" in text  # rewritten in place, no plain lines
    assert re.search(r"\r\033\[K\u2713 quantising  \d+\.\d s\n$", text)
    steps.finish()  # nothing running: no output
    assert out.getvalue() == text


def test_steps_with_their_own_counter_do_not_spin() -> None:
    out = io.StringIO()
    steps = Steps(out, tty=True)
    steps.start("validating", spin=False)
    steps.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "edge-convert: validating ..."
    assert re.fullmatch(r"edge-convert: validating: done in \d+\.\d s", lines[1])
