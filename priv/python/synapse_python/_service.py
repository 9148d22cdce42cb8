"""The `synapse.v1.AgentService` servicer and its gRPC handler table.

The handler table is built from the generated descriptor, not written by hand:
the `.proto` stays the single list of methods, and a method the servicer does
not implement fails at startup instead of answering UNIMPLEMENTED at run time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from synapse_python import _agents, _client_tools, _convert, _errors, _server
from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.service")

SERVICE: ServiceDescriptor = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
SERVICE_NAME: str = SERVICE.full_name

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# The agent id of the call being handled, for logs; set as soon as it is known
# (a streaming call learns it from its first message). Each RPC runs in its own
# task, hence its own context.
_call_agent_id: contextvars.ContextVar[str] = contextvars.ContextVar("call_agent_id", default="")


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
        _call_agent_id.set(getattr(request, "agent_id", ""))
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
                    output_schema_json=request.spec.output_schema_json,
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
        if request.tools:
            raise _errors.invalid_argument(
                "tools need the Run stream (RunSync cannot ask the client)"
            )
        agent, arguments = self._run_arguments(request)
        result = await agent.run(**arguments)
        return _convert.run_result(result)

    @_reports_errors
    async def Run(  # named as in agent.proto
        self, requests: AsyncIterator[agent_pb2.RunInput], context: grpc.aio.ServicerContext
    ) -> None:
        """Stream a run's events; the client's first message is its `start` request.

        The run and the reading of the client's later messages are two tasks:
        the client keeps its side open during the run to answer the run's
        `tool_request`s with `tool_result`s (`_client_tools`), so the handler
        neither waits for it to half-close nor leaves the reader behind when the
        run ends. A client may half-close once it has no request to answer: a
        request then pending, or a later call of a client tool, ends the run
        with INVALID_ARGUMENT. Leaving this handler in any way (result written,
        error, or the RPC cancelled by the client, its deadline or the server
        stopping) cancels both tasks and waits for them, and cancels the tool
        requests still pending; `run_stream_events` cancels and drains
        pydantic-ai's background run when its context exits, so no model or
        tool call outlives the RPC.

        Messages are read with `context.read()`; `requests` (grpc's iterator
        over the same messages) is left alone.
        """
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("input") != "start":
            got = "end of stream" if first is grpc.aio.EOF else first.WhichOneof("input") or "empty"
            raise _errors.invalid_argument(
                f"the first RunInput of a Run must be `start`, got {got}"
            )
        start = first.start
        _call_agent_id.set(start.agent_id)
        agent, arguments = self._run_arguments(start)
        tools = _client_tools.ClientTools(start.tools, agent)
        if tools.toolset is not None:
            arguments["toolsets"] = [tools.toolset]
        run = asyncio.create_task(
            _stream_run(agent, arguments, context, quiet=start.quiet), name="synapse-run"
        )
        inputs = asyncio.create_task(_read_run_inputs(context, tools), name="synapse-run-inputs")
        try:
            await asyncio.wait((run, inputs), return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                inputs.result()  # raises a protocol error; returns on the client's half-close
                tools.input_closed()
            await run
        finally:
            for task in (run, inputs):
                task.cancel()
            await asyncio.gather(run, inputs, return_exceptions=True)
            tools.close()

    def _run_arguments(
        self, request: agent_pb2.RunRequest
    ) -> tuple[_agents.AnyAgent, dict[str, Any]]:
        """The agent `request` names and the arguments of its pydantic-ai run."""
        loaded = self._registry.get(request.agent_id)
        if loaded is None:
            raise _errors.not_found(f"no agent loaded with id {request.agent_id!r}")
        return loaded.agent, {
            # An empty prompt continues from the history without a new user message.
            "user_prompt": request.prompt or None,
            "message_history": _convert.parse_message_history(request.message_history_json),
            "model_settings": _convert.parse_model_settings(request.model_settings_json),
            "usage_limits": _convert.parse_usage_limits(request.usage_limits_json),
            "model": loaded.model,
            # pydantic-ai would otherwise name the agent after a local variable of ours.
            "infer_name": False,
        }


async def _stream_run(
    agent: _agents.AnyAgent,
    arguments: dict[str, Any],
    context: grpc.aio.ServicerContext,
    *,
    quiet: bool,
) -> None:
    """Run `agent`, writing each event that has a wire form (the result last).

    This is the only writer of the stream: client tool requests are events of
    the run too (`_client_tools.ToolRequested`), written in their place.

    `context.write` returns once gRPC's flow control accepts the message, and
    pydantic-ai's event stream has no buffer: a slow reader slows the run down.
    """
    async with agent.run_stream_events(**arguments) as events:
        async for event in events:
            message = _convert.run_event(event, quiet=quiet)
            if message is not None:
                await context.write(message)


async def _read_run_inputs(
    context: grpc.aio.ServicerContext, tools: _client_tools.ClientTools
) -> None:
    """Read the client's messages after `start` until it half-closes.

    Each `tool_result` answers its tool request (`ClientTools.resolve`). Any
    other message (another `start`, an empty `RunInput`) or a malformed
    `tool_result` is a protocol error: it ends the run with INVALID_ARGUMENT. A
    read that fails means the RPC is ending (finished, aborted, server
    stopped): that is the handler's business, not the client's input, so it
    ends the reading quietly.
    """
    while True:
        try:
            message = await context.read()
        except Exception as exc:
            logger.debug("Run stopped reading its inputs: %s: %s", _errors.type_name(exc), exc)
            return
        if message is grpc.aio.EOF:
            return
        kind = message.WhichOneof("input")
        if kind != "tool_result":
            raise _errors.invalid_argument(
                f"unexpected {kind or 'an empty RunInput'} after a Run's `start`"
            )
        tools.resolve(message.tool_result)


def generic_handler(
    servicer: object,
) -> tuple[grpc.GenericRpcHandler, dict[str, grpc.RpcMethodHandler]]:
    """The handlers of every method of `synapse.v1.AgentService`, bound to `servicer`.

    Returns the generic handler and the method table (for
    `add_registered_method_handlers`, grpc's faster path), as generated code does.
    """
    table = _server.method_table(SERVICE, servicer)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, table), table


def _describe(request: object) -> str:
    agent_id = _call_agent_id.get()
    if agent_id:
        return f"agent {agent_id!r}"
    return type(request).__name__ if isinstance(request, Message) else "before its first message"
