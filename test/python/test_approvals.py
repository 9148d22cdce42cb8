"""Deferred tool calls through `_run.Run`: the run ends with them, or asks while it waits.

A scripted model calls three tools at once: `delete` (requires approval),
`pay` (raises `ApprovalRequired` for large amounts) and `compute` (raises
`CallDeferred`); once it has their returns, it answers them as JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic_ai import (
    Agent,
    ApprovalRequired,
    CallDeferred,
    DeferredToolRequests,
    RunContext,
)
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from conftest import tool_def
from synapse_python import _agents, _run
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [
        part
        for message in messages
        for part in getattr(message, "parts", [])
        if isinstance(part, ToolReturnPart)
    ]
    if not returns:
        calls = [
            ToolCallPart("delete", {"path": "a.txt"}, tool_call_id="c1"),
            ToolCallPart("pay", {"amount": 500}, tool_call_id="c2"),
            ToolCallPart("compute", {"x": 2}, tool_call_id="c3"),
        ]
        calls += [
            ToolCallPart(tool.name, {"n": 1}, tool_call_id=f"e-{tool.name}")
            for tool in info.function_tools
            if tool.name.startswith("elixir_")
        ]
        return ModelResponse(parts=calls)
    outcomes = sorted([r.tool_name, r.outcome, r.model_response_str()] for r in returns)
    return ModelResponse(parts=[TextPart(json.dumps(outcomes))])


def _agent(output: Any = (str, DeferredToolRequests)) -> Agent[None, Any]:
    agent: Agent[None, Any] = Agent(FunctionModel(_script), output_type=list(output))

    @agent.tool_plain(requires_approval=True)
    def delete(path: str) -> str:
        return f"deleted {path}"

    @agent.tool
    def pay(ctx: RunContext[None], amount: int) -> str:
        if amount > 100 and not ctx.tool_call_approved:
            raise ApprovalRequired(metadata={"reason": "over 100"})
        return f"paid {amount}"

    @agent.tool_plain
    def compute(x: int) -> int:
        raise CallDeferred(metadata={"job": 7})

    return agent


class Client:
    """Collects a run's events; answers its approval requests with `decide`."""

    def __init__(self, decide: dict[str, agent_pb2.ApprovalDecision] | None = None) -> None:
        self.events: list[agent_pb2.RunEvent] = []
        self.decide = decide or {}
        self.run: _run.Run | None = None
        self._sent = asyncio.Event()

    async def send(self, event: agent_pb2.RunEvent) -> None:
        self.events.append(event)
        self._sent.set()
        if event.WhichOneof("event") == "approval_request" and self.run is not None:
            request = event.approval_request
            decision = self.decide.get(request.tool_name)
            if decision is not None:
                answer = agent_pb2.ApprovalAnswer(request_id=request.request_id, decision=decision)
                asyncio.get_running_loop().call_soon(
                    self.run.deliver, agent_pb2.RunInput(approval=answer)
                )

    def requests(self) -> list[agent_pb2.ApprovalRequest]:
        return [e.approval_request for e in self.events if e.HasField("approval_request")]

    async def asked(self, count: int) -> None:
        """Returns once `count` approval requests were sent."""
        while len(self.requests()) < count:
            self._sent.clear()
            await self._sent.wait()


async def _run_once(
    agent: Agent[None, Any], client: Client | None = None, **fields: Any
) -> agent_pb2.RunEvent:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", agent))
    client = client or Client()
    request = agent_pb2.RunRequest(agent_id="a", **fields)
    run = client.run = _run.Run(registry, request, client.send, quiet=True)
    return await run.execute()


async def _resume(
    agent: Agent[None, Any], first: agent_pb2.RunEvent, results: agent_pb2.DeferredToolResults
) -> agent_pb2.RunEvent:
    """Runs `agent` again from the end of `first`, with `results`."""
    return await _run_once(
        agent, message_history_json=first.result.messages_json, deferred_tool_results=results
    )


