"""``edge-fleet send``: which devices and command the arguments name, and each device's report line."""

from __future__ import annotations

import pytest

from deploy.fleet import _outcome, _send_targets, build_parser
from edge_agent.errors import EdgeError


def targets(*argv: str) -> tuple[list[str], str]:
    return _send_targets(build_parser().parse_args(["send", *argv]))


def test_devices_then_the_command() -> None:
    assert targets("cam-1", "ping") == (["cam-1"], "ping")
    assert targets("cam-1", "cam-2", "cam.3", "reload") == (["cam-1", "cam-2", "cam.3"], "reload")
    assert targets("--all", "ping") == ([], "ping")


@pytest.mark.parametrize(("argv", "message"), [
    (("ping",), "name the device"),
    (("--all", "cam-1", "ping"), "either --all or device ids"),
    (("cam/1", "ping"), "is not a device id"),
    (("+", "ping"), "is not a device id"),
    (("cam-1\n", "ping"), "is not a device id"),
    (("cam-1", "ping\n"), "not a command name"),
    (("cam-1", "cam-1", "ping"), "named twice"),
    (("cam-1", "cmd/#"), "not a command name"),
    (("cam-1", "cam-2", "snapshot", "--output", "x.jpg"), "exactly one device"),
    (("--all", "snapshot", "--output", "x.jpg"), "exactly one device"),
])
def test_wrong_targets_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(EdgeError, match=message):
        targets(*argv)


def test_outcome_lines() -> None:
    ack = {"id": "x", "status": "rejected", "reason": "unknown_command", "command": "nope"}
    assert _outcome("cam-1", ack, 10) == {"device": "cam-1", "status": "rejected", "reason": "unknown_command",
                                          "ack": ack}
    assert _outcome("cam-2", None, 2.5) == {"device": "cam-2", "status": "timeout",
                                            "reason": "no final ack within 2.5 s", "ack": None}
