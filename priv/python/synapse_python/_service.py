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

from synapse_python import _agents, _errors, _lane, _run, _server
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
            if error.kind is agent_pb2.ERROR_KIND_PYTHON_ERROR:
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
    `agent.run` coroutines on the worker's event loop. A run's failures are
    its last event (`RunFailure`), not a status: see `_run`.
    """

    def __init__(
        self,
        registry: _agents.AgentRegistry,
        loaded: Callable[[], None] | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> None:
        self._registry = registry
        self._loaded = loaded  # called after each agent this service loads
        # The server's cap on a message: a run's failure keeps under it.
        self._max_message_bytes = max_message_bytes

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
                    spec_json=request.spec.spec_json,
                    spec_file_text=request.spec.spec_file_text,
                    spec_file_format=request.spec.spec_file_format,
                    spec_file_path=request.spec.spec_file_path,
                )
            case _:
                raise _errors.invalid_argument("LoadAgentRequest needs a ref or a spec")
        try:
            loaded = await _agents.load(
                request.agent_id,
                source,
                model=request.model or None,
                deps_factory=request.deps_factory or None,
            )
        except _errors.SynapseError:
            raise  # already classified: a spec that does not validate
        except (Exception, SystemExit) as exc:
            # SystemExit too: a user module calling sys.exit() at import must fail
            # the load, not stop the event loop and the whole worker.
            logger.warning(
                "loading agent %r failed: %s: %s", request.agent_id, _errors.type_name(exc), exc
            )
            raise _errors.load_failed(exc) from exc
        self._registry.put(loaded)
        logger.info("loaded agent %r (%s)", loaded.agent_id, loaded.output_kind)
        if self._loaded is not None:
            self._loaded()
        return agent_pb2.LoadAgentResponse(
            agent_id=loaded.agent_id, name=loaded.name, output_kind=loaded.output_kind
        )

    async def RunSync(  # named as in agent.proto
        self, request: agent_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RunEvent:
        """A quiet run (`_run.Run`); its last event is the response."""
        _call_agent_id.set(request.agent_id)
        if request.tools or request.inline_approvals:
            return _failed(
                _errors.invalid_argument(
                    "tools need the Run stream, and so do inline approvals "
                    "(RunSync cannot ask the client)"
                )
            )

        async def no_events(event: agent_pb2.RunEvent) -> None:
            raise _errors.invalid_argument("RunSync cannot send events")

        run = _run.Run(
            self._registry,
            request,
            no_events,
            quiet=True,
            max_message_bytes=self._max_message_bytes,
        )
        return await _cancellation_logged(run.execute(), run)

    async def Run(  # named as in agent.proto
        self, requests: AsyncIterator[agent_pb2.RunInput], context: grpc.aio.ServicerContext
    ) -> None:
        """A run (`_run.Run`) whose events go out on the stream; the first message is its `start`.

        The run is one task, and the client's later messages are handed to
        it as they come (`_hand_inputs`): the client keeps its side open
        during the run to answer the run's `tool_request`s with
        `tool_result`s, or to `cancel` it, so the handler neither waits for
        it to half-close nor leaves the reading behind when the run ends. A
        client may half-close once it has no request to answer: a request
        then pending, or a later call of a client tool, fails the run with
        INVALID_ARGUMENT, as does a message that breaks the protocol.

        The run's last event is written last, once the run is over (deps
        cleaned up included), and the handler returns right after: a client
        that drops the call as soon as it has the result cancels nothing. The
        RPC ending before that (cancelled by the client, its deadline, the
        server stopping) cancels the run.

        Messages are read with `context.read()`; `requests` (grpc's iterator
        over the same messages) is left alone. The response's headers go out
        first (`_headers_now`).
        """
        await _headers_now(context)
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("input") != "start":
            got = "end of stream" if first is grpc.aio.EOF else first.WhichOneof("input") or "empty"
            await context.write(
                _failed(
                    _errors.invalid_argument(
                        f"the first RunInput of a Run must be `start`, got {got}"
                    )
                )
            )
            return
        start = first.start
        _call_agent_id.set(start.agent_id)
        run = _run.Run(
            self._registry,
            start,
            context.write,
            quiet=start.quiet,
            max_message_bytes=self._max_message_bytes,
        )
        stop_inputs = _hand_inputs(context, run)
        try:
            last = await _cancellation_logged(run.execute(), run)
        finally:
            stop_inputs()
        await context.write(last)


async def _headers_now(context: grpc.aio.ServicerContext) -> None:
    """Send the response's headers as the run starts, not with its first event.

    A gRPC client's HTTP/2 stack keeps what waits for a response's headers
    until they come: under the NIF's tonic, hyper's task per call and the
    futures waiting with it, about 3 KB a call. A quiet run's only message
    is its last, so without this each run in flight held them for its whole
    life. (A unary call's headers, RunSync's, leave with its response
    whatever the handler asks: grpc's server sends them together.) Runs on
    the lane have no headers (`LaneContext`).
    """
    await context.send_initial_metadata(())


async def _cancellation_logged(
    execution: Awaitable[agent_pb2.RunEvent], run: _run.Run
) -> agent_pb2.RunEvent:
    try:
        return await execution
    except asyncio.CancelledError:
        logger.info("run of agent %r cancelled: its call ended first", run.agent_id)
        raise


def _failed(error: _errors.SynapseError) -> agent_pb2.RunEvent:
    logger.warning("run refused: %s", error.message)
    return agent_pb2.RunEvent(failure=agent_pb2.RunFailure(error=error.detail()))


def _hand_inputs(context: grpc.aio.ServicerContext, run: _run.Run) -> Callable[[], None]:
    """Hands the run the client's messages after `start`; returns what stops that.

    On the lane, each is handed over in the callback that reads it; over
    gRPC, a task reads them (`_read_run_inputs`).
    """
    if isinstance(context, _lane.LaneContext):
        return context.hand_requests_to(run.deliver, run.input_closed, run.broken)
    inputs = asyncio.create_task(_read_run_inputs(context, run), name="synapse-run-inputs")
    return inputs.cancel


async def _read_run_inputs(context: grpc.aio.ServicerContext, run: _run.Run) -> None:
    """Read the client's messages after `start` and hand them to the run until it half-closes.

    A read that fails means the RPC is ending (finished, cancelled, server
    stopped): that is the handler's business, not the client's input, so it
    ends the reading quietly.
    """
    while not run.done:
        try:
            message = await context.read()
        except Exception as exc:
            logger.debug("Run stopped reading its inputs: %s: %s", _errors.type_name(exc), exc)
            return
        if message is grpc.aio.EOF:
            run.input_closed()
            return
        run.deliver(message)


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
