"""How a run's `deps` are made from the caller's data.

The caller (Elixir) can only send data: the run's `deps_json`. An agent gets
its run's deps from it in one of two ways, decided when the agent is loaded:

* with a deps factory (`"package.module:function"`, the agent's
  `deps_factory` option): the factory is called per run with the data,
  validated against its first parameter's annotation when it has one (plain
  JSON data otherwise; a factory with no parameter is called with none). It
  may be sync or async. What it returns is the run's deps, unless it is a
  context manager (sync or async): then the deps are what entering it gives,
  and it is exited when the run ends, however it ends (result, failure,
  cancellation). This is how deps that cannot come from data (a database
  connection, an HTTP client) are built.
* without: the data is validated into the agent's `deps_type` with Pydantic
  (`TypeAdapter`, JSON mode: a date may come as "2025-01-10"). An agent that
  declares no `deps_type` (pydantic-ai's default, `object`) gets the data as
  plain JSON values (dicts, lists, ...); one whose `deps_type` is `None` gets
  None.

No data (`deps:` not given) gives the factory None, and an agent without a
factory no deps (None), as a Python caller passing none would. Data that
does not validate is INVALID_ARGUMENT with Pydantic's errors, their `loc`
starting with "deps". Deps that have no JSON form at all (meant for the
caller's own tools: a pid) arrive as `deps_error`: an agent that needs the
data fails the run with it, an agent that declares no deps gets None.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from synapse_python import _errors

_UNDECLARED: tuple[object, ...] = (object, Any)


@dataclass(frozen=True, slots=True)
class Deps:
    """The way one agent's runs get their deps; see the module docstring."""

    # Validates the data into the deps (or the factory's argument); None: plain JSON data.
    adapter: pydantic.TypeAdapter[Any] | None
    # Why the agent's deps_type cannot be made from data (set with no adapter).
    adapter_error: str | None
    factory: Callable[..., Any] | None
    factory_takes_data: bool
    # True when the agent declares no deps (deps_type None): data is ignored.
    ignored: bool
    description: str

    @classmethod
    def for_agent(cls, deps_type: object, factory: Callable[..., Any] | None, ref: str) -> Deps:
        """How runs of an agent with `deps_type` (and `factory`, from `ref`) get their deps."""
        if factory is not None:
            parameter = _first_parameter(factory)
            annotation = _annotation(factory, parameter) if parameter is not None else None
            adapter, error = _adapter(annotation) if annotation is not None else (None, None)
            if error is not None:
                raise TypeError(f"the deps factory {ref}: {error}")
            return cls(
                adapter=adapter,
                adapter_error=None,
                factory=factory,
                factory_takes_data=parameter is not None,
                ignored=False,
                description=f"the deps factory {ref}",
            )
        if deps_type is type(None) or deps_type is None:
            return cls(None, None, None, False, ignored=True, description="")
        if deps_type in _UNDECLARED:
            return cls(None, None, None, False, ignored=False, description="")
        adapter, error = _adapter(deps_type)
        return cls(
            adapter=adapter,
            adapter_error=error,
            factory=None,
            factory_takes_data=False,
            ignored=False,
            description=f"the agent's deps_type {_type_name(deps_type)}",
        )

    async def enter(self, stack: contextlib.AsyncExitStack, data: bytes | None, error: str) -> Any:
        """The deps of one run made from its `data` (None: not given).

        A factory's context manager is entered on `stack`, which the run
        closes when it ends.
        """
        if self.ignored:
            return None
        declared = self.factory is not None or self.adapter is not None or self.adapter_error
        if error:
            if not declared:
                return None  # the deps are for the caller's tools only
            raise _errors.invalid_argument(
                f"deps: {error}; {self.description} needs data with a JSON form"
            )
        if self.factory is None:
            if data is None:
                return None
            return self._validated(data)
        if not self.factory_takes_data:
            made = self.factory()
        else:
            made = self.factory(None if data is None else self._validated(data))
        if inspect.isawaitable(made):
            made = await made
        if isinstance(made, contextlib.AbstractAsyncContextManager):
            return await stack.enter_async_context(made)
        if isinstance(made, contextlib.AbstractContextManager):
            return stack.enter_context(made)
        return made

    def _validated(self, data: bytes) -> Any:
        if self.adapter_error is not None:
            raise _errors.invalid_argument(
                f"deps: {self.description} cannot be made from data ({self.adapter_error}); "
                "give the agent a deps factory"
            )
        if self.adapter is None:
            return _plain(data)
        try:
            return self.adapter.validate_json(data)
        except pydantic.ValidationError as exc:
            errors = [
                {**error, "loc": ("deps", *error["loc"])}
                for error in exc.errors(include_url=False, include_input=False)
            ]
            raise _errors.validation_failed(
                f"deps do not validate into {self.description}: "
                + _errors.summarize_validation_error(exc),
                errors,
                cause=exc,
            ) from exc


def _plain(data: bytes) -> Any:
    try:
        return pydantic.TypeAdapter(Any).validate_json(data)
    except pydantic.ValidationError as exc:
        raise _errors.invalid_argument(f"deps are not valid JSON: {exc}", cause=exc) from exc


def _adapter(annotation: object) -> tuple[pydantic.TypeAdapter[Any] | None, str | None]:
    try:
        return pydantic.TypeAdapter(annotation), None
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as exc:
        return None, f"{_type_name(annotation)} has no schema Pydantic can validate: {exc}"


def _first_parameter(function: Callable[..., Any]) -> inspect.Parameter | None:
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return parameter
        if parameter.kind is parameter.VAR_POSITIONAL:
            return parameter
    return None


def _annotation(function: Callable[..., Any], parameter: inspect.Parameter) -> object | None:
    if parameter.kind is parameter.VAR_POSITIONAL:
        return None
    hints = typing.get_type_hints(function)
    annotation = hints.get(parameter.name)
    return None if annotation in _UNDECLARED else annotation


def _type_name(annotation: object) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)
