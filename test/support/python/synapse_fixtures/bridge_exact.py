"""Values that must cross the Synapse Bridge exactly, or be refused.

The fixture of test/synapse_core/bridge_exact_test.exs: enums whose Elixir
values are not their protobuf numbers, `T | None` with defaults other than
None, maps and models given with awkward keys, results that do not fit their
type (or that only Python can hold).
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Literal

from pydantic import BaseModel


class Priority(IntEnum):
    """An int Enum whose values are not its positions."""

    LOW = 1
    HIGH = 10


class Shade(Enum):
    """A plain Enum with str values."""

    DARK = "dark"
    LIGHT = "light"


class Settings(BaseModel):
    """Optional fields with defaults other than None, and one without a default."""

    level: int | None = 5
    shade: Shade | None = Shade.LIGHT
    tags: list[str] | None = ["x"]
    note: str | None = None
    given: int | None


def priority(p: Priority) -> str:
    """The member's name."""
    return p.name


def level(value: Literal[10, 20, 30]) -> int:
    """The Literal as Python got it."""
    return value


def settings(s: Settings) -> Settings:
    """`s`, as validated."""
    return s


def options(
    level: int | None = 5,
    shade: Shade | None = Shade.LIGHT,
    tags: list[str] | None = ["x"],  # noqa: B006
    note: str | None = None,
) -> str:
    """The options as Python got them."""
    return repr((level, shade, tags, note))


def table(d: dict[str, int]) -> dict[str, int]:
    """`d`."""
    return d


def priority_or_int(value: int, member: bool) -> Priority | int:
    """`value`, as a Priority when `member`, else a plain int."""
    return Priority(value) if member else value


def shade_or_str(value: str, member: bool) -> Shade | str:
    """`value`, as a Shade when `member`, else a plain str."""
    return Shade(value) if member else value


def not_a_priority(what: str) -> Priority:
    """A result of the wrong type: a bool or a float equal to a member's value."""
    return {"bool": True, "float": 1.0}[what]  # type: ignore[return-value]


def lone_surrogate(where: str) -> dict[str, str]:
    """A str that UTF-8 cannot encode, as a value or as a key."""
    return {"value": {"k": "a\ud800"}, "key": {"\udc80": "v"}}[where]
