"""Tools the client executes (Elixir functions), for one `Run`.

Each `ToolDef` of a `RunRequest` becomes a pydantic-ai tool in a
`FunctionToolset`, which joins the agent's own tools for that run (`attach`;
with pydantic-ai's `requires_approval` when the definition asks for it). The
tool made from a definition, and the toolset made from a run's list of them,
are kept for the runs that send the same again (an agent's runs all do, and
making them is most of what a run's client tools cost): a tool's function
asks the client tools of the run that calls it, which `attach` makes the
run's in a context variable. Calling one asks the client over the run's
stream and waits for its answer (`_pending.PendingRequests`):

1. the tool's function takes the next `request_id` of the run ("1", "2", ...),
   registers a future under it and sends a `tool_request` itself, through the
   run's sender (`_run.Send`). Not through pydantic-ai's event stream: a run
   with no stream consumer has none (its model requests are not streamed),
   and in a streamed run the client routes tool requests apart from the
   events anyway;
2. the run's input (`_service._hand_inputs`) hands each `tool_result` to `resolve`, which
   completes the future with the same `request_id`: `return_json` is decoded
   and returned to the model, `retry_message` is raised as `ModelRetry` (the
   model gets it as a retry prompt, within the tool's retry budget),
   `failed_message` as `ToolFailed` (a failed result, no retry used);
3. the future is dropped when the call ends in any way (answered, or its task
   cancelled with the run), so nothing outlives the run; `close` cancels any
   left over.

Parallel tool calls of one model response run as concurrent tasks in
pydantic-ai, so their requests are all in flight at once and may be answered
in any order.

A `tool_result` naming no pending request (unknown, or already answered, or
for a call that was cancelled) is logged and ignored. A malformed one (no
outcome, `return_json` that is not JSON) is a protocol error: INVALID_ARGUMENT.
Once the client has half-closed its side it can answer nothing: a request
still pending ends the run, and so does a later call of a client tool, both
with INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic_ai import Agent, ModelRetry, RunContext, Tool, ToolFailed
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.toolsets import FunctionToolset
from pydantic_core import SchemaValidator, core_schema

from synapse_python import _convert, _errors
from synapse_python._pending import PendingRequests
from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.service")

# The arguments of a client tool reach the client as they came from the model:
# checking them against the tool's JSON schema is the client's business (it
# answers a `retry_message` when they do not conform). They must be a JSON
# object, though, to be passed on as keyword arguments; anything else goes back
# to the model as a validation error. (`Tool.from_schema` validates nothing.)
_ARGS_VALIDATOR = SchemaValidator(core_schema.dict_schema(core_schema.str_schema()))

_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

# The client tools of the run in progress: what a client tool's function asks.
# Set around the run (`ClientTools.attach`), so that the `Tool` made from a
# definition serves every run that sends the same one (`_cached_tool`).
_running: contextvars.ContextVar[ClientTools] = contextvars.ContextVar("synapse_client_tools")

# Distinct tool definitions whose `Tool` is kept for the runs that send them again.
_CACHED_TOOLS = 256


@dataclass(frozen=True, slots=True)
class _Retry:
    message: str


@dataclass(frozen=True, slots=True)
class _Failed:
    message: str


class ClientTools:
    """The client's tools of one run and its tool requests awaiting an answer.

    Everything runs on the event loop's thread: no lock.
    """

    def __init__(
        self,
        defs: Sequence[agent_pb2.ToolDef],
        agent: AbstractAgent[Any, Any],
        send: Callable[[agent_pb2.RunEvent], Awaitable[None]],
    ) -> None:
        """Check `defs` (INVALID_ARGUMENT for a bad one) and build their tools.

        `send` sends the tool requests (one writer at a time: the caller's business).
        """
        self._send = send
        self.toolset: FunctionToolset[Any] | None = None
        if defs:
            self.toolset = _cached_toolset(tuple(d.SerializeToString() for d in defs))
            taken = _function_tool_names(agent)
            for name in self.toolset.tools:
                if name in taken:
                    raise _twice(name)
        self._requests = PendingRequests("tool requests")

    def attach(
        self, agent: AbstractAgent[Any, Any], arguments: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Any]:
        """Give the run of `agent` with `arguments` these tools; enter what this returns around it.

        pydantic-ai combines an agent's toolsets with a run's `toolsets=` into a
        toolset that, at every step, asks each member in a task group of its
        own: a run given one tool that way costs a tenth more CPU than the
        same run with the tool on the agent. When the run behaves the same
        either way, the tools join the agent's own function tools for this run
        (`Agent.override(tools=...)`, a context variable: the agent and its
        other runs do not see them). That is when the agent's only toolset is
        its function toolset, with no default tool timeout (it would apply to
        these tools too), and the run adds no capability (whose toolset would
        come before these): the model then gets the same tools, in the same
        order, as from `toolsets=`, which is used otherwise. The one trace of
        the join is on the tools' definitions, which the model is not sent:
        their `toolset_id` is the agent's.
        """
        if self.toolset is None:
            return contextlib.nullcontext()
        own = agent.toolsets if isinstance(agent, Agent) else ()
        if (
            len(own) == 1
            and isinstance(own[0], FunctionToolset)
            and own[0].timeout is None
            and "capabilities" not in arguments
        ):
            tools = [*own[0].tools.values(), *self.toolset.tools.values()]
            return self._running(agent.override(tools=tools))
        arguments["toolsets"] = [self.toolset]
        return self._running(contextlib.nullcontext())

    @contextlib.contextmanager
    def _running(self, within: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
        """`within`, with these tools as the run's (`_running`)."""
        token = _running.set(self)
        try:
            with within:
                yield
        finally:
            _running.reset(token)

    async def _request(self, ctx: RunContext[Any], name: str, args: dict[str, Any]) -> Any:
        if _convert.non_finite(args, "the arguments") is not None:
            # JSON has no form for them (`to_json` would write `Infinity`,
            # which the client cannot read as the arguments): the model is
            # told so, as of any other invalid arguments.
            raise ModelRetry(
                f"Invalid arguments for the tool {name}: a number that is not finite "
                "(NaN, Infinity, or beyond a double's range) has no JSON form. "
                "Call it again with arguments that match its parameters."
            )

        async def send(request_id: str) -> None:
            await self._send(
                agent_pb2.RunEvent(
                    tool_request=agent_pb2.ToolRequest(
                        request_id=request_id,
                        name=name,
                        args_json=pydantic_core.to_json(args),
                        max_retries=ctx.max_retries,
                        tool_call_id=ctx.tool_call_id or "",
                        run_id=ctx.run_id or "",
                        retry=ctx.retry,
                    )
                )
            )

        outcome = await self._requests.ask(
            send,
            f"tool {name!r} was called after the client half-closed the Run: "
            "it can no longer answer tool requests",
        )
        if isinstance(outcome, _Retry):
            raise ModelRetry(outcome.message)
        if isinstance(outcome, _Failed):
            raise ToolFailed(outcome.message)
        return outcome

    def resolve(self, result: agent_pb2.ToolResult) -> None:
        """Answer the request `result` names; one not pending is logged and ignored."""
        if not self._requests.is_pending(result.request_id):
            ignore_unknown(result)
            return
        match result.WhichOneof("outcome"):
            case "return_json":
                try:
                    value = json.loads(result.return_json)
                # Nested too deep for the parser (RecursionError): not valid
                # JSON to Python either.
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                    raise _errors.invalid_argument(
                        f"the tool_result for request {result.request_id!r}: "
                        f"return_json is not valid JSON: {exc}",
                        cause=exc,
                    ) from exc
                self._requests.answer(result.request_id, value)
            case "retry_message":
                self._requests.answer(result.request_id, _Retry(result.retry_message))
            case "failed_message":
                self._requests.answer(result.request_id, _Failed(result.failed_message))
            case _:
                raise _errors.invalid_argument(
                    f"the tool_result for request {result.request_id!r} "
                    "has no outcome (return_json, retry_message or failed_message)"
                )

    def input_closed(self) -> None:
        """The client half-closed: no answer can come any more.

        Raises INVALID_ARGUMENT if requests are pending; later calls raise it too.
        """
        self._requests.input_closed()

    def close(self) -> None:
        """Cancel every pending request (the run is over)."""
        self._requests.close()


@functools.lru_cache(maxsize=_CACHED_TOOLS)
def _cached_toolset(definitions: tuple[bytes, ...]) -> FunctionToolset[Any]:
    """The toolset of a run's serialized `ToolDef`s, made once per distinct list.

    Runs of an agent send the same definitions every time: a toolset serves
    every run that sends them, as an agent's own does. Raises
    INVALID_ARGUMENT for a bad definition or a name given twice (not kept).
    """
    tools: dict[str, Tool[Any]] = {}
    for definition in definitions:
        tool = _cached_tool(definition)
        if tool.name in tools:
            raise _twice(tool.name)
        tools[tool.name] = tool
    return FunctionToolset(list(tools.values()))


def _twice(name: str) -> _errors.SynapseError:
    return _errors.invalid_argument(
        f"tool {name!r} is defined twice (in the run's tools or the agent's)"
    )


@functools.lru_cache(maxsize=_CACHED_TOOLS)
def _cached_tool(definition: bytes) -> Tool[Any]:
    """The pydantic-ai tool of a serialized `ToolDef`, made once per distinct one.

    Raises INVALID_ARGUMENT for a bad definition (not kept: the next run
    that sends it is told again). The tool asks the client tools of the run
    that calls it (`_running`): one `Tool` serves every run, as an agent's own
    tools do.
    """
    tool_def = agent_pb2.ToolDef.FromString(definition)
    name = tool_def.name
    if not name:
        raise _errors.invalid_argument("a ToolDef needs a name")
    schema = _parameters(tool_def)

    async def call_client(ctx: RunContext[Any], /, **args: Any) -> Any:
        return await _running.get()._request(ctx, name, args)

    tool = Tool.from_schema(call_client, name, tool_def.description or None, schema, takes_ctx=True)
    tool.function_schema.validator = _ARGS_VALIDATOR
    if tool_def.HasField("max_retries"):
        if tool_def.max_retries < 0:
            raise _errors.invalid_argument(
                f"tool {name!r}: max_retries must be >= 0, got {tool_def.max_retries}"
            )
        tool.max_retries = tool_def.max_retries
    tool.requires_approval = tool_def.requires_approval
    return tool


def ignore_unknown(result: agent_pb2.ToolResult) -> None:
    """Log a `tool_result` that answers no pending request."""
    logger.warning(
        "ignoring a tool_result for request %r: no such request is pending "
        "(unknown, already answered, or its call was cancelled)",
        result.request_id,
    )


def _parameters(tool_def: agent_pb2.ToolDef) -> dict[str, Any]:
    if not tool_def.parameters_json:
        return dict(_NO_PARAMETERS)
    try:
        schema = json.loads(tool_def.parameters_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _errors.invalid_argument(
            f"tool {tool_def.name!r}: parameters_json is not valid JSON: {exc}", cause=exc
        ) from exc
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _errors.invalid_argument(
            f'tool {tool_def.name!r}: parameters_json must be a JSON Schema with "type": "object"'
        )
    return schema


def _function_tool_names(agent: AbstractAgent[Any, Any]) -> set[str]:
    """The names of the agent's own function tools (those a client tool must not shadow).

    Tools from other toolsets (MCP servers, ...) are only known during a run:
    a clash with one of those fails the run with pydantic-ai's `UserError`.
    """
    names: set[str] = set()
    for toolset in getattr(agent, "toolsets", ()):
        if isinstance(toolset, FunctionToolset):
            names.update(toolset.tools)
    return names
