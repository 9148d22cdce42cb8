"""The `synapse.v1.AgentService` servicer and its gRPC handler table.

The handler table is built from the generated descriptor, not written by hand:
the `.proto` stays the single list of methods, and a method the servicer does
not implement fails at startup instead of answering UNIMPLEMENTED at run time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from synapse_python import _agents, _convert, _errors
from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.service")

SERVICE: ServiceDescriptor = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
SERVICE_NAME: str = SERVICE.full_name

_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)


def _reports_errors(
    handler: Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]],
) -> Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """Turn what a handler raises into a status carrying an `ErrorDetail`.

    `SynapseError`s are already classified; any other exception is one the run
    raised (`_errors.from_run_exception`). `asyncio.CancelledError` (the client
    cancelled, or its deadline passed, or the server is stopping) is logged and
    re-raised: grpc.aio owns the RPC's end then, and swallowing it would keep
    cancelled work running.
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, request: _Request, context: grpc.aio.ServicerContext) -> _Response:
        try:
            return await handler(self, request, context)
        except asyncio.CancelledError:
            logger.info("%s cancelled (%s)", handler.__name__, _describe(request))
            raise
        except grpc.aio.AbortError:
            raise
        except _errors.SynapseError as exc:
            error = exc
        except Exception as exc:
            error = _errors.from_run_exception(exc)
            if error.kind is _errors.ErrorKind.PYTHON_ERROR:
                logger.exception("%s failed (%s)", handler.__name__, _describe(request))
            else:
                logger.warning(
                    "%s failed (%s): %s: %s",
                    handler.__name__,
                    _describe(request),
                    _errors.type_name(exc),
                    exc,
                )
        await _errors.abort(context, error)

    return wrapper


class AgentService:
    """Loads agents into a registry and runs them, one pydantic-ai run per RPC.

    Runs are not serialized: N concurrent `RunSync` calls are N concurrent
    `agent.run` coroutines on the worker's event loop.
    """

    def __init__(self, registry: _agents.AgentRegistry) -> None:
        self._registry = registry

    @_reports_errors
    async def LoadAgent(  # named as in agent.proto
        self, request: agent_pb2.LoadAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.LoadAgentResponse:
        if not request.agent_id:
            raise _errors.invalid_argument("agent_id must not be empty")
        source: str | _agents.AgentSpec
        match request.WhichOneof("source"):
            case "ref":
                source = request.ref
            case "spec":
                source = _agents.AgentSpec(
                    model=request.spec.model,
                    instructions=request.spec.instructions,
                    name=request.spec.name,
                )
            case _:
                raise _errors.invalid_argument("LoadAgentRequest needs a ref or a spec")
        try:
            loaded = await _agents.load(request.agent_id, source, model=request.model or None)
        except (Exception, SystemExit) as exc:
            # SystemExit too: a user module calling sys.exit() at import must fail
            # the load, not stop the event loop and the whole worker.
            logger.warning(
                "loading agent %r failed: %s: %s", request.agent_id, _errors.type_name(exc), exc
            )
            raise _errors.load_failed(exc) from exc
        self._registry.put(loaded)
        logger.info("loaded agent %r (%s)", loaded.agent_id, loaded.output_kind)
        return agent_pb2.LoadAgentResponse(
            agent_id=loaded.agent_id, name=loaded.name, output_kind=loaded.output_kind
        )

    @_reports_errors
    async def RunSync(  # named as in agent.proto
        self, request: agent_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RunResult:
        loaded = self._registry.get(request.agent_id)
        if loaded is None:
            raise _errors.not_found(f"no agent loaded with id {request.agent_id!r}")
        history = _convert.parse_message_history(request.message_history_json)
        settings = _convert.parse_model_settings(request.model_settings_json)
        result = await loaded.agent.run(
            # An empty prompt continues from the history without a new user message.
            request.prompt or None,
            message_history=history,
            model_settings=settings,
            model=loaded.model,
            # pydantic-ai would otherwise name the agent after a local variable of ours.
            infer_name=False,
        )
        return _convert.run_result(result)


def generic_handler(
    servicer: object,
) -> tuple[grpc.GenericRpcHandler, dict[str, grpc.RpcMethodHandler]]:
    """The handlers of every method of `synapse.v1.AgentService`, bound to `servicer`.

    Returns the generic handler and the method table (for
    `add_registered_method_handlers`, grpc's faster path), as generated code does.
    """
    table: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            raise TypeError(
                f"{type(servicer).__name__} does not implement {SERVICE_NAME}/{method.name}"
            )
        make = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        table[method.name] = make(
            implementation,
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, table), table


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _describe(request: Message) -> str:
    agent_id = getattr(request, "agent_id", "")
    return f"agent {agent_id!r}" if agent_id else type(request).__name__
