"""The gRPC service of a generated bridge, as a worker serves it (`--bridge MODULE`).

A generated server module (`synapse_bridge_<module>.py`) builds one
`BridgeService` from its sibling `<module>.ir.json` and `<module>.desc` and the
live functions. Each RPC:

1. reads the request into raw values (`_codec`) and validates each parameter
   with Pydantic (its annotation and `Field` constraints), collecting every
   error with its full location; unset parameters take their Python defaults
   (a call of a function whose parameters are all plain scalars, with every
   argument set, takes the request's values as they are: Pydantic's checks
   would hand them on unchanged);
2. calls the function: a sync function in a worker thread (`_threads.SyncThreads`,
   the worker's, where a function still running after its call ended counts as a
   stuck thread; it never blocks the event loop; on the lane, the call waits
   for the thread's outcome with no task or future, or, on the connection the
   Elixir client keeps for these calls, is read and answered by a thread of
   the lane's own with no hop at all: `_lane.answer_in_thread`), or directly on the loop when the
   bridge's config marks it `on_loop` (no thread hop, but nothing else runs
   meanwhile; on the lane, such a call is answered as its request is read,
   with no task: `_lane.answer_at_once`), an `async def` awaited, an async
   generator iterated with each item written as it comes (`context.write`
   waits for flow control: a slow reader slows the generator down);
3. writes the result, strictly (an int beyond int64 is an error).

Failures: invalid arguments, or a `pydantic.ValidationError` raised by the
function, are INVALID_ARGUMENT with the errors as data (`_errors.validation_failed`);
any other exception is classified by `_errors.from_run_exception` (UNKNOWN
`python_error` with its type, message and traceback). A client that cancels,
or whose deadline passes, cancels the call's task: an `async def` or async
generator gets `CancelledError` at its current `await` (a generator is then
closed, running its `finally`); a sync function's thread cannot be interrupted
and runs to its end, its result discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pydantic
from google.protobuf.message import Message

from synapse_python import _errors, _lane
from synapse_python._awaitables import Later, is_awaitable
from synapse_python._bridge import _introspect, _proto_gen
from synapse_python._bridge._codec import (
    _AS_IS,
    Codec,
    InvalidArguments,
    summarize,
    validation_errors,
)
from synapse_python._bridge._config import resolve_type
from synapse_python._bridge._ir import IR, CustomType, Function, module_stem
from synapse_python._threads import SyncThreads, as_failure

logger = logging.getLogger("synapse_python.bridge")

_AS_THEY_ARE = _AS_IS - {"custom"}
"""The kinds whose request field the codec reads as it is and whose value is
already the Python type Pydantic's check of the plain annotation wants
(a custom type's field holds the scalar it travels as, which the check
turns into the type): for them, with no constraint, the check changes
nothing."""


class StaleBridgeError(RuntimeError):
    """The generated files no longer describe the Python module: regenerate them."""


class BridgeService:
    """The gRPC service of one bridged module.

    Built by the generated server module with `BridgeService.load`; a worker
    registers `handlers()` on its server.
    """

    def __init__(
        self,
        introspection: _introspect.Introspection,
        descriptor_set: bytes,
    ) -> None:
        self.ir: IR = introspection.ir
        self._codec = Codec(self.ir, descriptor_set, introspection.classes)
        self._functions = introspection.functions
        self._adapters = {
            name: {
                spec.name: pydantic.TypeAdapter(spec.annotation)
                for spec in introspection.params[name]
            }
            for name in self._functions
        }
        # Each function's parameters in order: name, whether positional-only, default.
        self._parameters = {
            name: [
                (parameter.name, parameter.kind is parameter.POSITIONAL_ONLY, parameter.default)
                for parameter in inspect.signature(function).parameters.values()
            ]
            for name, function in self._functions.items()
        }
        # Each function's reader of its arguments from a request and writer of
        # its responses, each sync function's answerer, and the callers of
        # `on_loop` functions: made once, used per call.
        self._write_response = {
            function.name: self._codec.response_writer(function) for function in self.ir.functions
        }
        self._arguments = {
            function.name: self._arguments_reader(function) for function in self.ir.functions
        }
        self._answers = {
            function.name: self._answerer(function)
            for function in self.ir.functions
            if function.kind == "sync"
        }
        self._on_loop = {
            function.name: self._on_loop_caller(function)
            for function in self.ir.functions
            if function.on_loop
        }
        # Where sync functions run: a pool of this service's, until `handlers`
        # is given the worker's.
        self._threads = SyncThreads()

    @property
    def name(self) -> str:
        """The full gRPC service name, e.g. `synapse.bridge.my_module.MyModule`."""
        return self.ir.full_service

    @classmethod
    def load(
        cls,
        generated_file: str | os.PathLike[str],
        module: Any,
        functions: Mapping[str, Callable[..., Any]],
    ) -> BridgeService:
        """The service described by the files next to `generated_file`, for `functions`.

        Reads `<module>.ir.json` and `<module>.desc` from the generated
        module's directory, describes the live `functions` of `module` again
        and refuses (`StaleBridgeError`) when the wire contract differs from the
        generated one: the Elixir client would send messages this server
        cannot read.
        """
        directory = Path(generated_file).resolve().parent
        stem = module_stem(module.__name__)
        stored = IR.from_json(
            json.loads((directory / f"{stem}.ir.json").read_text(encoding="utf-8"))
        )
        descriptor_set = (directory / f"{stem}.desc").read_bytes()
        custom_types = {
            resolve_type(type_def.python): type_def.of.kind
            for type_def in stored.types.values()
            if isinstance(type_def, CustomType)
        }
        live = _introspect.introspect(
            module,
            list(functions.items()),
            service=stored.service,
            custom_types=custom_types,
            on_loop=[function.name for function in stored.functions if function.on_loop],
        )
        if _proto_gen.render(live.ir, comments=False) != _proto_gen.render(stored, comments=False):
            raise StaleBridgeError(
                f"the bridge generated in {directory} no longer matches the Python module "
                f"{module.__name__}: regenerate it (python -m synapse_python.bridge generate "
                f"--module {module.__name__} ...)"
            )
        return cls(live, descriptor_set)

    def handlers(
        self, threads: SyncThreads | None = None
    ) -> tuple[grpc.GenericRpcHandler, dict[str, grpc.RpcMethodHandler]]:
        """The generic handler and the method table, for a grpc.aio server.

        Sync functions run in `threads` (a worker gives its own), or in a pool
        of this service's.
        """
        if threads is not None:
            self._threads = threads
        table: dict[str, grpc.RpcMethodHandler] = {}
        for function in self.ir.functions:
            request_class = self._codec.message_class(function.request)
            response_class = self._codec.message_class(function.response)
            make = (
                grpc.unary_stream_rpc_method_handler
                if function.kind == "stream"
                else grpc.unary_unary_rpc_method_handler
            )
            table[function.rpc] = make(
                self._handler(function),
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(self.name, table), table

    # ---- one call ----

    def _handler(
        self, function: Function
    ) -> Callable[[Message, grpc.aio.ServicerContext], Awaitable[Any]]:
        call = self._stream if function.kind == "stream" else self._unary

        async def handle(request: Message, context: grpc.aio.ServicerContext) -> Any:
            return await self._guarded(function, call(function, request, context), context)

        handle.__name__ = function.rpc
        if function.on_loop:
            _lane.answer_at_once(handle, self._direct_answerer(function))
        elif function.kind == "sync":
            _lane.answer_at_once(handle, self._thread_starter(function))
            # On a connection of the lane that threads read: in the thread.
            _lane.answer_in_thread(handle, self._direct_answerer(function))
        return handle

    def _direct_answerer(self, function: Function) -> Callable[[Message], Any]:
        """On the lane, a call of a sync function answered where its request
        is read (on the loop for an `on_loop` function, else in the thread
        that read it): its arguments, the function and its response in one
        closure (what `_refusing` around `_on_loop_caller` does, written out:
        each Python call is a good part of what such a call costs)."""
        arguments = self._arguments[function.name]
        target = self._functions[function.name]
        write_response = self._write_response[function.name]

        def answer(request: Message) -> Message | Awaitable[Message]:
            try:
                args, kwargs = arguments(request)
                result = target(*args, **kwargs)
                if is_awaitable(result):  # a decorator hid a coroutine function
                    return self._refused_later(function, self._respond_later(function, result))
                return write_response(result)
            except BaseException as exc:
                raise self._refused(function, as_failure(exc)) from None

        return answer

    def _thread_starter(self, function: Function) -> _lane.AtOnce:
        """On the lane, a call of a sync function: its arguments read on the
        loop, then the function and its response's writing in a worker thread,
        whose `Later` the lane waits for with no task."""
        arguments = self._arguments[function.name]
        respond = self._refusing(function, self._answers[function.name])

        def start(request: Message) -> Later:
            try:
                args, kwargs = arguments(request)
            except Exception as exc:
                raise self._refused(function, exc) from None
            return self._threads.start(respond, args, kwargs)

        return start

    def _refusing(self, function: Function, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call`, its failure (or that of the awaitable it returns, once
        awaited) raised as `_lane.Refused` with the error it stands for."""

        def refusing(*args: Any) -> Any:
            try:
                response = call(*args)
            except BaseException as exc:
                raise self._refused(function, as_failure(exc)) from None
            if is_awaitable(response):
                return self._refused_later(function, response)
            return response

        return refusing

    async def _refused_later(self, function: Function, work: Awaitable[Any]) -> Any:
        """What `work` returns; if it raises, `_lane.Refused` with the error it stands for."""
        try:
            return await work
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                logger.info("%s cancelled", self._describe(function))
                raise
            # Raised by the function, which was not cancelled (it awaited
            # something cancelled elsewhere): a failure like any other; as
            # the cancellation it looks like, the call would never end.
            raise self._refused(function, as_failure(exc)) from None
        except grpc.aio.AbortError:  # the call's context ended it already
            raise
        except Exception as exc:
            raise self._refused(function, exc) from None

    def _refused(self, function: Function, exc: Exception) -> _lane.Refused:
        return _lane.Refused(*_errors.abort_status(self._error(function, exc)))

    async def _guarded(
        self, function: Function, work: Awaitable[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        """What `work` returns; if it raises, the call ends with the error it stands for."""
        try:
            return await self._refused_later(function, work)
        except _lane.Refused as refused:
            await context.abort(
                refused.code, refused.details, trailing_metadata=refused.trailing_metadata
            )

    def _error(self, function: Function, exc: Exception) -> _errors.SynapseError:
        """The error a function's failure stands for (logged)."""
        if isinstance(exc, _errors.SynapseError):
            return exc
        if isinstance(exc, InvalidArguments):
            logger.info("%s: invalid arguments: %s", self._describe(function), exc)
            return _errors.validation_failed(str(exc), exc.errors)
        if isinstance(exc, pydantic.ValidationError):
            errors = validation_errors(exc)
            logger.info("%s raised %s", self._describe(function), summarize(errors))
            # No cause: its traceback's message holds the values (`input_value`).
            return _errors.validation_failed(summarize(errors), errors)
        error = _errors.from_run_exception(exc)
        logger.error("%s failed", self._describe(function), exc_info=exc)
        return error

    async def _unary(
        self, function: Function, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        if function.on_loop:
            response = self._on_loop[function.name](request)
            return await response if is_awaitable(response) else response
        args, kwargs = self._arguments[function.name](request)
        target = self._functions[function.name]
        if function.kind == "sync":
            result = await self._threads.run(target, *args, **kwargs)
            if is_awaitable(result):  # a decorator hid a coroutine function
                result = await result
        else:
            result = await target(*args, **kwargs)
        return self._write_response[function.name](result)

    def _answerer(
        self, function: Function
    ) -> Callable[[list[Any], dict[str, Any]], Message | Awaitable[Message]]:
        """What calls a sync function with its arguments: its response, or an
        awaitable of it when the function returned one (a decorator hid a
        coroutine function). Made once per function: the lookups are done."""
        target = self._functions[function.name]
        write_response = self._write_response[function.name]

        def answer(args: list[Any], kwargs: dict[str, Any]) -> Message | Awaitable[Message]:
            result = target(*args, **kwargs)
            if is_awaitable(result):
                return self._respond_later(function, result)
            return write_response(result)

        return answer

    def _on_loop_caller(
        self, function: Function
    ) -> Callable[[Message], Message | Awaitable[Message]]:
        """What answers a request of an `on_loop` function (`_answerer`'s answer)."""
        arguments = self._arguments[function.name]
        answer = self._answers[function.name]

        def call(request: Message) -> Message | Awaitable[Message]:
            return answer(*arguments(request))

        return call

    async def _respond_later(self, function: Function, result: Awaitable[Any]) -> Message:
        return self._write_response[function.name](await result)

    async def _stream(
        self, function: Function, request: Message, context: grpc.aio.ServicerContext
    ) -> None:
        args, kwargs = self._arguments[function.name](request)
        items: AsyncIterator[Any] = self._functions[function.name](*args, **kwargs)
        try:
            async for item in items:
                await context.write(self._write_response[function.name](item))
        finally:
            with contextlib.suppress(Exception):
                await items.aclose()  # type: ignore[attr-defined]

    def _arguments_reader(
        self, function: Function
    ) -> Callable[[Message], tuple[list[Any], dict[str, Any]]]:
        """What reads the validated arguments of a call of `function` from its
        request: positional-only ones, then the rest by name."""
        read_request = self._codec.request_reader(function)
        adapters = self._adapters[function.name]
        # The adapter's validator itself: `TypeAdapter.validate_python` only
        # forwards to it, at a cost per call the size of the check.
        checks = [
            (param.name, param.required, adapters[param.name].validator.validate_python)
            for param in function.params
        ]
        parameters = self._parameters[function.name]

        def read(request: Message) -> tuple[list[Any], dict[str, Any]]:
            raw = read_request(request)
            values: dict[str, Any] = {}
            errors: list[dict[str, Any]] = []
            for name, required, validate in checks:
                if name not in raw:
                    if required:
                        errors.append({"loc": [name], "msg": "Field required", "type": "missing"})
                    continue
                try:
                    values[name] = validate(raw[name], by_alias=False, by_name=True)
                except pydantic.ValidationError as exc:
                    errors.extend(validation_errors(exc, (name,)))
            if errors:
                raise InvalidArguments(errors)
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for name, positional_only, default in parameters:
                if positional_only:
                    args.append(values.get(name, default))
                elif name in values:
                    kwargs[name] = values[name]
            return args, kwargs

        if not self._takes_fields_as_they_are(function):
            return read
        order = [(name, positional_only) for name, positional_only, _default in parameters]

        def read_as_they_are(request: Message) -> tuple[list[Any], dict[str, Any]]:
            # Every argument set: each field's value is what `read` would hand
            # on. One unset (a default to take, or a missing argument): `read`.
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for name, positional_only in order:
                if not request.HasField(name):
                    return read(request)
                if positional_only:
                    args.append(getattr(request, name))
                else:
                    kwargs[name] = getattr(request, name)
            return args, kwargs

        return read_as_they_are

    def _takes_fields_as_they_are(self, function: Function) -> bool:
        """Whether every parameter of `function` is a scalar Pydantic checks
        with no constraint, conversion or validator of its own (a plain `int`,
        `float`, `bool`, `str` or `bytes`, a `NewType` of one): its check then
        hands back the request field's value unchanged, as the field's type
        is the one the check wants, so a call with every argument set can
        skip the checks. Asked once per function."""
        adapters = self._adapters[function.name]
        signature = [name for name, _positional_only, _default in self._parameters[function.name]]
        if sorted(signature) != sorted(param.name for param in function.params):
            return False  # a parameter the bridge leaves out takes its default
        for param in function.params:
            schema = adapters[param.name].core_schema
            if schema["type"] == "default":
                schema = schema["schema"]  # a default's wrapper checks a given value with this
            # Only JSON Schema's hints live in `metadata`: validation never reads it.
            checks = {key: value for key, value in schema.items() if key != "metadata"}
            if param.type.kind not in _AS_THEY_ARE or checks != {"type": param.type.kind}:
                return False
        return True

    def _describe(self, function: Function) -> str:
        return f"{self.ir.module}.{function.name}"
