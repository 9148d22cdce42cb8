"""`is_awaitable` answers what `await` accepts, as `inspect.isawaitable` does."""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import types
from collections.abc import Generator
from typing import Any

import pytest

from synapse_python._awaitables import is_awaitable
from synapse_python._proto.synapse.v1 import agent_pb2


class _WithAwait:
    def __await__(self) -> Generator[Any, None, int]:
        yield from ()
        return 1


class _AwaitIsNone:
    __await__ = None


@types.coroutine
def _generator_coroutine() -> Generator[Any, None, int]:
    yield from ()
    return 1


def _plain_generator() -> Generator[int, None, None]:
    yield 1


async def _native() -> int:
    return 1


def _cases(loop: asyncio.AbstractEventLoop) -> list[tuple[str, object]]:
    return [
        ("a coroutine", _native()),
        ("a future", loop.create_future()),
        ("a class with __await__", _WithAwait()),
        ("a subclass of one", type("Sub", (_WithAwait,), {})()),
        ("a generator-based coroutine", _generator_coroutine()),
        ("a plain generator", _plain_generator()),
        ("an int", 42),
        ("None", None),
        ("a protobuf message", agent_pb2.RunResult()),
        ("a class whose __await__ is None", _AwaitIsNone()),
        ("the class of an awaitable", _WithAwait),
    ]


def test_it_answers_as_inspect_does_for_every_kind_of_value() -> None:
    loop = asyncio.new_event_loop()
    try:
        for name, value in _cases(loop):
            assert is_awaitable(value) is inspect.isawaitable(value), name
            if inspect.iscoroutine(value):
                value.close()
    finally:
        loop.close()


def test_a_class_only_registered_as_awaitable_is_not_one() -> None:
    # The one difference: `inspect` trusts the ABC's registry, `await` does not.
    class Registered:
        pass

    collections.abc.Awaitable.register(Registered)
    value = Registered()
    assert inspect.isawaitable(value)
    assert not is_awaitable(value)

    async def awaits() -> None:
        await value  # type: ignore[misc]

    with pytest.raises(TypeError):
        asyncio.run(awaits())


def test_its_answer_kept_per_type_stays_right_past_the_types_it_keeps() -> None:
    # Asked again of the same types (the answer kept), and of more types than
    # it keeps (made at run time, half of them awaitable), then of the first again.
    loop = asyncio.new_event_loop()
    made = [type(f"Made{i}", (_WithAwait,) if i % 2 else (), {})() for i in range(600)]
    try:
        for _ in range(2):
            for name, value in [*_cases(loop), *((f"made {i}", v) for i, v in enumerate(made))]:
                assert is_awaitable(value) is inspect.isawaitable(value), name
                if inspect.iscoroutine(value):
                    value.close()
    finally:
        loop.close()