def approved(args: dict[str, Any] | None = None) -> agent_pb2.ApprovalDecision:
    approval = agent_pb2.Approved()
    if args is not None:
        approval.override_args_json = json.dumps(args).encode()
    return agent_pb2.ApprovalDecision(approved=approval)


def denied(message: str | None = None) -> agent_pb2.ApprovalDecision:
    denial = agent_pb2.Denied()
    if message is not None:
        denial.message = message
    return agent_pb2.ApprovalDecision(denied=denial)


async def test_the_run_ends_with_its_deferred_calls_as_its_output() -> None:
    last = await _run_once(_agent(), prompt="go")

    result = last.result
    assert result.output_type == "DeferredToolRequests"
    assert result.WhichOneof("output") == "deferred"
    approvals = {call.tool_call_id: call for call in result.deferred.approvals}
    assert set(approvals) == {"c1", "c2"}
    assert approvals["c1"].tool_name == "delete"
    assert json.loads(approvals["c1"].args_json) == {"path": "a.txt"}
    assert approvals["c1"].kind == "approval"
    assert approvals["c1"].metadata_json == b""
    assert json.loads(approvals["c2"].metadata_json) == {"reason": "over 100"}
    [call] = result.deferred.calls
    assert (call.tool_call_id, call.tool_name, call.kind) == ("c3", "compute", "external")
    assert json.loads(call.metadata_json) == {"job": 7}


@pytest.mark.parametrize(
    ("results", "outcomes"),
    [
        (
            agent_pb2.DeferredToolResults(
                approvals={"c1": denied("Not that file."), "c2": approved({"amount": 50})},
                calls={"c3": agent_pb2.DeferredCallResult(return_json=b"14")},
            ),
            [
                ["compute", "success", "14"],
                ["delete", "denied", "Not that file."],
                ["pay", "success", "paid 50"],
            ],
        ),
        (
            agent_pb2.DeferredToolResults(
                approvals={"c1": approved(), "c2": denied()},
                calls={"c3": agent_pb2.DeferredCallResult(failed_message="The job crashed.")},
            ),
            [
                ["compute", "failed", '{"error":"The job crashed."}'],
                ["delete", "success", "deleted a.txt"],
                ["pay", "denied", "The tool call was denied."],
            ],
        ),
        (
            agent_pb2.DeferredToolResults(
                approvals={"c1": approved(), "c2": approved()},
                calls={"c3": agent_pb2.DeferredCallResult(retry_message="Later.")},
            ),
            [
                ["compute", "retried", '{"error":"Later."}'],
                ["delete", "success", "deleted a.txt"],
                ["pay", "success", "paid 500"],
            ],
        ),
    ],
)
async def test_deferred_tool_results_resume_the_run(
    results: agent_pb2.DeferredToolResults, outcomes: list[list[str]]
) -> None:
    agent = _agent()
    first = await _run_once(agent, prompt="go")

    last = await _resume(agent, first, results)

    assert json.loads(last.result.text) == outcomes


async def test_malformed_deferred_tool_results_are_invalid_argument() -> None:
    agent = _agent()
    first = await _run_once(agent, prompt="go")
    history = first.result.messages_json
    for results in [
        agent_pb2.DeferredToolResults(approvals={"c1": agent_pb2.ApprovalDecision()}),
        agent_pb2.DeferredToolResults(approvals={"c1": approved()}, calls={"c3": {}}),
        agent_pb2.DeferredToolResults(
            approvals={
                "c1": agent_pb2.ApprovalDecision(
                    approved=agent_pb2.Approved(override_args_json=b"[1]")
                )
            }
        ),
        agent_pb2.DeferredToolResults(metadata_json={"c1": b"{"}),
    ]:
        last = await _run_once(agent, message_history_json=history, deferred_tool_results=results)
        assert kind_name(last.failure.error.kind) == "invalid_argument", results


