"""Every type the Synapse Bridge supports, across sync, async and streaming functions.

The Bridge's test fixture: the Python and Elixir suites generate a bridge for
this module and check that each function called through it returns what
calling it directly returns. All functions but the `slow*` ones and `wait` are pure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from enum import IntEnum, StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

# What `slow` and `slow_stream` saw of their cancellation (the tests read it).
CANCELLED: list[str] = []


class Color(StrEnum):
    """A colour (a str Enum)."""

    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Priority(IntEnum):
    """How urgent (an int Enum)."""

    LOW = 1
    HIGH = 10


class Address(BaseModel):
    """Where someone lives."""

    street: str = Field(description="Street and number.", min_length=1, max_length=100)
    city: str
    postcode: str | None = Field(default=None, pattern=r"^[0-9]{5}$", description="Five digits.")


class Person(BaseModel):
    """A person, with a field of every kind."""

    name: str = Field(description="Full name.", min_length=1, max_length=50)
    age: int = Field(ge=0, le=150, description="Age in years.")
    height: float = 1.75
    active: bool = True
    nickname: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=10)
    scores: dict[str, float] = {}
    favourite: Color = Color.RED
    priority: Priority = Priority.LOW
    mode: Literal["fast", "slow"] = "fast"
    level: Literal[1, 2, 3] = 1
    address: Address | None = None
    born: dt.date | None = None
    last_seen: dt.datetime | None = None
    avatar: bytes = b""
    location: tuple[float, float] | None = None
    ident: int | str = 0
    friends: list[Person] = []
    matrix: list[list[int]] = []
    groups: dict[str, list[str]] = {"all": []}


class Team(BaseModel):
    """Models inside containers, and a required nested model."""

    lead: Person
    members: list[Person] = []
    by_city: dict[str, Address] = {}
    pairs: list[tuple[str, int]] = []


def describe(person: Person) -> str:
    """One line about `person`."""
    where = f" from {person.address.city}" if person.address else ""
    return f"{person.name} ({person.age}){where}, likes {person.favourite.value}"


def echo_person(person: Person) -> Person:
    """`person`, as validated."""
    return person


def team_summary(team: Team, *, include_lead: bool = True) -> dict[str, int]:
    """Ages by name."""
    people = ([team.lead] if include_lead else []) + team.members
    return {p.name: p.age for p in people}


def scalars(
    i: int, f: float, b: bool, s: str, raw: bytes, maybe: int | None = None
) -> tuple[int, float, bool, str, bytes]:
    """The scalars, transformed so that a mix-up shows."""
    return (i * 2 + (maybe or 0), f / 2, not b, s.upper(), raw[::-1])


def big_numbers(x: int) -> list[int]:
    """int64 at its edges (x itself comes back first)."""
    return [x, -(2**63), 2**63 - 1]


def overflow() -> int:
    """A result that does not fit in int64: an error, never a narrowed value."""
    return 2**64


async def add_days(day: dt.date, days: Annotated[int, Field(ge=-1000, le=1000)] = 1) -> dt.date:
    """`day` plus `days` (async def)."""
    await asyncio.sleep(0)
    return day + dt.timedelta(days=days)


async def shift(moment: dt.datetime, seconds: float = 0.0) -> dt.datetime:
    """`moment` plus `seconds`, in UTC (naive datetimes are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment + dt.timedelta(seconds=seconds)).astimezone(dt.UTC)


def containers(
    numbers: list[int],
    table: dict[str, int],
    nested: list[list[int]],
    optional_items: list[int | None],
    groups: dict[str, list[str]] | None = None,
    fixed: tuple[int, str, bool] = (0, "", False),
    many: tuple[int, ...] = (),
) -> dict[str, list[int]]:
    """Lists, dicts, wrappers and tuples in, a dict of lists out."""
    return {
        "numbers": sorted(numbers),
        "table": [table[key] for key in sorted(table)],
        "flat": [n for row in nested for n in row],
        "present": [n for n in optional_items if n is not None],
        "groups": [len(groups[key]) for key in sorted(groups)] if groups is not None else [],
        "fixed": [fixed[0], len(fixed[1]), int(fixed[2])],
        "many": list(many),
    }


def choose(
    value: int | str | Address,
    color: Color,
    priority: Priority,
    mode: Literal["a", "b"] = "a",
) -> str | int | None:
    """A union in, a union out (None for an Address)."""
    if isinstance(value, Address):
        return None
    if isinstance(value, int):
        return value * priority.value
    return f"{value}-{color.value}-{mode}"


def maybe_list(n: int | None) -> list[int] | None:
    """None for None, else range(n)."""
    return None if n is None else list(range(n))


def nothing(x: int) -> None:
    """Returns nothing."""
    del x


def fail(message: str) -> str:
    """Raises ValueError(message)."""
    raise ValueError(message)


async def count_up(start: int, stop: int, step: int = 1) -> AsyncIterator[int]:
    """start, start + step, ... up to stop (excluded): an async generator."""
    for n in range(start, stop, step):
        await asyncio.sleep(0)
        yield n


async def people(names: list[str], color: Color = Color.GREEN) -> AsyncIterator[Person]:
    """One Person per name, streamed."""
    for age, name in enumerate(names):
        yield Person(name=name, age=age, favourite=color, tags=[name.lower()])


async def slow(seconds: float, tag: str = "slow") -> str:
    """Sleeps; records its cancellation in CANCELLED."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        CANCELLED.append(tag)
        raise
    return tag


def wait(seconds: float) -> float:
    """Blocks its thread for `seconds` (no cancel can stop a sync function), then returns them."""
    time.sleep(seconds)
    return seconds


async def slow_stream(tag: str = "slow_stream") -> AsyncIterator[int]:
    """Yields 0, 1, 2, ... forever, slowly; records its end in CANCELLED."""
    n = 0
    try:
        while True:
            yield n
            n += 1
            await asyncio.sleep(0.05)
    finally:
        CANCELLED.append(tag)
