"""Whether a value can be awaited, for the calls answered per frame.

`inspect.isawaitable` asks `collections.abc.Awaitable`, an ABC: for the
plain values most calls return (a protobuf message, an int) its
`isinstance` check costs more than the rest of the test, and the Bridge's
path asks it up to three times per call. `await` itself accepts an object
whose type has an `__await__`, or a generator-based coroutine
(`types.coroutine`): the same question, asked of the type.
"""

from __future__ import annotations

import inspect
import types


def is_awaitable(value: object) -> bool:
    """True when `await value` would await it (what `inspect.isawaitable` answers)."""
    kind = type(value)
    if getattr(kind, "__await__", None) is not None:
        return True
    return kind is types.GeneratorType and bool(
        value.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE  # type: ignore[attr-defined]
    )
