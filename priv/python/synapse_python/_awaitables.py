"""Whether a value can be awaited, for the calls answered per frame; and
`Later`, work whose outcome comes back without a future.

`inspect.isawaitable` asks `collections.abc.Awaitable`, an ABC: for the
plain values most calls return (a protobuf message, an int) its
`isinstance` check costs more than the rest of the test, and the Bridge's
path asks it up to three times per call. `await` itself accepts an object
whose type has an `__await__`, or a generator-based coroutine
(`types.coroutine`): the same question, asked of the type. Asked of a
type without `__await__`, `getattr` raises and catches an AttributeError
inside: the answer is kept per type (a few of them, in practice).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

# Whether each type seen has an `__await__`; emptied when it holds more
# than `_TYPES_KEPT` (types made at run time would otherwise accumulate).
_has_await: dict[type, bool] = {}
_TYPES_KEPT = 256


def is_awaitable(value: object) -> bool:
    """True when `await value` would await it (what `inspect.isawaitable` answers)."""
    kind = type(value)
    awaits = _has_await.get(kind)
    if awaits is None:
        if len(_has_await) >= _TYPES_KEPT:
            _has_await.clear()
        awaits = _has_await[kind] = getattr(kind, "__await__", None) is not None
    if awaits:
        return True
    return kind is types.GeneratorType and bool(
        value.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE  # type: ignore[attr-defined]
    )


class Later:
    """Work that goes on elsewhere (a worker thread) and whose outcome comes
    back to the event loop: what a caller that must not wait in a task (a
    call the lane answers at once) holds instead of an `asyncio.Future`,
    which would cost a scheduled callback per waiter."""

    __slots__ = ()

    def then(self, done: Callable[[Any, BaseException | None], None]) -> None:
        """Have `done(result, None)`, or `done(None, exception)`, called on the
        event loop once the work ends, unless it was cancelled first or
        `early` took the outcome; at most one `done`, given before the loop
        runs again."""
        raise NotImplementedError

    def then_in_thread(self, early: Callable[[Any, BaseException | None], bool]) -> None:
        """Also have `early` called with the outcome in the thread that has it,
        as soon as it has it and before `done`, unless the work was cancelled
        first (what `early` may do there is its own business: it must be
        thread-safe). When `early` returns true it took the outcome in full:
        `done` is not called, and the loop is not woken for it. Work with no
        thread of its own never calls it."""

    def cancel(self) -> None:
        """Abandon the work: `done` is never called."""
        raise NotImplementedError
