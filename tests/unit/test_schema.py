"""The strict record layer under the manifest and the config: types, bounds, unknown keys, locations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, Manifest, OutputSpec, parse_preprocess
from edge_agent.schema import Field, FieldError, Schema, ValidationError


class Inner(Schema, frozen=True):
    size: int = Field(default=1, ge=1, le=10)
    names: list[str] = Field(default_factory=list, max_length=3)


class Outer(Schema):
    name: str = Field(min_length=1, pattern=r"^[a-z]+$")
    ratio: float = Field(default=0.5, gt=0.0, lt=1.0)
    mode: Literal["a", "b"] = "a"
    path: Path | None = None
    flag: bool = False
    inner: Inner = Field(default_factory=Inner)
    extra: dict[str, int] = Field(default_factory=dict)
    low: int = 0
    high: int = 10

    def _check(self) -> None:
        if self.high < self.low:
            raise FieldError("high", "must be >= low")


def first(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    return exc.value.errors()[0]


def test_valid_input_is_converted_and_defaults_filled() -> None:
    rec = Outer.model_validate({"name": "abc", "ratio": 0.25, "path": "/x/y", "inner": {"size": 3.0}})
    assert rec.path == Path("/x/y") and rec.inner.size == 3 and isinstance(rec.inner.size, int)
    assert rec.mode == "a" and rec.extra == {} and rec.inner.names == []
    assert Outer.model_validate({"name": "abc", "ratio": 1 // 2 + 0.75}).ratio == 0.75


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        ({"name": "abc", "bogus": 1}, ("bogus",), "extra_forbidden"),
        ({"name": "abc", "inner": {"sise": 1}}, ("inner", "sise"), "extra_forbidden"),
        ({}, ("name",), "missing"),
        ({"name": ""}, ("name",), "too_short"),
        ({"name": "ABC"}, ("name",), "pattern_mismatch"),
        ({"name": 5}, ("name",), "string_type"),
        ({"name": "abc", "ratio": 1.0}, ("ratio",), "lt_bound"),
        ({"name": "abc", "ratio": 0}, ("ratio",), "gt_bound"),
        ({"name": "abc", "ratio": float("nan")}, ("ratio",), "gt_bound"),
        ({"name": "abc", "ratio": True}, ("ratio",), "float_type"),
        ({"name": "abc", "mode": "c"}, ("mode",), "literal_error"),
        ({"name": "abc", "flag": 1}, ("flag",), "bool_type"),
        ({"name": "abc", "low": "3"}, ("low",), "int_type"),
        ({"name": "abc", "low": 2.5}, ("low",), "int_type"),
        ({"name": "abc", "low": True}, ("low",), "int_type"),
        ({"name": "abc", "path": 3}, ("path",), "path_type"),
        ({"name": "abc", "inner": {"size": 11}}, ("inner", "size"), "le_bound"),
        ({"name": "abc", "inner": {"names": ["a", "b", "c", "d"]}}, ("inner", "names"), "too_long"),
        ({"name": "abc", "inner": {"names": ["a", 2]}}, ("inner", "names", 1), "string_type"),
        ({"name": "abc", "inner": 3}, ("inner",), "model_type"),
        ({"name": "abc", "extra": {"k": "v"}}, ("extra", "k"), "int_type"),
        ({"name": "abc", "extra": []}, ("extra",), "dict_type"),
        ({"name": "abc", "low": 5, "high": 1}, ("high",), "value_error"),
        ("not a table", (), "model_type"),
    ],
)
def test_every_problem_has_a_location_and_a_kind(data: Any, loc: tuple[Any, ...], kind: str) -> None:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    assert (first(info)["loc"], first(info)["type"]) == (loc, kind)
    assert "\n" not in str(info.value) and str(first(info)["msg"])


def test_all_problems_are_collected() -> None:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"name": "ABC", "ratio": 2.0, "mode": "z"})
    assert info.value.error_count() == 3
    assert "and 2 more problem(s)" in str(info.value)


def test_construction_validates_like_model_validate() -> None:
    with pytest.raises(ValidationError):
        Outer(name="abc", ratio=3.0)
    with pytest.raises(ValidationError):
        Inner(size=0)


def test_frozen_records_refuse_assignment_and_copies_are_validated() -> None:
    inner = Inner(size=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.size = 3  # type: ignore[misc]
    assert inner.model_copy(update={"size": 4}).size == 4 and inner.size == 2
    with pytest.raises(ValidationError):
        inner.model_copy(update={"size": 40})


def test_dump_round_trips_through_json() -> None:
    rec = Outer.model_validate({"name": "abc", "path": "/p", "inner": {"names": ["x"]}, "extra": {"a": 1}})
    dumped = rec.model_dump(mode="json")
    assert dumped["path"] == "/p" and dumped["inner"] == {"size": 1, "names": ["x"]}
    assert Outer.model_validate_json(json.dumps(dumped)) == rec
    assert rec.model_dump()["path"] == Path("/p")
    assert "path" not in Outer(name="abc").model_dump(exclude_none=True)
    assert "ratio" not in rec.model_dump(exclude={"ratio"})


def test_invalid_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate_json(b"{not json")
    assert first(info)["type"] == "json_invalid"


def test_preprocess_union_is_tagged_by_kind() -> None:
    assert isinstance(parse_preprocess({"kind": "audio"}), AudioPreprocess)
    assert isinstance(parse_preprocess({"kind": "image", "width": 8, "height": 8}), ImagePreprocess)
    for bad in ({"kind": "video"}, {"width": 8, "height": 8}, None, []):
        with pytest.raises(ValidationError) as info:
            parse_preprocess(bad)
        assert first(info)["loc"] in ((), ("kind",))
    with pytest.raises(ValidationError) as info:
        parse_preprocess({"kind": "image", "width": 8, "height": 8, "channels": 2})
    assert first(info)["loc"] == ("channels",)


def _manifest_dict() -> dict[str, Any]:
    return {
        "name": "digits", "version": "1", "task": "classify",
        "model": {"sha256": "a" * 64, "size_bytes": 10},
        "inputs": [{"shape": [1, 8, 8, 1], "dtype": "int8", "scale": 0.5, "zero_point": -128}],
        "outputs": [{"shape": [1, 10], "dtype": "int8", "scale": 0.00390625, "zero_point": -128}],
        "preprocess": {"kind": "image", "width": 8, "height": 8, "channels": 1, "color": "gray"},
        "output": {"labels": [str(i) for i in range(10)], "top_k": 3},
        "validation": {"top1": 0.98, "nested": {"x": [1, 2]}},
    }


def test_manifest_round_trip_and_nested_locations() -> None:
    manifest = Manifest.model_validate(_manifest_dict())
    assert Manifest.model_validate_json(json.dumps(manifest.model_dump(mode="json"))) == manifest
    bad = _manifest_dict()
    bad["preprocess"]["width"] = 0
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(bad)
    assert first(info)["loc"] == ("preprocess", "width")
    bad = _manifest_dict()
    bad["inputs"][0]["dtype"] = "int4"
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(bad)
    assert first(info)["loc"] == ("inputs", 0, "dtype")
    bad = _manifest_dict() | {"task": "audio_classify"}
    with pytest.raises(ValidationError, match="audio preprocess"):
        Manifest.model_validate(bad)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
OUTPUT_KEYS = st.sampled_from([*sorted(OutputSpec.model_fields), "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(OUTPUT_KEYS, JSONISH, max_size=6))
def test_hostile_input_gives_a_validation_error_or_a_valid_record(data: dict[str, Any]) -> None:
    try:
        spec = OutputSpec.model_validate(data)
    except ValidationError as exc:
        assert exc.error_count() >= 1 and all(e["loc"] for e in exc.errors())
        return
    assert 0.0 <= spec.score_threshold <= 1.0 and 1 <= spec.top_k <= 1000
    assert all(isinstance(label, str) for label in spec.labels)
    assert OutputSpec.model_validate(spec.model_dump(mode="json")) == spec
