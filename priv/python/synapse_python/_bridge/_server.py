"""The gRPC service of a generated bridge, as a worker serves it (`--bridge MODULE`).

A generated server module (`synapse_bridge_<module>.py`) builds one
`BridgeService` from its sibling `<module>.ir.json` and `<module>.desc` and the
live functions. Each RPC:

1. reads the request into raw values (`_codec`) and validates each parameter
   with Pydantic (its annotation and `Field` constraints), collecting every
   error with its full location; unset parameters take their Python defaults;
2. calls the function: a sync function in a worker thread (`_threads.SyncThreads`,
   the worker's, where a function still running after its call ended counts as a
   stuck thread; it never blocks the event loop), or directly on the loop when the
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
from synapse_python._awaitables import is_awaitable
from synapse_python._bridge import _introspect, _proto_gen
from synapse_python._bridge._codec import (
    Codec,
    InvalidArguments,
    summarize,
    validation_errors,
)
from synapse_python._bridge._config import resolve_type
from synapse_python._bridge._ir import IR, CustomType, Function, module_stem
from synapse_python._threads import SyncThreads

logger = logging.getLogger("synapse_python.bridge")


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

            def at_once(request: Message, context: _lane.LaneContext) -> Any:
                try:
                    response = self._call_on_loop(function, request)
                except Exception as exc:
                    error = self._error(function, exc)
                else:
                    if is_awaitable(response):
                        return self._guarded(function, response, context)
                    return response
                context.fail(*_errors.abort_status(error))

            _lane.answer_at_once(handle, at_once)
        return handle

    async def _guarded(
        self, function: Function, work: Awaitable[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        """What `work` returns; if it raises, the call ends with the error it stands for."""
        try:
            return await work
        except asyncio.CancelledError:
            logger.info("%s cancelled", self._describe(function))
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            error = self._error(function, exc)
        await _errors.abort(context, error)

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
            return _errors.validation_failed(summarize(errors), errors, cause=exc)
        error = _errors.from_run_exception(exc)
        logger.error("%s failed", self._describe(function), exc_info=exc)
        return error

    async def _unary(
        self, function: Function, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        if function.on_loop:
            response = self._call_on_loop(function, request)
            return await response if is_awaitable(response) else response
        args, kwargs = self._arguments(function, request)
        target = self._functions[function.name]
        if function.kind == "sync":
            result = await self._threads.run(target, *args, **kwargs)
            if is_awaitable(result):  # a decorator hid a coroutine function
                result = await result
        else:
            result = await target(*args, **kwargs)
        return self._codec.write_response(function, result)

    def _call_on_loop(self, function: Function, request: Message) -> Message | Awaitable[Message]:
        """Calls an `on_loop` function: its response, or an awaitable of it when the
        function returned one (a decorator hid a coroutine function)."""
        args, kwargs = self._arguments(function, request)
        result = self._functions[function.name](*args, **kwargs)
        if is_awaitable(result):
            return self._respond_later(function, result)
        return self._codec.write_response(function, result)

    async def _respond_later(self, function: Function, result: Awaitable[Any]) -> Message:
        return self._codec.write_response(function, await result)

    async def _stream(
        self, function: Function, request: Message, context: grpc.aio.ServicerContext
    ) -> None:
        args, kwargs = self._arguments(function, request)
        items: AsyncIterator[Any] = self._functions[function.name](*args, **kwargs)
        try:
            async for item in items:
                await context.write(self._codec.write_response(function, item))
        finally:
            with contextlib.suppress(Exception):
                await items.aclose()  # type: ignore[attr-defined]

    def _arguments(self, function: Function, request: Message) -> tuple[list[Any], dict[str, Any]]:
        """The validated arguments of a call: positional-only ones, then the rest by name."""
        raw = self._codec.read_request(function, request)
        adapters = self._adapters[function.name]
        values: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for param in function.params:
            if param.name not in raw:
                if param.required:
                    errors.append({"loc": [param.name], "msg": "Field required", "type": "missing"})
                continue
            try:
                # The adapter's validator itself: `TypeAdapter.validate_python`
                # only forwards to it, at a cost per call the size of the check.
                values[param.name] = adapters[param.name].validator.validate_python(
                    raw[param.name], by_alias=False, by_name=True
                )
            except pydantic.ValidationError as exc:
                errors.extend(validation_errors(exc, (param.name,)))
        if errors:
            raise InvalidArguments(errors)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, positional_only, default in self._parameters[function.name]:
            if positional_only:
                args.append(values.get(name, default))
            elif name in values:
                kwargs[name] = values[name]
        return args, kwargs

    def _describe(self, function: Function) -> str:
        return f"{self.ir.module}.{function.name}"
