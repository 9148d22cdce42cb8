"""Tool calls that wait for a decision: pydantic-ai's deferred tools, both ways.

A run ends with them (`DeferredToolRequests` as its output) unless something
decides during the run. The wire forms of both ends are here:

* `deferred_output`: a run's `DeferredToolRequests` output, for the client;
* `deferred_tool_results`: the client's decisions for the next run
  (`RunRequest.deferred_tool_results`), as pydantic-ai's `DeferredToolResults`.

And deciding during the run (`RunRequest.inline_approvals`):
`InlineApprovals.capability` is a pydantic-ai `HandleDeferredToolCalls` whose
handler asks the client about every call of a batch that needs approval, one
`approval_request` each (all at once, `_pending.PendingRequests`), and
answers pydantic-ai with the client's `approval`s as `ToolApproved` (with the
edited arguments, if any) or `ToolDenied`. The tool call waits meanwhile;
the run goes on when every call of the batch has its decision. Calls
deferred for an external result (`CallDeferred`) are left to pydantic-ai:
the run ends with them, as it does without a handler. How long a decision
may take is the client's business (it denies a request nobody answers in
time); the run's own `timeout` bounds it all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core
from pydantic_ai import (
    DeferredToolRequests,
    DeferredToolResults,
    ModelRetry,
    RunContext,
    ToolApproved,
    ToolDenied,
    ToolFailed,
    ToolReturn,
)
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ToolCallPart

from synapse_python import _errors
from synapse_python._pending import PendingRequests
from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.service")


def deferred_output(requests: DeferredToolRequests) -> agent_pb2.DeferredOutput:
    """The wire form of a `DeferredToolRequests` output: every call, with its metadata and kind."""

    def call(part: ToolCallPart) -> agent_pb2.DeferredCall:
        return agent_pb2.DeferredCall(
            tool_call_id=part.tool_call_id,
            tool_name=part.tool_name,
            args_json=part.args_as_json_str().encode(),
            metadata_json=_metadata_json(requests.metadata.get(part.tool_call_id)),
            kind=requests.kind(part.tool_call_id),
        )

    return agent_pb2.DeferredOutput(
        approvals=[call(part) for part in requests.approvals],
        calls=[call(part) for part in requests.calls],
    )


def deferred_tool_results(request: agent_pb2.RunRequest) -> DeferredToolResults | None:
    """The request's `deferred_tool_results` as pydantic-ai's, or None when it has none.

    Malformed JSON, edited arguments or metadata that are not JSON objects,
    and a decision or result with no outcome are INVALID_ARGUMENT.
    """
    if not request.HasField("deferred_tool_results"):
        return None
    given = request.deferred_tool_results
    results = DeferredToolResults()
    for tool_call_id, decision in given.approvals.items():
        results.approvals[tool_call_id] = _decision(decision, f"the approval of {tool_call_id!r}")
    for tool_call_id, outcome in given.calls.items():
        results.calls[tool_call_id] = _call_result(outcome, f"the result of {tool_call_id!r}")
    for tool_call_id, metadata in given.metadata_json.items():
        results.metadata[tool_call_id] = _json_object(metadata, f"the metadata of {tool_call_id!r}")
    return results


def _decision(decision: agent_pb2.ApprovalDecision, what: str) -> ToolApproved | ToolDenied:
    match decision.WhichOneof("decision"):
        case "approved":
            approved = decision.approved
            if not approved.HasField("override_args_json"):
                return ToolApproved()
            return ToolApproved(override_args=_json_object(approved.override_args_json, what))
        case "denied":
            denied = decision.denied
            return ToolDenied(denied.message) if denied.HasField("message") else ToolDenied()
        case _:
            raise _errors.invalid_argument(f"{what} is neither approved nor denied")


def _call_result(outcome: agent_pb2.DeferredCallResult, what: str) -> Any:
    match outcome.WhichOneof("outcome"):
        case "return_json":
            return ToolReturn(_json(outcome.return_json, what))
        case "retry_message":
            return ModelRetry(outcome.retry_message)
        case "failed_message":
            return ToolFailed(outcome.failed_message)
        case _:
            raise _errors.invalid_argument(f"{what} has no outcome")


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _errors.invalid_argument(f"{what} is not valid JSON: {exc}", cause=exc) from exc


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    value = _json(data, what)
    if not isinstance(value, dict):
        raise _errors.invalid_argument(f"{what} must be a JSON object")
    return value


def _metadata_json(metadata: dict[str, Any] | None) -> bytes:
    # Empty bytes mean no metadata (None); `{}` is metadata too, and pydantic-ai
    # keeps it (`ApprovalRequired(metadata={})`), so it is sent as `{}`.
    # Metadata is the tool's own data: values JSON cannot hold are encoded
    # leniently rather than failing the run.
    if metadata is None:
        return b""
    return pydantic_core.to_json(metadata, bytes_mode="base64", fallback=str)


class InlineApprovals:
    """The approvals of one run with `inline_approvals`: asked of the client, awaited."""

    def __init__(self, send: Callable[[agent_pb2.RunEvent], Awaitable[None]]) -> None:
        """`send` sends the approval requests (one writer at a time: the caller's business)."""
        self._send = send
        self._requests = PendingRequests("approval requests")
        self.capability: HandleDeferredToolCalls[Any] = HandleDeferredToolCalls(
            handler=self._handle
        )

    async def _handle(
        self, ctx: RunContext[Any], requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        if not requests.approvals:
            return None
        decisions = await asyncio.gather(
            *(
                self._ask(call, requests.metadata.get(call.tool_call_id))
                for call in requests.approvals
            )
        )
        return DeferredToolResults(
            approvals={
                call.tool_call_id: decision
                for call, decision in zip(requests.approvals, decisions, strict=True)
            }
        )

    async def _ask(
        self, call: ToolCallPart, metadata: dict[str, Any] | None
    ) -> ToolApproved | ToolDenied:
        async def send(request_id: str) -> None:
            await self._send(
                agent_pb2.RunEvent(
                    approval_request=agent_pb2.ApprovalRequest(
                        request_id=request_id,
                        tool_name=call.tool_name,
                        args_json=call.args_as_json_str().encode(),
                        tool_call_id=call.tool_call_id,
                        metadata_json=_metadata_json(metadata),
                    )
                )
            )

        decision: ToolApproved | ToolDenied = await self._requests.ask(
            send,
            f"the tool call {call.tool_call_id!r} ({call.tool_name}) needs approval, "
            "but the client half-closed the Run: it can no longer answer",
        )
        return decision

    def resolve(self, answer: agent_pb2.ApprovalAnswer) -> None:
        """Decide the request `answer` names; one not pending is logged and ignored."""
        if not self._requests.is_pending(answer.request_id):
            logger.warning(
                "ignoring an approval for request %r: no such request is pending "
                "(unknown, already decided, or its run step was cancelled)",
                answer.request_id,
            )
            return
        decision = _decision(answer.decision, f"the approval for request {answer.request_id!r}")
        self._requests.answer(answer.request_id, decision)

    def input_closed(self) -> None:
        """The client half-closed; raises INVALID_ARGUMENT if requests are pending."""
        self._requests.input_closed()

    def close(self) -> None:
        """Cancel every pending request (the run is over)."""
        self._requests.close()
