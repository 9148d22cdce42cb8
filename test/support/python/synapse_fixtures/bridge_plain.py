"""Bridge functions whose parameters are scalars, plain or not: the arguments
of a call with every one set are taken from the request as they are only when
Pydantic's checks would hand them on unchanged (`test_bridge_arguments.py`)."""

from __future__ import annotations

from typing import Annotated, NewType

from pydantic import Field, StringConstraints

UserId = NewType("UserId", int)


def plain(i: int, f: float, b: bool, s: str, raw: bytes) -> str:
    """Each argument's type and value, so that any conversion shows."""
    return repr([(type(value).__name__, value) for value in (i, f, b, s, raw)])


def positional(a: int, /, b: str = "default", *, c: float = 0.5) -> str:
    """A positional-only parameter, and defaults."""
    return repr((a, b, c))


def user(user_id: UserId) -> int:
    """A NewType of a plain scalar."""
    return user_id + 1


def constrained(
    n: Annotated[int, Field(ge=0)],
    label: Annotated[str, StringConstraints(strip_whitespace=True)],
) -> str:
    """Scalars with a constraint and a conversion of their own."""
    return f"{n}:{label}"


def mixed(n: int, tags: list[str]) -> str:
    """A plain scalar beside a list."""
    return f"{n}:{','.join(tags)}"
