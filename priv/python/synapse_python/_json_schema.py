"""A small JSON Schema validator for the subset Synapse supports.

Schemas given from Elixir (an agent's structured output today, tool arguments
later, validated on the Elixir side with the same rules) are plain JSON Schema
restricted to a documented subset, so that every side of Synapse validates a
value the same way. `load` checks a schema against the subset and returns a
`Schema`; `Schema.problems` lists what is wrong with a value.

Supported keywords:

| keyword                                | for     | meaning                                    |
|----------------------------------------|---------|--------------------------------------------|
| `type`                                 | any     | a type name, or a non-empty list of them   |
| `properties`                           | objects | property name → schema of its value        |
| `required`                             | objects | property names that must be present        |
| `additionalProperties`                 | objects | `false` forbids names not in `properties`  |
| `items`                                | arrays  | one schema every item must match           |
| `enum`                                 | any     | non-empty list; equal to one of them       |
| `const`                                | any     | equal to this                              |
| `minimum`, `maximum`                   | numbers | inclusive bounds                           |
| `exclusiveMinimum`, `exclusiveMaximum` | numbers | exclusive bounds (numbers, not booleans)   |
| `minLength`, `maxLength`               | strings | length bounds, in Unicode code points      |
| `pattern`                              | strings | a regular expression the string contains   |
| `minItems`, `maxItems`                 | arrays  | bounds on the number of items              |
| `anyOf`                                | any     | non-empty list; matches at least one       |

`title`, `description`, `default`, `examples` and `format` are annotations,
accepted and ignored (`format` is not checked).

Any other keyword (`$ref`, `oneOf`, `allOf`, `not`, `if`, `patternProperties`,
`$schema`, ...) makes `load` fail with a `SchemaError` naming the keyword and
where it is. A schema is always a JSON object (not `true`/`false`).

Semantics, kept simple on purpose:

- Types: `string`, `integer`, `number`, `boolean`, `null`, `object`, `array`.
  Booleans are neither integers nor numbers. An integer is a JSON number
  written without a fraction or exponent (`3`, not `3.0`: stricter than JSON
  Schema, so a value that passes is an integer in every language). Integers
  are numbers.
- Keywords for one kind of value (see the table) ignore values of other kinds,
  as in JSON Schema: `{"minimum": 1}` accepts `"x"`; combine with `type`.
- Equality (`enum`, `const`) is JSON equality: `1` equals `1.0`, `true` does
  not equal `1`, objects compare by keys and values, arrays item by item.
- `pattern` is searched (not anchored: use `^...$`) with Python's `re`; keep
  to the syntax common to ECMAScript, Python and PCRE (classes, quantifiers,
  groups, alternation, anchors, `\\d \\w \\s`).
- Lengths count Unicode code points, not bytes or graphemes ("é" as one
  precomposed code point is 1; in Elixir that is `length(String.to_charlist(s))`,
  not `String.length/1`).
- `required` is checked even for names missing from `properties`.
- All problems are reported, except that a value of the wrong `type` reports
  only that. Inside `anyOf`, a value matching no branch reports one problem
  that lists each branch's problems.

Problems carry the path of the offending value: `$` is the root, `.name` a
property (`["odd key"]` for a key that is not an identifier), `[0]` an item.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format"})

_MAX_ANY_OF_DETAILS = 3
_MAX_DUMP_CHARS = 80
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SchemaError(ValueError):
    """The schema is not valid JSON Schema or uses something outside the supported subset."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a value does not match its schema."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Schema:
    """A schema checked against the supported subset; see the module docstring."""

    __slots__ = ("_patterns", "raw")

    def __init__(self, raw: Mapping[str, Any], patterns: Mapping[str, re.Pattern[str]]) -> None:
        self.raw = raw
        self._patterns = patterns

    def problems(self, value: object) -> list[Problem]:
        """Everything wrong with `value` (a decoded JSON value); empty if it conforms."""
        problems: list[Problem] = []
        self._check(self.raw, value, "$", problems)
        return problems

    def is_valid(self, value: object) -> bool:
        return not self.problems(value)

    def _check(
        self, schema: Mapping[str, Any], value: object, path: str, problems: list[Problem]
    ) -> None:
        if "type" in schema:
            expected = schema["type"]
            names = [expected] if isinstance(expected, str) else expected
            if not any(_is_type(value, name) for name in names):
                problems.append(
                    Problem(path, f"expected {' or '.join(names)}, got {_describe(value)}")
                )
                return

        if "const" in schema and not _json_equal(value, schema["const"]):
            problems.append(Problem(path, f"expected {_dump(schema['const'])}"))
        if "enum" in schema and not any(_json_equal(value, option) for option in schema["enum"]):
            options = ", ".join(_dump(option) for option in schema["enum"])
            problems.append(Problem(path, f"expected one of {options}, got {_dump(value)}"))

        if _is_type(value, "number"):
            self._check_number(schema, value, path, problems)  # type: ignore[arg-type]
        elif isinstance(value, str):
            self._check_string(schema, value, path, problems)
        elif isinstance(value, list):
            self._check_array(schema, value, path, problems)
        elif isinstance(value, dict):
            self._check_object(schema, value, path, problems)

        if "anyOf" in schema:
            self._check_any_of(schema["anyOf"], value, path, problems)

    def _check_number(
        self, schema: Mapping[str, Any], value: float, path: str, problems: list[Problem]
    ) -> None:
        for keyword, fails, relation in _NUMBER_BOUNDS:
            if keyword in schema and fails(value, schema[keyword]):
                problems.append(Problem(path, f"must be {relation} {schema[keyword]}, got {value}"))

    def _check_string(
        self, schema: Mapping[str, Any], value: str, path: str, problems: list[Problem]
    ) -> None:
        length = len(value)
        if "minLength" in schema and length < schema["minLength"]:
            problems.append(
                Problem(
                    path,
                    f"must have at least {_count(schema['minLength'], 'character')}, got {length}",
                )
            )
        if "maxLength" in schema and length > schema["maxLength"]:
            problems.append(
                Problem(
                    path,
                    f"must have at most {_count(schema['maxLength'], 'character')}, got {length}",
                )
            )
        if "pattern" in schema and not self._patterns[schema["pattern"]].search(value):
            problems.append(Problem(path, f"must match the pattern {_dump(schema['pattern'])}"))

    def _check_array(
        self, schema: Mapping[str, Any], value: list[Any], path: str, problems: list[Problem]
    ) -> None:
        count = len(value)
        if "minItems" in schema and count < schema["minItems"]:
            problems.append(
                Problem(
                    path, f"must have at least {_count(schema['minItems'], 'item')}, got {count}"
                )
            )
        if "maxItems" in schema and count > schema["maxItems"]:
            problems.append(
                Problem(
                    path, f"must have at most {_count(schema['maxItems'], 'item')}, got {count}"
                )
            )
        if "items" in schema:
            for index, item in enumerate(value):
                self._check(schema["items"], item, f"{path}[{index}]", problems)

    def _check_object(
        self, schema: Mapping[str, Any], value: dict[str, Any], path: str, problems: list[Problem]
    ) -> None:
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(Problem(path, f"missing required property {_dump(name)}"))
        for name, item in value.items():
            if name in properties:
                self._check(properties[name], item, _property_path(path, name), problems)
            elif schema.get("additionalProperties") is False:
                problems.append(Problem(_property_path(path, name), "unexpected property"))

    def _check_any_of(
        self, branches: list[Mapping[str, Any]], value: object, path: str, problems: list[Problem]
    ) -> None:
        details: list[str] = []
        for index, branch in enumerate(branches):
            branch_problems: list[Problem] = []
            self._check(branch, value, path, branch_problems)
            if not branch_problems:
                return
            if index < _MAX_ANY_OF_DETAILS:
                details.append(f"anyOf[{index}]: " + "; ".join(map(str, branch_problems)))
        if len(branches) > _MAX_ANY_OF_DETAILS:
            details.append(f"and {len(branches) - _MAX_ANY_OF_DETAILS} more")
        problems.append(Problem(path, "matches no schema in anyOf (" + " | ".join(details) + ")"))


