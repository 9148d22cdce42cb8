"""A bridge config's module (test/support/bridge/custom.json): custom types, on_loop.

The config carries Decimal and UUID as protobuf strings; the Elixir side
converts `Decimal` with `SynapseCore.TestDecimal` and leaves `UUID` a string.
It marks the `on_the_loop*` functions to be called on the worker's event loop;
the `in_a_thread*` ones run in a worker thread, as sync functions do by default.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import uuid
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field


class Price(BaseModel):
    """An amount of money."""

    amount: Decimal = Field(description="Exact, never a float.")
    currency: str = "EUR"


def total(prices: list[Price], discount: Decimal = Decimal("0")) -> Decimal:
    """The sum of `prices`, less `discount`."""
    return sum((price.amount for price in prices), Decimal(0)) - discount


def scale(amount: Decimal, exponent: int) -> Decimal:
    """`amount` times 10 ** `exponent` (`Decimal("1").scaleb(2)` is written `1E+2`)."""
    return amount.scaleb(exponent)


def order_id(number: int) -> uuid.UUID:
    """A UUID made from `number`."""
    return uuid.UUID(int=number)


def echo_id(id: uuid.UUID | None, others: list[uuid.UUID] = []) -> list[uuid.UUID]:  # noqa: B006
    """`id` (when given), then `others`, as Python read them."""
    return ([id] if id is not None else []) + others


def on_the_loop() -> str:
    """The name of the thread it runs in (the config says: the event loop's)."""
    return threading.current_thread().name


_seen: contextvars.ContextVar[bool] = contextvars.ContextVar("seen", default=False)


def on_the_loop_checked(count: Annotated[int, Field(ge=0)], fail: str = "") -> list[int]:
    """`count` numbers from 0, or a failure: `fail` "value" raises a ValueError,
    "model" a Pydantic ValidationError. Each call must find a context variable it
    sets unset: a call has its own context, as a task would."""
    if _seen.get():
        raise RuntimeError("a context variable leaked from another call")
    _seen.set(True)
    if fail == "value":
        raise ValueError("no counting today")
    if fail == "model":
        Price.model_validate({"amount": "not money"})
    return list(range(count))


def _plain(function: Callable[..., Coroutine[Any, Any, str]]) -> Callable[..., Any]:
    """Hides a coroutine function behind a plain one, as some decorators do."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


@_plain
async def on_the_loop_later(count: int, fail: bool = False) -> str:
    """Waits (a plain function on the loop that returns a coroutine), then says
    so, or fails when `fail`."""
    await asyncio.sleep(0.01)
    if fail:
        raise ValueError(f"{count} was too late")
    return f"{count} after waiting in {threading.current_thread().name}"


def in_a_thread() -> str:
    """The name of the thread it runs in (a worker thread)."""
    return threading.current_thread().name


def in_a_thread_checked(count: Annotated[int, Field(ge=0)], fail: str = "") -> list[int]:
    """`on_the_loop_checked`, in a worker thread (the config does not mark it)."""
    return on_the_loop_checked(count, fail)


@_plain
async def in_a_thread_later(count: int, fail: bool = False) -> str:
    """`on_the_loop_later`, but its plain function is called in a worker thread
    (the coroutine it returns is awaited on the loop)."""
    return await on_the_loop_later(count, fail)


def not_exported(x: int) -> int:
    """Left out by the config's `functions`."""
    return x
