"""`_run.Run` on its own, with no gRPC: a start request, a send coroutine, delivered inputs.

This is the contract any transport (the gRPC handlers, or a multiplexed lane)
builds on: the run's events go to `send`, its last event is `execute`'s
return value, and what the client sends goes to `deliver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from conftest import tool_def
from synapse_python import _agents, _run
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2


class Client:
    """What a transport gives a run: a sender, and a way to answer its tool requests."""

    def __init__(self) -> None:
        self.events: list[agent_pb2.RunEvent] = []
        self.answer: dict[str, Any] = {}
        self.run: _run.Run | None = None

    async def send(self, event: agent_pb2.RunEvent) -> None:
        self.events.append(event)
        if event.WhichOneof("event") == "tool_request" and self.run is not None:
            request = event.tool_request
            value = self.answer[request.name]
            result = agent_pb2.ToolResult(
                request_id=request.request_id, return_json=json.dumps(value).encode()
            )
            # Answered later, as a transport would, from its reader.
            asyncio.get_running_loop().call_soon(
                self.run.deliver, agent_pb2.RunInput(tool_result=result)
            )


async def registry_with(agent: Agent[Any, Any], **load: Any) -> _agents.AgentRegistry:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", agent, **load))
    return registry


def calls_double(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [
        part.content
        for message in messages
        for part in getattr(message, "parts", [])
        if getattr(part, "part_kind", "") == "tool-return"
    ]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("double", {"n": 21}, tool_call_id="c1")])
    return ModelResponse(parts=[TextPart(f"doubled: {returns[-1]}")])


async def test_a_quiet_run_with_client_tools_makes_no_streamed_request() -> None:
    # No stream function: a streamed request would fail the run.
    registry = await registry_with(Agent(FunctionModel(calls_double)))
    client = Client()
    client.answer["double"] = 42
    request = agent_pb2.RunRequest(agent_id="a", prompt="go", tools=[tool_def("double")])
    run = client.run = _run.Run(registry, request, client.send, quiet=True)

    last = await run.execute()

    assert last.WhichOneof("event") == "result", last
    assert last.result.text == "doubled: 42"
    assert [event.WhichOneof("event") for event in client.events] == ["tool_request"]
    assert run.done


async def test_a_streamed_run_sends_its_events_then_returns_its_last() -> None:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "a"
        yield "b"

    registry = await registry_with(Agent(FunctionModel(stream_function=stream)))
    client = Client()
    run = _run.Run(
        registry, agent_pb2.RunRequest(agent_id="a", prompt="x"), client.send, quiet=False
    )

    last = await run.execute()

    assert [event.text_delta for event in client.events] == ["a", "b"]
    assert last.result.text == "ab"


async def test_a_cancel_ends_the_run_with_what_it_did() -> None:
    started = asyncio.Event()

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        started.set()
        await asyncio.sleep(30)
        return ModelResponse(parts=[TextPart("late")])

    registry = await registry_with(Agent(FunctionModel(slow)))
    run = _run.Run(
        registry, agent_pb2.RunRequest(agent_id="a", prompt="x"), Client().send, quiet=True
    )
    execution = asyncio.create_task(run.execute())
    await started.wait()

    run.deliver(agent_pb2.RunInput(cancel=agent_pb2.Cancel()))
    last = await execution

    failure = last.failure
    assert (kind_name(failure.error.kind), failure.error.code) == ("cancelled", 1)
    assert failure.state.message_count == 1  # the request the model was answering
    assert json.loads(failure.state.messages_json)[0]["parts"][0]["content"] == "x"
    # pydantic-ai's RunCancelled has the run's usage and id, unlike its other failures.
    assert failure.state.HasField("usage")
    assert failure.state.HasField("run_id") and failure.state.run_id


async def test_a_timeout_ends_the_run_with_what_it_did() -> None:
    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(30)
        return ModelResponse(parts=[TextPart("late")])

    registry = await registry_with(Agent(FunctionModel(slow)))
    # Long enough for the run to reach the model on a loaded machine: the
    # request it was answering is what the run did.
    request = agent_pb2.RunRequest(agent_id="a", prompt="x", timeout_ms=2_000)

    last = await _run.Run(registry, request, Client().send, quiet=True).execute()

    assert kind_name(last.failure.error.kind) == "timeout"
    assert last.failure.state.message_count == 1


async def test_a_transport_cancel_propagates() -> None:
    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(30)
        return ModelResponse(parts=[TextPart("late")])

    registry = await registry_with(Agent(FunctionModel(slow)))
    run = _run.Run(
        registry, agent_pb2.RunRequest(agent_id="a", prompt="x"), Client().send, quiet=True
    )
    execution = asyncio.create_task(run.execute())
    await asyncio.sleep(0.05)

    execution.cancel()

    with pytest.raises(asyncio.CancelledError):
        await execution


class Account(BaseModel):
    owner: str
    balance: int


def reports_deps(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart(info.instructions or "")])


async def test_deps_are_validated_into_the_deps_type() -> None:
    agent = Agent(FunctionModel(reports_deps), deps_type=Account)

    @agent.instructions
    def describe(ctx: RunContext[Account]) -> str:
        return f"{type(ctx.deps).__name__}({ctx.deps.owner}, {ctx.deps.balance})"

    registry = await registry_with(agent)
    ok = agent_pb2.RunRequest(agent_id="a", prompt="x", deps_json=b'{"owner":"ada","balance":2}')
    bad = agent_pb2.RunRequest(agent_id="a", prompt="x", deps_json=b'{"owner":"ada"}')

    assert (await _run.Run(registry, ok, Client().send, quiet=True).execute()).result.text == (
        "Account(ada, 2)"
    )
    failure = (await _run.Run(registry, bad, Client().send, quiet=True).execute()).failure
    assert kind_name(failure.error.kind) == "invalid_argument"
    assert json.loads(failure.error.data_json)["errors"][0]["loc"] == ["deps", "balance"]


async def test_a_deps_factory_context_manager_is_exited_when_the_run_fails() -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def factory(data: dict[str, Any]) -> AsyncIterator[str]:
        seen.append(f"enter {data['who']}")
        try:
            yield data["who"]
        finally:
            seen.append("exit")

    def explode(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise RuntimeError("boom")

    registry = await registry_with(Agent(FunctionModel(explode)), deps_factory=factory)
    request = agent_pb2.RunRequest(agent_id="a", prompt="x", deps_json=b'{"who":"bo"}')

    last = await _run.Run(registry, request, Client().send, quiet=True).execute()

    assert last.failure.error.message == "RuntimeError: boom"
    assert seen == ["enter bo", "exit"]


async def test_deps_with_no_json_form_fail_an_agent_that_needs_them() -> None:
    registry = await registry_with(Agent(FunctionModel(reports_deps), deps_type=Account))
    request = agent_pb2.RunRequest(agent_id="a", prompt="x", deps_error="a pid has no JSON form")

    failure = (await _run.Run(registry, request, Client().send, quiet=True).execute()).failure

    assert kind_name(failure.error.kind) == "invalid_argument"
    assert "a pid has no JSON form" in failure.error.message
