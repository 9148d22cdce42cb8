"""The JSON Schema subset validator: a private module, tested directly (Elixir mirrors it)."""

from __future__ import annotations

from typing import Any

import pytest

from synapse_python._json_schema import SUPPORTED_KEYWORDS, SchemaError, load, loads


def problems(schema: dict[str, Any], value: object) -> list[str]:
    return [str(problem) for problem in load(schema).problems(value)]


@pytest.mark.parametrize(
    ("type_", "valid", "invalid"),
    [
        ("string", ["", "x"], [1, None, True, [], {}]),
        ("integer", [0, -3, 10**30], [1.0, 1.5, True, False, "1", None]),
        ("number", [0, 1.5, -2, 10**30], [True, "1", None, [], float("nan")]),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("null", [None], [0, "", False, [], {}]),
        ("object", [{}, {"a": 1}], [[], "x", None]),
        ("array", [[], [1, "a"]], [{}, "x", None]),
    ],
)
def test_type(type_: str, valid: list[object], invalid: list[object]) -> None:
    schema = load({"type": type_})

    assert [value for value in valid if not schema.is_valid(value)] == []
    assert [value for value in invalid if schema.is_valid(value)] == []


def test_type_messages_name_what_was_expected_and_got() -> None:
    assert problems({"type": "integer"}, 1.5) == ["$: expected integer, got number 1.5"]
    assert problems({"type": "integer"}, True) == ["$: expected integer, got boolean true"]
    assert problems({"type": ["string", "null"]}, 3) == [
        "$: expected string or null, got integer 3"
    ]
    assert problems({"type": ["string", "null"]}, None) == []


def test_properties_required_and_additional_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "email"],
        "additionalProperties": False,
    }

    assert problems(schema, {"name": "Ada", "email": "a@b", "age": 36}) == [
        "$.email: unexpected property"
    ]
    assert problems(schema, {"age": "36", "odd key": 1}) == [
        '$: missing required property "name"',
        '$: missing required property "email"',
        "$.age: expected integer, got string",
        '$["odd key"]: unexpected property',
    ]
    assert problems({"properties": {"a": {"type": "string"}}}, {"b": 1}) == []


def test_items_min_items_and_max_items() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}

    assert problems(schema, [1, 2]) == []
    assert problems(schema, []) == ["$: must have at least 1 item, got 0"]
    assert problems(schema, [1, "2", 3.5]) == [
        "$: must have at most 2 items, got 3",
        "$[1]: expected integer, got string",
        "$[2]: expected integer, got number 3.5",
    ]


def test_nested_paths() -> None:
    schema = {
        "type": "object",
        "properties": {
            "orders": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"lines": {"type": "array", "items": {"minimum": 1}}},
                },
            }
        },
    }

    assert problems(schema, {"orders": [{"lines": [1]}, {"lines": [2, 0]}]}) == [
        "$.orders[1].lines[1]: must be >= 1, got 0"
    ]


def test_enum_and_const_use_json_equality() -> None:
    assert problems({"enum": ["a", 1, None]}, 1.0) == []
    assert problems({"enum": ["a", 1, None]}, True) == ['$: expected one of "a", 1, null, got true']
    assert problems({"const": {"a": [1, 2]}}, {"a": [1, 2.0]}) == []
    assert problems({"const": {"a": [1, 2]}}, {"a": [2, 1]}) == ['$: expected {"a": [1, 2]}']
    assert problems({"const": False}, 0) == ["$: expected false"]
    assert problems({"const": 0}, False) == ["$: expected 0"]


def test_number_bounds() -> None:
    schema = {"minimum": 1, "maximum": 10, "exclusiveMinimum": 0, "exclusiveMaximum": 10}

    assert problems(schema, 1) == []
    assert problems(schema, 9.5) == []
    assert problems(schema, 0) == ["$: must be >= 1, got 0", "$: must be > 0, got 0"]
    assert problems(schema, 10) == ["$: must be < 10, got 10"]
    assert problems(schema, "not a number") == []  # bounds are for numbers only


