"""A device's JSON answer as hostile input: nesting, schema, escaping."""

from __future__ import annotations

import json

import pytest

from deploy.answers import (
    MAX_DEPTH,
    AnswerError,
    ChangeAnswer,
    StatusAnswer,
    json_depth,
    parse_answer,
    printable,
)

SHA = "ab" * 32
MODEL = {"name": "digits", "version": "1.2.0", "sha256": SHA, "bundle_sha256": "cd" * 32,
         "short_sha": SHA[:12], "task": "classify", "input_shape": [1, 28, 28, 1]}


@pytest.mark.parametrize(("text", "depth"), [
    ("{}", 1),
    ('{"a": [1, {"b": 2}]}', 3),
    ('{"a": "[[[{{{"}', 1),  # brackets inside a string do not count
    ('{"a": "\\"[[["}', 1),  # nor after an escaped quote
    ('{"a": "x\\\\", "b": [[]]}', 3),  # an escaped backslash ends the string normally
    ("[" * 1000, MAX_DEPTH + 1),  # counted up to the limit only
])
def test_json_depth(text: str, depth: int) -> None:
    assert json_depth(text, MAX_DEPTH) == depth


def test_a_deeply_nested_answer_is_refused_before_json_sees_it() -> None:
    text = '{"ok": true, "active": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(AnswerError, match=f"^invalid answer from the device: JSON nested more than {MAX_DEPTH} deep$"):
        parse_answer(text, ChangeAnswer)
    # many unterminated escaped quotes: one linear pass, not one per quote
    assert json_depth('{"a": "' + '\\"' * 500_000, MAX_DEPTH) == 1


def test_the_agents_own_answers_are_accepted_and_kept_as_sent() -> None:
    sent = {"ok": True, "status": "installed", "active": MODEL, "previous": None, "smoke": {"passed": True},
            "timings_ms": {"copy": 1.5}, "agent_signalled": False}
    parsed = parse_answer(f"log line\n{json.dumps(sent)}\n", ChangeAnswer)
    assert parsed is not None
    answer, data = parsed
    assert answer.ok and answer.active is not None and answer.active.describe() == f"digits 1.2.0 ({SHA[:12]})"
    assert data == sent
    status = {"state_dir": "/var/lib/edge-agent", "active": MODEL, "previous": MODEL, "installed": [SHA],
              "probation": {"sha256": SHA, "until": 1.0, "crashes": 0}, "agent_pid": None}
    parsed_status = parse_answer(json.dumps(status), StatusAnswer)
    assert parsed_status is not None and parsed_status[0].probation == status["probation"]
    assert parse_answer("no JSON here\n{not json\n", ChangeAnswer) is None


@pytest.mark.parametrize(("answer", "message"), [
    ({"ok": True, "active": "x"}, "active: must be a table, got string"),
    ({"ok": "yes"}, "ok: must be true or false, got string"),
    ({"status": "installed"}, "ok: is required"),
    ({"ok": False, "error": ["a"]}, "error: must be a string, got array"),
    ({"ok": False, "error": "e" * 5000}, "error: allows at most 4096 characters"),
    ({"ok": True, "active": {**MODEL, "name": "\x1b[2J"}}, "active.name: must match"),
    ({"ok": True, "active": {**MODEL, "sha256": "x"}}, "active.sha256: must match"),
    ({"ok": True, "active": {**MODEL, "version": 3}}, "active.version: must be a string, got int"),
    ({"ok": True, "previous": {"name": "a"}}, "previous.version: is required"),
])
def test_answers_that_do_not_fit_the_schema(answer: dict[str, object], message: str) -> None:
    with pytest.raises(AnswerError, match=r"^invalid answer from the device: ") as caught:
        parse_answer(json.dumps(answer), ChangeAnswer)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b]2;owned\x07\x1b[2Jx", "\\x1b]2;owned\\x07\\x1b[2Jx"),  # OSC title, clear screen
    ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI
    ("tab\tcr\rlf\n", "tab\\tcr\\rlf\\n"),
    ("rtl\u202eevil\u2028x\ufeff", "rtl\\u202eevil\\u2028x\\ufeff"),  # bidi override, separator, BOM
    ("plain: é ü 漢 — ok", "plain: é ü 漢 — ok"),
])
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # escaping twice changes nothing


def test_printable_bounds_the_length() -> None:
    assert printable("x" * 10_000) == "x" * 1000 + "…"
