"""One agent run, whatever transport carries it.

A `Run` is made from the run's `start` request and a coroutine that sends a
`RunEvent` to the client. `execute` runs the agent and returns the run's last
event (its `result` or its `failure`) once the run is over, deps cleaned up
included: the transport sends it, and nothing of the run is left to cancel.
What the client sends during the run (answers to tool requests, a cancel)
is handed to `deliver`; the end of the client's input to `input_closed`.
The gRPC `RunSync` and `Run` handlers (`_service`) are adapters over this.

The run is pydantic-ai's `agent.run`:

* quiet (`RunSync`, or `Run` with `quiet`): no event stream handler, so the
  model requests are not streamed, exactly as a Python caller's `agent.run`.
  Client tools still work: a client tool's call sends its `tool_request`
  from the tool's own coroutine.
* streamed (`Run` without `quiet`): an event stream handler sends every
  event as the model streams it (`_events`), and, with `partial_output`, the
  output validated so far.

Tool calls that need approval end the run with `DeferredToolRequests`, as in
pydantic-ai, unless the request asks for `inline_approvals`: then each is
asked of the client and waits for its decision (`_approvals`).

Every failure the run meets is returned as a `failure` event, not raised:
request problems (unknown agent, malformed fields), the run's exceptions
(`_errors.from_run_exception`), a cancel or a `timeout_ms` passing. Only
`asyncio.CancelledError` (the transport cancelled the call: its deadline,
the client going away, the server stopping) propagates, as it must.

A failure carries what the run did (`RunFailure.state`) once pydantic-ai's
run began, as a Python caller recovers it: a cancel or a timeout, from
pydantic-ai's `RunCancelled` (messages, usage, run id); any other failure,
the messages pydantic-ai's `capture_run_messages()` recorded, the run being
wrapped in it as a Python caller wraps it (pydantic-ai exposes no usage and
no run id for those failures: none is sent). A failure before the run began
(deps, an unknown agent, a malformed request) has nothing to carry; nor has
one whose messages have no JSON form, or would make the failure larger
than the transport lets a message be (`max_message_bytes`): its error says
so, rather than be lost to the transport's RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic_ai import CancellationToken, RunCancelled, capture_run_messages
from pydantic_ai.messages import ModelMessage

from synapse_python import (
    _agents,
    _approvals,
    _client_tools,
    _convert,
    _errors,
    _events,
    _prompt,
    _tracing,
)
from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.service")

Send = _events.Send


class Run:
    """One run of an agent; see the module docstring."""

    def __init__(
        self,
        registry: _agents.AgentRegistry,
        request: agent_pb2.RunRequest,
        send: Send,
        *,
        quiet: bool,
        max_message_bytes: int | None = None,
    ) -> None:
        self._registry = registry
        # The size the transport lets the run's last event have (None: any).
        self._max_message_bytes = max_message_bytes
        self._request = request
        self._send = _serialized(send)
        self._quiet = quiet
        self._tools: _client_tools.ClientTools | None = None
        self._approvals: _approvals.InlineApprovals | None = None
        self._cancellation = CancellationToken()
        # What pydantic-ai's `capture_run_messages()` records of the run, and
        # the history it was given; both set once the run is started.
        self._captured: list[ModelMessage] = []
        self._history: list[ModelMessage] | None = None
        # Why the run must stop, when the client broke the protocol mid-run.
        self._protocol_error: _errors.SynapseError | None = None
        # The client half-closed before the run had its tools and approvals
        # (its half-close read with its start): they start closed.
        self._input_closed = False
        self.done = False

    @property
    def agent_id(self) -> str:
        return self._request.agent_id

    async def execute(self) -> agent_pb2.RunEvent:
        """Run the agent; return the run's last event (`result` or `failure`)."""
        try:
            return await self._execute()
        except _errors.SynapseError as error:
            return self._failure(error)
        except RunCancelled as cancelled:
            error = self._protocol_error or _errors.from_run_exception(cancelled)
            return self._failure(error, cancelled)
        except Exception as exc:
            return self._failure(_errors.from_run_exception(exc))
        finally:
            self.done = True
            if self._tools is not None:
                self._tools.close()
            if self._approvals is not None:
                self._approvals.close()

    async def _execute(self) -> agent_pb2.RunEvent:
        request = self._request
        loaded = self._registry.get(request.agent_id)
        if loaded is None:
            raise _errors.not_found(f"no agent loaded with id {request.agent_id!r}")
        arguments = _run_arguments(request, loaded)
        tools = self._tools = _client_tools.ClientTools(request.tools, loaded.agent, self._send)
        if request.inline_approvals:
            self._approvals = _approvals.InlineApprovals(self._send)
            arguments["capabilities"] = [self._approvals.capability]
        if self._input_closed:
            self.input_closed()  # nothing is pending yet: later requests fail
        relay = None if self._quiet else _events.EventRelay(self._send, frozenset(request.events))
        if relay is not None:
            arguments["event_stream_handler"] = relay.handle
        async with contextlib.AsyncExitStack() as stack:
            # The caller's trace, for the deps factory and the run's spans.
            stack.enter_context(_tracing.joined(request.trace_context))
            stack.enter_context(tools.attach(loaded.agent, arguments))
            deps = await loaded.deps.enter(
                stack,
                request.deps_json if request.HasField("deps_json") else None,
                request.deps_error,
            )
            self._history = arguments["message_history"]
            # Around the run only: a run made elsewhere (by a deps factory)
            # must not be the one recorded. The list outlives the block: a
            # deps' exit failing after the run still has it.
            with capture_run_messages() as self._captured:
                result = await loaded.agent.run(
                    **arguments, deps=deps, cancellation_token=self._cancellation
                )
        if relay is not None:
            await relay.final_output(result.output)
        content = (
            request.output_tool_return_content
            if request.HasField("output_tool_return_content")
            else None
        )
        return agent_pb2.RunEvent(
            result=_convert.run_result(result, content, messages=not request.omit_messages)
        )

    def deliver(self, message: agent_pb2.RunInput) -> None:
        """Hand the run a message the client sent after `start`.

        A message that breaks the protocol (another `start`, an empty one, a
        malformed `tool_result`) stops the run with INVALID_ARGUMENT; one
        that could not be handled otherwise, with what went wrong: either
        way the run ends, and does not wait for what will not come.
        """
        kind = message.WhichOneof("input")
        try:
            match kind:
                case "tool_result" if self._tools is not None:
                    self._tools.resolve(message.tool_result)
                case "tool_result":
                    _client_tools.ignore_unknown(message.tool_result)
                case "approval" if self._approvals is not None:
                    self._approvals.resolve(message.approval)
                case "cancel":
                    self.cancel()
                case _:
                    raise _errors.invalid_argument(
                        f"unexpected {kind or 'an empty RunInput'} after a Run's `start`"
                    )
        except _errors.SynapseError as error:
            self.fail(error)
        except Exception as exc:
            logger.exception("handling a Run's %s failed", kind)
            self.fail(_errors.from_run_exception(exc))

    def broken(self, exc: Exception) -> None:
        """The client's messages can no longer be read (one did not parse):
        nothing it sends will reach the run, which stops with INVALID_ARGUMENT."""
        self.fail(
            _errors.invalid_argument(
                f"a RunInput could not be read: {_errors.type_name(exc)}: {exc}", cause=exc
            )
        )

    def input_closed(self) -> None:
        """The client will send nothing more: requests can no longer be answered."""
        self._input_closed = True
        try:
            for pending in (self._tools, self._approvals):
                if pending is not None:
                    pending.input_closed()
        except _errors.SynapseError as error:
            self.fail(error)

    def cancel(self) -> None:
        """Cancel the run as pydantic-ai does: it ends with what it had done."""
        self._cancellation.cancel()

    def fail(self, error: _errors.SynapseError) -> None:
        """Stop the run with `error` (the first one wins)."""
        if self._protocol_error is None:
            self._protocol_error = error
        self.cancel()

    def _failure(
        self, error: _errors.SynapseError, cancelled: RunCancelled | None = None
    ) -> agent_pb2.RunEvent:
        # What the run did may not cross (a string UTF-8 cannot encode,
        # more than a message may hold): the failure is still the run's,
        # without it, saying why.
        state = unkept = None
        try:
            if cancelled is not None:
                if cancelled.run_id is not None:
                    state = _convert.run_state(cancelled)
            elif self._captured:
                state = _convert.captured_state(self._captured, self._history)
        except _errors.SynapseError as exc:
            unkept = exc.message
        if state is not None and self._max_message_bytes is not None:
            size = agent_pb2.RunEvent(
                failure=agent_pb2.RunFailure(error=error.detail(), state=state)
            ).ByteSize()
            if size > self._max_message_bytes:
                state = None
                unkept = (
                    f"with it the failure is {size} bytes, over the "
                    f"{self._max_message_bytes} of max_message_bytes"
                )
        if unkept is not None:
            error = _errors.SynapseError(
                error.code,
                error.kind,
                f"{error.message} (what the run did is not returned: {unkept})",
                cause=error.cause,
                data_json=error.data_json,
            )
        _log_failure(error, self.agent_id)
        failure = agent_pb2.RunFailure(error=error.detail())
        if state is not None:
            failure.state.CopyFrom(state)
        return agent_pb2.RunEvent(failure=failure)