async def test_a_client_tool_can_require_approval() -> None:
    agent = _agent()
    tool = tool_def("elixir_tool")
    tool.requires_approval = True

    last = await _run_once(agent, prompt="go", tools=[tool])

    approvals = [call.tool_name for call in last.result.deferred.approvals]
    assert sorted(approvals) == ["delete", "elixir_tool", "pay"]


async def test_inline_approvals_ask_the_client_and_the_run_goes_on() -> None:
    client = Client({"delete": denied("No."), "pay": approved({"amount": 7})})

    last = await _run_once(_agent(), client, prompt="go", inline_approvals=True)

    requests = {request.tool_name: request for request in client.requests()}
    assert set(requests) == {"delete", "pay"}
    assert json.loads(requests["pay"].args_json) == {"amount": 500}
    assert json.loads(requests["pay"].metadata_json) == {"reason": "over 100"}
    assert requests["delete"].tool_call_id == "c1"
    assert {r.request_id for r in requests.values()} == {"1", "2"}
    # The external call is left to pydantic-ai: the run ends with it.
    assert last.result.output_type == "DeferredToolRequests"
    assert [call.tool_call_id for call in last.result.deferred.calls] == ["c3"]
    assert list(last.result.deferred.approvals) == []
    returns = {
        part["tool_name"]: part["content"]
        for message in json.loads(last.result.messages_json)
        for part in message["parts"]
        if part["part_kind"] == "tool-return"
    }
    assert returns == {"delete": "No.", "pay": "paid 7"}


async def test_an_agent_without_deferred_output_runs_with_inline_approvals() -> None:
    agent: Agent[None, str] = Agent(FunctionModel(_script))

    @agent.tool_plain(requires_approval=True)
    def delete(path: str) -> str:
        return f"deleted {path}"

    @agent.tool_plain
    def pay(amount: int) -> str:
        return f"paid {amount}"

    @agent.tool_plain
    def compute(x: int) -> int:
        return x * 7

    client = Client({"delete": approved()})
    last = await _run_once(agent, client, prompt="go", inline_approvals=True)

    assert json.loads(last.result.text) == [
        ["compute", "success", "14"],
        ["delete", "success", "deleted a.txt"],
        ["pay", "success", "paid 500"],
    ]


async def test_an_unknown_or_malformed_approval() -> None:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", _agent()))
    client = Client()
    request = agent_pb2.RunRequest(agent_id="a", prompt="go", inline_approvals=True)
    run = client.run = _run.Run(registry, request, client.send, quiet=True)
    task = asyncio.create_task(run.execute())
    await client.asked(2)

    # An unknown request is ignored; a malformed answer stops the run.
    run.deliver(
        agent_pb2.RunInput(approval=agent_pb2.ApprovalAnswer(request_id="9", decision=approved()))
    )
    assert not task.done()
    run.deliver(agent_pb2.RunInput(approval=agent_pb2.ApprovalAnswer(request_id="1")))
    last = await task
    assert kind_name(last.failure.error.kind) == "invalid_argument"
    assert "neither approved nor denied" in last.failure.error.message


async def test_half_closing_with_an_approval_pending_is_invalid_argument() -> None:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", _agent()))
    client = Client()
    request = agent_pb2.RunRequest(agent_id="a", prompt="go", inline_approvals=True)
    run = client.run = _run.Run(registry, request, client.send, quiet=True)
    task = asyncio.create_task(run.execute())
    await client.asked(1)

    run.input_closed()

    last = await task
    assert kind_name(last.failure.error.kind) == "invalid_argument"
    assert "approval requests unanswered" in last.failure.error.message


async def test_an_approval_without_inline_approvals_is_a_protocol_error() -> None:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", _agent()))
    client = Client()
    run = _run.Run(
        registry, agent_pb2.RunRequest(agent_id="a", prompt="go"), client.send, quiet=True
    )
    run.deliver(agent_pb2.RunInput(approval=agent_pb2.ApprovalAnswer(request_id="1")))

    last = await run.execute()
    assert kind_name(last.failure.error.kind) == "invalid_argument"
