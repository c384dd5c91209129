"""``--input-shape`` parsing and the dynamic-input check (converter/fixed_shape.py, no TensorFlow)."""

from __future__ import annotations

import pytest

from converter.fixed_shape import ShapeError, parse_input_shape, resolve_shape


def test_parse_input_shape() -> None:
    assert parse_input_shape("32,32,1") == [32, 32, 1]
    assert parse_input_shape(" 96, 96 ,3 ") == [96, 96, 3]
    assert parse_input_shape("49x40") == [49, 40]
    for bad in ("", "a,b", "0,32,1", "-1,3", "32.5,3"):
        with pytest.raises(ShapeError):
            parse_input_shape(bad)


def test_fixed_model_keeps_its_shape() -> None:
    assert resolve_shape([None, 32, 32, 1], None) is None
    assert resolve_shape([None, 32, 32, 1], [32, 32, 1]) == [None, 32, 32, 1]


def test_dynamic_model_needs_input_shape() -> None:
    with pytest.raises(ShapeError) as info:
        resolve_shape([None, None, None, 1], None, "image")
    text = str(info.value)
    assert "\n" not in text
    assert "dynamic dimensions (None, None, None, 1)" in text
    assert "--input-shape H,W,C" in text and "96,96,1" in text
    with pytest.raises(ShapeError, match="--input-shape D1,D2"):
        resolve_shape([-1, -1, 40], None)  # TFLite spells unknown as -1


def test_input_shape_fills_only_unknown_dimensions() -> None:
    assert resolve_shape([None, None, None, 1], [32, 32, 1]) == [None, 32, 32, 1]
    with pytest.raises(ShapeError, match="only its unknown"):
        resolve_shape([None, None, None, 1], [32, 32, 3])
    with pytest.raises(ShapeError, match="has 2 dimension"):
        resolve_shape([None, None, None, 1], [32, 32])
