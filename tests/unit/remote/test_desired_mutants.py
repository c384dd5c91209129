"""Desired-config rules the mutation run (``make mutate``) found untested: the exact ``config/reported``
bodies, the persisted version (``<state_dir>/desired-version``), deferral and its counter.

Everything is driven directly (no broker, no threads): ``DesiredConfig`` with a control double and a
recorder in place of the publisher.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.remote.desired import VERSION_FILE, DesiredConfig, parse_desired
from edge_agent.remote.guards import MAX_COMMAND_BYTES
from edge_agent.remote.protocol import CommandError
from edge_agent.util.statefiles import set_aside_counts

CURRENT = {"threshold": 0.5, "version": 1}


class Control:
    """The two ``AgentControl`` methods a desired config uses.

    ``apply_config`` answers with a config that differs from ``reported_config``'s, so a test can
    tell which of the two went into a report.
    """

    def __init__(self, *, fail: str | None = None, reported: Any = CURRENT) -> None:
        self.fail = fail
        self.reported = reported
        self.applied: list[dict[str, Any]] = []
        self.reported_calls = 0

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(changes)
        if self.fail is not None:
            raise ConfigError(self.fail)
        return {"from": "apply_config", **changes}

    def reported_config(self) -> Any:  # Any: a misbehaving app may answer with a non-dict
        self.reported_calls += 1
        return self.reported


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, body: dict[str, Any]) -> None:
        self.published.append((kind, body))


def desired(version: Any, config: Any = None, **extra: Any) -> bytes:
    return json.dumps({"version": version, "config": {"threshold": 0.2} if config is None else config,
                       **extra}).encode()


def reported(version: Any, status: str, reason: str | None = None, config: Any = CURRENT) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"version": version, "status": status}
    if reason is not None:
        body["reason"] = reason
    body["config"] = config
    body["source"] = "desired"
    return "config/reported", body


def make(tmp_path: Path | None, control: Control | None = None) -> tuple[DesiredConfig, Recorder, Control]:
    rec = Recorder()
    ctl = control if control is not None else Control()
    return DesiredConfig(control=ctl, publish=rec, state_dir=tmp_path), rec, ctl  # type: ignore[arg-type]


# --------------------------------------------------------------------------- applying and persisting


def test_applied_report_carries_what_apply_config_returned_and_the_version_is_persisted(tmp_path: Path) -> None:
    d, rec, ctl = make(tmp_path)
    d.apply(desired(3))
    assert ctl.applied == [{"threshold": 0.2, "version": 3}]
    # config=reported, not reported_config() again (apply config=None / no config, _report `and False`)
    assert rec.published == [reported(3, "applied", config={"from": "apply_config", "threshold": 0.2, "version": 3})]
    assert ctl.reported_calls == 0
    assert d.version == 3
    # the file holds the version itself (_save_version(None), str(None), `is not None`, path None)
    assert (tmp_path / VERSION_FILE).read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == [VERSION_FILE]


def test_persisted_version_is_loaded_so_the_retained_config_is_not_applied_again(tmp_path: Path) -> None:
    (tmp_path / VERSION_FILE).write_text("5")
    d, rec, ctl = make(tmp_path)
    assert d.version == 5  # guards `self.version = None`, _load_version `and False`, `_path = None`
    d.apply(desired(5))  # equal: already applied, nothing reported
    assert ctl.applied == [] and rec.published == []
    d.apply(desired(4))
    assert rec.published == [reported(4, "rejected", "stale version 4 <= 5")]
    assert ctl.applied == []
    d.apply(desired(6))
    assert d.version == 6 and (tmp_path / VERSION_FILE).read_text() == "6"


def test_a_restarted_agent_reads_the_version_the_previous_one_saved(tmp_path: Path) -> None:
    first, _, _ = make(tmp_path)
    first.apply(desired(8))
    second, rec, ctl = make(tmp_path)
    assert second.version == 8
    second.apply(desired(8))
    assert rec.published == [] and ctl.applied == []


@pytest.mark.parametrize("content", [b"", b"seven", b"None", b"\xff\xfe7", b"-3"])
def test_a_damaged_version_file_means_no_version_and_is_set_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / VERSION_FILE).write_bytes(content)
    before = set_aside_counts().get(VERSION_FILE, 0)
    d, _, _ = make(tmp_path)
    assert d.version is None
    assert [p.read_bytes() for p in tmp_path.glob(f"{VERSION_FILE}.corrupt-*")] == [content]
    assert set_aside_counts()[VERSION_FILE] == before + 1


@pytest.mark.parametrize(("content", "why"), [(b"seven", "not a version number"), (b"-3", "a negative version")])
def test_the_set_aside_warning_says_what_is_wrong(tmp_path: Path, content: bytes, why: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / VERSION_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    make(tmp_path)
    [aside] = tmp_path.glob(f"{VERSION_FILE}.corrupt-*")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"damaged state file {tmp_path / VERSION_FILE} ({why}) set aside as {aside.name}")


def test_a_persisted_version_0_is_read_not_set_aside(tmp_path: Path) -> None:
    """0 is the smallest version parse_desired accepts: a restart must not apply it again."""
    (tmp_path / VERSION_FILE).write_text("0")
    d, rec, ctl = make(tmp_path)
    assert d.version == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [VERSION_FILE]
    d.apply(desired(0))
    assert rec.published == [] and ctl.applied == []


def test_without_state_dir_the_version_is_kept_in_memory_only() -> None:
    # state_dir None must neither be joined with the file name (`or True`, `is None`) nor read
    # (_load_version `or True`) nor written (_save_version `is not None`): each would raise.
    d, rec, ctl = make(None)
    assert d.version is None
    d.apply(desired(2))
    assert d.version == 2 and ctl.applied == [{"threshold": 0.2, "version": 2}]
    assert rec.published == [reported(2, "applied", config={"from": "apply_config", "threshold": 0.2, "version": 2})]
    d.apply(desired(1))
    assert rec.published[-1] == reported(1, "rejected", "stale version 1 <= 2")


def test_a_state_dir_that_cannot_be_written_only_loses_the_persisted_version(tmp_path: Path) -> None:
    d, rec, _ = make(tmp_path / "missing")
    d.apply(desired(2))
    assert d.version == 2 and rec.published[-1][1]["status"] == "applied"
    assert not (tmp_path / "missing").exists()


def test_without_control_versions_are_checked_and_nothing_is_applied(tmp_path: Path) -> None:
    rec = Recorder()
    d = DesiredConfig(control=None, publish=rec, state_dir=tmp_path)
    d.apply(desired(2))
    assert rec.published == [] and d.version is None
    assert not (tmp_path / VERSION_FILE).exists()
    d.apply(b"{")
    assert rec.published == [reported(None, "rejected", "desired config is not valid JSON", config=None)]


def test_an_empty_payload_is_a_cleared_retained_config(tmp_path: Path) -> None:
    d, rec, ctl = make(tmp_path)
    d.apply(b"")
    assert rec.published == [] and ctl.applied == [] and d.version is None


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{", "desired config is not valid JSON"),
    (b"\xff\xfe", "desired config is not valid JSON"),
    (b"[1]", "desired config must be a JSON object"),
    (desired(4, extra=1), "unknown field(s) in desired config: ['extra']"),
    (desired("4"), "desired config needs an integer version >= 0"),
    (desired(True), "desired config needs an integer version >= 0"),
    (desired(-1), "desired config needs an integer version >= 0"),
    (desired(4, config=[1]), "desired config needs a config object"),
    (b" " * (MAX_COMMAND_BYTES + 1), f"desired config over {MAX_COMMAND_BYTES} bytes"),
])
def test_an_invalid_desired_config_is_rejected_with_the_applied_version(
        tmp_path: Path, payload: bytes, reason: str) -> None:
    d, rec, ctl = make(tmp_path)
    d.apply(desired(3))
    rec.published.clear()
    d.apply(payload)
    # version: the one in force, not None; status "rejected"; the exact reason (apply mutants 4-12)
    assert rec.published == [reported(3, "rejected", reason)]
    assert ctl.applied == [{"threshold": 0.2, "version": 3}]
    assert d.version == 3 and (tmp_path / VERSION_FILE).read_text() == "3"


def test_a_config_the_agent_refuses_is_rejected_with_its_own_version(tmp_path: Path) -> None:
    d, rec, ctl = make(tmp_path, Control(fail="threshold must be within [0, 1]"))
    d.apply(desired(4, config={"threshold": 7}))
    assert ctl.applied == [{"threshold": 7, "version": 4}]
    # version 4 (not None), status "rejected", the error's text (apply mutants 30-38)
    assert rec.published == [reported(4, "rejected", "threshold must be within [0, 1]")]
    assert d.version is None
    assert not (tmp_path / VERSION_FILE).exists()


def test_a_report_copies_the_reported_config(tmp_path: Path) -> None:
    current = {"threshold": 0.4}
    d, rec, _ = make(tmp_path, Control(reported=current))
    d.apply(b"{")
    body = rec.published[-1][1]
    assert body["config"] == current and body["config"] is not current


@pytest.mark.parametrize("answer", [None, [("threshold", 0.4)]])
def test_a_report_goes_out_when_reported_config_is_not_a_dict(tmp_path: Path, answer: Any) -> None:
    # guards _current_config `isinstance(config, dict) or True`: dict(None) would raise, and a
    # list of pairs would be turned into a dict
    d, rec, _ = make(tmp_path, Control(reported=answer))
    d.apply(b"{")
    assert rec.published == [reported(None, "rejected", "desired config is not valid JSON", config=None)]


def test_a_report_goes_out_when_reported_config_raises(tmp_path: Path) -> None:
    class Broken(Control):
        def reported_config(self) -> Any:
            raise RuntimeError("app broke")

    d, rec, _ = make(tmp_path, Broken())
    d.apply(desired(-5))
    assert rec.published == [reported(None, "rejected", "desired config needs an integer version >= 0", config=None)]


def test_parse_desired_accepts_the_envelope_fields() -> None:
    body = {"version": 2, "config": {"a": 1}, "ts": 1, "schema": 1, "device_id": "d", "boot_id": "b",
            "session": "s", "seq": 3, "ts_ms": 4, "replayed": False}
    assert parse_desired(json.dumps(body).encode()) == (2, {"a": 1})
    with pytest.raises(CommandError, match=r"^desired config over 10 bytes$"):
        parse_desired(json.dumps(body).encode(), max_bytes=10)


# --------------------------------------------------------------------------- deferral


def test_deferral_keeps_the_newest_and_counts_the_replaced(tmp_path: Path) -> None:
    d, rec, ctl = make(tmp_path)
    assert d.pending is False  # guards `_pending = ""` (not None: would read as pending)
    assert d.dropped == 0  # guards `dropped = 1`
    # first: nothing replaced (guards `_pending is None`, `else 1`, `or True`)
    assert d.defer(desired(2)) is False
    assert d.pending is True and d.dropped == 0
    # replaced: True and counted once (guards `replaced = None`, `-=`, `2 if`, `and False`)
    assert d.defer(desired(3)) is True
    assert d.dropped == 1
    assert d.defer(desired(4)) is True
    assert d.dropped == 2  # guards `dropped = 1 if replaced` (assigned instead of added)
    d.apply_deferred()
    assert ctl.applied == [{"threshold": 0.2, "version": 4}]
    assert rec.published == [reported(4, "applied", config={"from": "apply_config", "threshold": 0.2, "version": 4})]
    assert d.pending is False
    d.apply_deferred()  # nothing waits: nothing happens
    assert len(ctl.applied) == 1 and len(rec.published) == 1
    assert d.defer(desired(5)) is False
    assert d.dropped == 2  # a deferral that replaced nothing leaves the count as it was


def test_applying_a_deferred_config_never_raises(tmp_path: Path) -> None:
    class Crashing(Control):
        def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("app crashed")

    d, rec, _ = make(tmp_path, Crashing())
    d.defer(desired(2))
    d.apply_deferred()
    assert d.pending is False and d.version is None and rec.published == []