def _run_arguments(request: agent_pb2.RunRequest, loaded: _agents.LoadedAgent) -> dict[str, Any]:
    """The arguments of the pydantic-ai run `request` asks for (but deps and tools)."""
    return {
        "user_prompt": _prompt.user_prompt(request),
        "message_history": _convert.parse_message_history(request.message_history_json),
        "model_settings": _convert.parse_model_settings(request.model_settings_json),
        "usage_limits": _convert.parse_usage_limits(request.usage_limits_json),
        "deferred_tool_results": _approvals.deferred_tool_results(request),
        "timeout": request.timeout_ms / 1000 if request.HasField("timeout_ms") else None,
        "model": loaded.model,
        # pydantic-ai would otherwise name the agent after a local variable of ours.
        "infer_name": False,
    }


def _serialized(send: Send) -> Send:
    """`send` for several writers (the event stream, client tools' requests), one at a time."""
    lock = asyncio.Lock()

    async def serialized(event: agent_pb2.RunEvent) -> None:
        async with lock:
            await send(event)

    return serialized


def _log_failure(error: _errors.SynapseError, agent_id: str) -> None:
    if error.kind is agent_pb2.ERROR_KIND_PYTHON_ERROR and error.cause is not None:
        logger.error("run of agent %r failed", agent_id, exc_info=error.cause)
    else:
        cause = f" ({_errors.type_name(error.cause)})" if error.cause is not None else ""
        logger.warning("run of agent %r failed%s: %s", agent_id, cause, error.message)
