"""Awkward but valid input for the Synapse Bridge: names that clash, deep nesting.

Model names that are Elixir modules (`Date`), parameter and field names that are
Elixir keywords or the client's own variables, wrappers inside wrappers, unions
with tuple, list and enum members, functions without parameters, a stream only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field


class Status(Enum):
    """A plain Enum with str values."""

    IN_PROGRESS = "in progress"
    done = "done"


class Date(BaseModel):
    """A model named like Elixir's `Date`."""

    day: dt.date
    end: int = 0
    do: str | None = None


class Node(BaseModel):
    """A tree."""

    label: str = Field(pattern=r"^[a-z]+$")
    children: list[Node] = []
    weights: dict[str, float | None] = {}


def keywords(server: int, opts: str, end: bool, request: list[int], _hidden: int = 0) -> str:
    """Parameters named like the client's variables and Elixir keywords."""
    return f"{server}-{opts}-{end}-{sum(request)}-{_hidden}"


def nesting(
    rows: list[list[int] | None],
    table: dict[str, dict[str, int]],
    maybe: dict[str, list[int]] | None,
    deep: list[dict[str, list[str | None]]],
) -> list[list[list[int]]]:
    """Wrappers in wrappers."""
    flat = [row or [] for row in rows]
    sizes = [len(values) for values in (maybe or {}).values()]
    return [flat, [[v for inner in table.values() for v in inner.values()]], [sizes, [len(deep)]]]


def unions(
    value: tuple[int, str] | list[int] | Status | dt.date | None,
    pair: tuple[Literal["x", "y"], Date | None],
) -> tuple[int, str] | list[int] | Status | dt.date | None:
    """A union with a tuple, a list, an enum and a date; a tuple with a Literal and a model."""
    del pair
    return value


def tree(node: Node) -> Node:
    """A recursive model."""
    return node


def today() -> Date:
    """No parameters."""
    return Date(day=dt.date(2024, 1, 2), end=3, do="x")


async def statuses(count: int) -> AsyncIterator[Status]:
    """A stream of enums."""
    for index in range(count):
        yield list(Status)[index % 2]