def load(schema: object) -> Schema:
    """Check `schema` (a decoded JSON value) against the supported subset.

    Raises `SchemaError` naming the offending keyword and its location as a JSON
    pointer (`#/properties/pets/items`).
    """
    patterns: dict[str, re.Pattern[str]] = {}
    _check_schema(schema, "#", patterns)
    assert isinstance(schema, dict)
    return Schema(schema, patterns)


def loads(data: str | bytes) -> Schema:
    """`load` of a JSON document; invalid JSON is a `SchemaError` too."""
    try:
        decoded = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"the schema is not valid JSON: {exc}") from exc
    return load(decoded)


def _check_schema(schema: object, where: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: a schema must be a JSON object, got {_describe(schema)}")
    for keyword, value in schema.items():
        at = f"{where}/{_escape_pointer(keyword)}"
        if keyword in ANNOTATIONS:
            continue
        check = _KEYWORD_CHECKS.get(keyword)
        if check is None:
            raise SchemaError(f"{at}: unsupported JSON Schema keyword {keyword!r}")
        check(value, at, patterns)


def _check_type(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    names = [value] if isinstance(value, str) else value
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(name, str) and name in TYPES for name in names)
        or len(set(names)) != len(names)
    ):
        raise SchemaError(
            f"{at}: must be one of {', '.join(TYPES)} or a non-empty list of them, "
            f"got {_dump(value)}"
        )


