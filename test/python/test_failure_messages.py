"""What a run that failed after it began returns of what it did (`RunFailure.state`).

A cancelled or timed-out run returns what pydantic-ai's `RunCancelled` keeps;
any other failure, the messages pydantic-ai's `capture_run_messages()`
records, exactly as a Python caller gets them: each is compared here with
the same agent run directly in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic_ai import Agent, RunContext, UsageLimits, capture_run_messages
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from synapse_fixtures.failures import failing_agent
from synapse_python import _agents, _run
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

# What no two runs share.
_VOLATILE = re.compile(rb'"(timestamp|run_id|conversation_id)":"[^"]*"')


def comparable(messages_json: bytes) -> bytes:
    """The messages' JSON, byte for byte, but for the values no two runs share."""
    return _VOLATILE.sub(rb'"\1":"-"', messages_json)


async def send(event: agent_pb2.RunEvent) -> None:
    pass


async def registry_with(agent: Agent[Any, Any], **load: Any) -> _agents.AgentRegistry:
    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("a", agent, **load))
    return registry


async def failure_of(
    registry: _agents.AgentRegistry, *, quiet: bool = True, **fields: Any
) -> agent_pb2.RunFailure:
    request = agent_pb2.RunRequest(agent_id="a", **fields)
    last = await _run.Run(registry, request, send, quiet=quiet).execute()
    assert last.WhichOneof("event") == "failure", last
    return last.failure


async def captured_in_python(agent: Agent[Any, Any], prompt: str | None, **arguments: Any) -> bytes:
    """What a Python caller's `capture_run_messages()` holds after the same run fails."""
    with capture_run_messages() as messages:
        # (pydantic-ai's errors are RuntimeErrors, as are the fixture's.)
        with pytest.raises(RuntimeError):
            await agent.run(prompt, **arguments)
    return ModelMessagesTypeAdapter.dump_json(messages)


# The prompt, the usage limits, the kind of the failure.
FAILURES = [
    pytest.param("lookup", UsageLimits(request_limit=1), "usage_limit_exceeded", id="usage-limit"),
    pytest.param("explode", None, "python_error", id="tool-raises"),
    pytest.param("bad output", None, "output_validation_failed", id="output-retries"),
    pytest.param("http error", None, "model_http_error", id="model-http-error"),
    # pydantic-ai refusing the run in its graph (no prompt, no history, no
    # instructions), once it began it: its request is what it did.
    pytest.param(None, None, "invalid_argument", id="refused-by-pydantic-ai"),
]


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "streamed"])
@pytest.mark.parametrize(("prompt", "limits", "kind"), FAILURES)
async def test_a_failure_returns_the_messages_capture_run_messages_gives(
    prompt: str | None, limits: UsageLimits | None, kind: str, quiet: bool
) -> None:
    registry = await registry_with(failing_agent)
    limits_json = json.dumps({"request_limit": limits.request_limit}).encode() if limits else b""
    fields: dict[str, Any] = {"usage_limits_json": limits_json}
    if prompt is not None:
        fields["prompt"] = prompt

    failure = await failure_of(registry, quiet=quiet, **fields)

    assert kind_name(failure.error.kind) == kind
    if quiet:
        expected = await captured_in_python(failing_agent, prompt, usage_limits=limits)
    else:
        # A streamed run is pydantic-ai's run with an event stream handler.
        async def handler(ctx: RunContext[Any], events: Any) -> None:
            async for _ in events:
                pass

        expected = await captured_in_python(
            failing_agent, prompt, usage_limits=limits, event_stream_handler=handler
        )
    state = failure.state
    assert comparable(state.messages_json) == comparable(expected)
    assert state.message_count == len(json.loads(expected)) > 0
    assert state.new_message_index == 0
    # pydantic-ai gives neither for these failures: none is made up.
    assert not state.HasField("usage")
    assert not state.HasField("run_id")


def _history_then_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    last = messages[-1]
    if isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts):
        return ModelResponse(parts=[TextPart("done")])
    return ModelResponse(parts=[ToolCallPart("stop", {}, tool_call_id=f"stop_{len(messages)}")])