def test_string_length_counts_code_points() -> None:
    schema = {"minLength": 2, "maxLength": 3}

    assert problems(schema, "日本") == []
    assert problems(schema, "é") == ["$: must have at least 2 characters, got 1"]
    assert problems(schema, "abcd") == ["$: must have at most 3 characters, got 4"]
    assert problems(schema, 12345) == []


def test_pattern_is_searched_not_anchored() -> None:
    assert problems({"pattern": "[0-9]"}, "abc1") == []
    assert problems({"pattern": "^[0-9]+$"}, "abc1") == ['$: must match the pattern "^[0-9]+$"']


def test_any_of_reports_each_branch() -> None:
    schema = {"anyOf": [{"type": "string", "maxLength": 1}, {"type": "integer", "minimum": 0}]}

    assert problems(schema, "a") == []
    assert problems(schema, 3) == []
    assert problems(schema, -1) == [
        "$: matches no schema in anyOf (anyOf[0]: $: expected string, got integer -1"
        " | anyOf[1]: $: must be >= 0, got -1)"
    ]


def test_a_wrong_type_hides_the_other_problems_of_that_value() -> None:
    assert problems({"type": "string", "enum": ["a"], "minLength": 3}, 1) == [
        "$: expected string, got integer 1"
    ]


def test_annotations_are_ignored() -> None:
    schema = {
        "type": "string",
        "title": "T",
        "description": "D",
        "default": "x",
        "examples": ["y"],
        "format": "email",
    }

    assert problems(schema, "not an email") == []
    assert {"title", "description", "default", "examples", "format"} <= SUPPORTED_KEYWORDS


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$ref": "#/$defs/x"}, "#/$ref: unsupported JSON Schema keyword '$ref'"),
        ({"oneOf": []}, "#/oneOf: unsupported JSON Schema keyword 'oneOf'"),
        (
            {"properties": {"a/b": {"items": {"allOf": []}}}},
            "#/properties/a~1b/items/allOf: unsupported JSON Schema keyword 'allOf'",
        ),
        (
            {"anyOf": [{"type": "string"}, {"not": {}}]},
            "#/anyOf/1/not: unsupported JSON Schema keyword 'not'",
        ),
        ({"additionalProperties": {"type": "string"}}, "#/additionalProperties: must be true"),
        ({"items": [{"type": "string"}]}, "#/items: must be one schema"),
        ({"type": "float"}, "#/type: must be one of string, integer, number"),
        ({"type": []}, "#/type: must be one of"),
        ({"type": ["string", "string"]}, "#/type: must be one of"),
        ({"required": "name"}, "#/required: must be a list of strings"),
        ({"enum": []}, "#/enum: must be a non-empty list"),
        ({"minimum": "1"}, "#/minimum: must be a number, got string"),
        ({"minimum": True}, "#/minimum: must be a number, got boolean true"),
        ({"minLength": -1}, "#/minLength: must be a non-negative integer, got -1"),
        ({"maxItems": 1.0}, "#/maxItems: must be a non-negative integer, got 1.0"),
        ({"pattern": "("}, "#/pattern: invalid regular expression '('"),
        ({"anyOf": []}, "#/anyOf: must be a non-empty list of schemas"),
        ({"properties": {"a": True}}, "#/properties/a: a schema must be a JSON object"),
    ],
)
def test_load_rejects_what_is_outside_the_subset(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError) as raised:
        load(schema)

    assert str(raised.value).startswith(message)


def test_loads_takes_json() -> None:
    assert loads(b'{"type": "integer"}').problems(3) == []
    with pytest.raises(SchemaError, match="not valid JSON"):
        loads(b"{")
    with pytest.raises(SchemaError, match="a schema must be a JSON object, got boolean true"):
        loads(b"true")