def _check_properties(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, dict):
        raise SchemaError(f"{at}: must be an object, got {_describe(value)}")
    for name, subschema in value.items():
        _check_schema(subschema, f"{at}/{_escape_pointer(name)}", patterns)


def _check_required(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise SchemaError(f"{at}: must be a list of strings, got {_dump(value)}")


def _check_additional_properties(
    value: object, at: str, patterns: dict[str, re.Pattern[str]]
) -> None:
    if not isinstance(value, bool):
        raise SchemaError(
            f"{at}: must be true or false (schemas are not supported), got {_describe(value)}"
        )


def _check_items(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, dict):
        raise SchemaError(
            f"{at}: must be one schema (tuple forms are not supported), got {_describe(value)}"
        )
    _check_schema(value, at, patterns)


def _check_enum(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{at}: must be a non-empty list, got {_dump(value)}")


def _check_const(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    pass  # any JSON value


def _check_bound(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not _is_type(value, "number"):
        raise SchemaError(f"{at}: must be a number, got {_describe(value)}")


def _check_count(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not _is_type(value, "integer") or value < 0:  # type: ignore[operator]
        raise SchemaError(f"{at}: must be a non-negative integer, got {_dump(value)}")


def _check_pattern(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, str):
        raise SchemaError(f"{at}: must be a string, got {_describe(value)}")
    try:
        patterns[value] = re.compile(value)
    except re.error as exc:
        raise SchemaError(f"{at}: invalid regular expression {value!r}: {exc}") from exc


def _check_any_of(value: object, at: str, patterns: dict[str, re.Pattern[str]]) -> None:
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{at}: must be a non-empty list of schemas, got {_dump(value)}")
    for index, subschema in enumerate(value):
        _check_schema(subschema, f"{at}/{index}", patterns)


_KEYWORD_CHECKS: dict[str, Callable[[object, str, dict[str, re.Pattern[str]]], None]] = {
    "type": _check_type,
    "properties": _check_properties,
    "required": _check_required,
    "additionalProperties": _check_additional_properties,
    "items": _check_items,
    "enum": _check_enum,
    "const": _check_const,
    "minimum": _check_bound,
    "maximum": _check_bound,
    "exclusiveMinimum": _check_bound,
    "exclusiveMaximum": _check_bound,
    "minLength": _check_count,
    "maxLength": _check_count,
    "pattern": _check_pattern,
    "minItems": _check_count,
    "maxItems": _check_count,
    "anyOf": _check_any_of,
}

SUPPORTED_KEYWORDS = frozenset(_KEYWORD_CHECKS) | ANNOTATIONS

_NUMBER_BOUNDS: tuple[tuple[str, Callable[[float, float], bool], str], ...] = (
    ("minimum", lambda value, bound: value < bound, ">="),
    ("maximum", lambda value, bound: value > bound, "<="),
    ("exclusiveMinimum", lambda value, bound: value <= bound, ">"),
    ("exclusiveMaximum", lambda value, bound: value >= bound, "<"),
)


def _is_type(value: object, name: str) -> bool:
    match name:
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and math.isfinite(value)
            )
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case _:
            return False


def _json_equal(left: object, right: object) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_type(left, "number") and _is_type(right, "number"):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


def _describe(value: object) -> str:
    """The JSON type of `value`, for messages ("integer 3", "string", "object", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {_dump(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _dump(value: object) -> str:
    """`value` as JSON, shortened: messages go to a model and into error details."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_DUMP_CHARS else text[: _MAX_DUMP_CHARS - 1] + "…"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _property_path(path: str, name: str) -> str:
    if _IDENTIFIER.fullmatch(name):
        return f"{path}.{name}"
    return f"{path}[{_dump(name)}]"


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