@pytest.mark.parametrize("prompt", ["again", None], ids=["new-prompt", "resumed"])
async def test_where_the_runs_messages_begin_is_where_pydantic_ai_begins_them(
    prompt: str | None,
) -> None:
    # The same run, at the same point, ends either way: pydantic-ai's own
    # index (RunCancelled's) and the one given for a failure agree.
    agent = Agent(FunctionModel(_history_then_tool))
    how = {"way": "cancel"}

    @agent.tool
    async def stop(ctx: RunContext[None]) -> str:
        if how["way"] == "cancel":
            ctx.cancel()
            return "cancelled"
        raise RuntimeError("stopped")

    history = (await agent.run("first", model=FunctionModel(_text_only))).all_messages()
    if prompt is None:
        # A history ending with a request: the run resumes from it.
        history.append(ModelRequest.user_text_prompt("go on"))
    registry = await registry_with(agent)
    fields = {"message_history_json": ModelMessagesTypeAdapter.dump_json(history)}
    if prompt is not None:
        fields["prompt"] = prompt

    cancelled = await failure_of(registry, **fields)
    how["way"] = "raise"
    raised = await failure_of(registry, **fields)

    assert kind_name(cancelled.error.kind) == "cancelled"
    assert kind_name(raised.error.kind) == "python_error"
    assert raised.state.new_message_index == cancelled.state.new_message_index
    assert raised.state.new_message_index == len(history)


def _text_only(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("hello")])


async def test_a_failure_before_the_run_began_has_nothing_to_return() -> None:
    registry = await registry_with(failing_agent)

    unknown = await _run.Run(
        registry, agent_pb2.RunRequest(agent_id="other", prompt="x"), send, quiet=True
    ).execute()
    malformed = await failure_of(registry, prompt="x", message_history_json=b"[1]")

    assert kind_name(unknown.failure.error.kind) == "not_found"
    assert kind_name(malformed.error.kind) == "invalid_argument"
    for failure in (unknown.failure, malformed):
        assert not failure.HasField("state")


async def test_deps_that_do_not_validate_have_nothing_to_return() -> None:
    registry = await registry_with(failing_agent, deps_factory=_needs_a_number)

    failure = await failure_of(registry, prompt="lookup", deps_json=b'"nan"')

    assert kind_name(failure.error.kind) == "invalid_argument"
    assert not failure.HasField("state")


def _needs_a_number(number: int) -> int:
    return number


async def test_deps_failing_to_close_after_the_run_return_the_whole_run() -> None:
    closed = []

    @contextlib.asynccontextmanager
    async def closing_fails() -> AsyncIterator[None]:
        yield None
        closed.append(True)
        raise RuntimeError("closing the deps failed")

    registry = await registry_with(failing_agent, deps_factory=closing_fails)

    failure = await failure_of(registry, prompt="lookup")

    assert failure.error.message == "RuntimeError: closing the deps failed"
    assert closed == [True]
    with capture_run_messages() as expected:
        await failing_agent.run("lookup")
    assert comparable(failure.state.messages_json) == comparable(
        ModelMessagesTypeAdapter.dump_json(expected)
    )
    assert failure.state.message_count == 4


async def test_messages_with_no_json_form_do_not_lose_the_error() -> None:
    registry = await registry_with(failing_agent)

    failure = await failure_of(registry, prompt="unkept")

    assert kind_name(failure.error.kind) == "python_error"
    assert failure.error.message.startswith("RuntimeError: the tool exploded")
    assert "what the run did is not returned" in failure.error.message
    assert not failure.HasField("state")


@pytest.mark.parametrize("way", ["raise", "cancel"])
async def test_what_a_run_did_over_the_message_size_does_not_lose_the_error(way: str) -> None:
    started = asyncio.Event()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if way == "cancel":
            started.set()
            await asyncio.sleep(30)
        raise RuntimeError("the model failed")

    registry = await registry_with(Agent(FunctionModel(model)))
    request = agent_pb2.RunRequest(agent_id="a", prompt="x" * 8_000)
    run = _run.Run(registry, request, send, quiet=True, max_message_bytes=6_000)
    execution = asyncio.create_task(run.execute())
    if way == "cancel":
        await started.wait()
        run.cancel()

    failure = (await execution).failure

    kind = "cancelled" if way == "cancel" else "python_error"
    assert kind_name(failure.error.kind) == kind
    assert "what the run did is not returned" in failure.error.message
    assert "over the 6000 of max_message_bytes" in failure.error.message
    assert not failure.HasField("state")
    assert agent_pb2.RunEvent(failure=failure).ByteSize() <= 6_000
