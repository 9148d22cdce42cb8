"""RunSync: outputs, usage, history, settings, and how failures reach the client."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from pydantic_ai import Agent, ModelMessagesTypeAdapter
from pydantic_ai.exceptions import ModelHTTPError, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from conftest import AgentClient, RunFailed, Served, error_detail
from synapse_fixtures import agents as fixtures
from synapse_python._errors import kind_name


async def load(client: AgentClient, agent_id: str, attr: str | None = None) -> None:
    await client.load_agent(agent_id, ref=f"synapse_fixtures.agents:{attr or agent_id + '_agent'}")


async def test_text_output_with_usage_messages_and_run_id(client: AgentClient) -> None:
    await load(client, "echo")

    result = await client.run_sync("echo", "hello")

    assert result.WhichOneof("output") == "text"
    assert result.text == "success (no tool calls)"
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert result.usage.requests == 1
    assert result.usage.tool_calls == 0
    messages = ModelMessagesTypeAdapter.validate_json(result.messages_json)
    assert [message.kind for message in messages] == ["request", "response"]
    assert result.run_id
    assert messages[0].run_id == result.run_id


async def test_structured_output_is_json(client: AgentClient) -> None:
    await load(client, "city")

    result = await client.run_sync("city", "the capital of France")

    assert result.WhichOneof("output") == "json"
    assert json.loads(result.json) == {"name": "Paris", "population": 2_100_000}


async def test_message_history_round_trips(client: AgentClient) -> None:
    await load(client, "history")

    first = await client.run_sync("history", "one")
    second = await client.run_sync("history", "two", message_history_json=first.messages_json)

    assert first.text == "messages=1"
    assert second.text == "messages=3"
    messages = ModelMessagesTypeAdapter.validate_json(second.messages_json)
    assert len(messages) == 4


async def test_omit_messages_leaves_only_the_messages_out(client: AgentClient) -> None:
    await load(client, "history")
    first = await client.run_sync("history", "one")

    kept = await client.run_sync("history", "two", message_history_json=first.messages_json)
    left = await client.run_sync(
        "history", "two", message_history_json=first.messages_json, omit_messages=True
    )

    assert kept.messages_json
    assert left.messages_json == b""
    assert left.text == kept.text == "messages=3"
    assert left.usage == kept.usage
    assert (left.message_count, left.new_message_index) == (4, 2)
    assert (kept.message_count, kept.new_message_index) == (4, 2)


async def test_an_empty_prompt_continues_from_the_history(client: AgentClient) -> None:
    await load(client, "history")
    first = await client.run_sync("history", "one")

    second = await client.run_sync("history", "", message_history_json=first.messages_json)

    assert second.text != ""


async def test_model_settings_reach_the_model(client: AgentClient) -> None:
    await load(client, "settings")

    result = await client.run_sync(
        "settings", "hi", model_settings_json=b'{"temperature": 0.25, "max_tokens": 7}'
    )

    assert json.loads(result.text) == {"max_tokens": 7, "temperature": 0.25}


async def test_unknown_agent_is_not_found(client: AgentClient) -> None:
    with pytest.raises(RunFailed) as raised:
        await client.run_sync("ghost", "hi")

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "not_found"
    assert "'ghost'" in detail.message


async def test_invalid_history_is_invalid_argument(client: AgentClient) -> None:
    await load(client, "history")

    with pytest.raises(RunFailed) as raised:
        await client.run_sync("history", "hi", message_history_json=b'[{"kind": "nonsense"}]')

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert detail.type == "pydantic_core._pydantic_core.ValidationError"
    assert detail.message.startswith(
        "the message history is not a valid pydantic-ai message history: 1 validation error(s): "
    )
    assert "0:" in detail.message


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (b"[1, 2]", "the model settings must be a JSON object, got list"),
        (b"{not json", "the model settings are not valid JSON"),
    ],
)
async def test_invalid_model_settings_are_invalid_argument(
    client: AgentClient, settings: bytes, message: str
) -> None:
    await load(client, "settings")

    with pytest.raises(RunFailed) as raised:
        await client.run_sync("settings", "hi", model_settings_json=settings)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert message in detail.message


async def test_a_python_exception_is_unknown_with_its_traceback(client: AgentClient) -> None:
    await load(client, "failing")

    with pytest.raises(RunFailed) as raised:
        await client.run_sync("failing", "hi")

    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "python_error"
    assert detail.type == "ValueError"
    assert detail.message == "ValueError: the model exploded"
    assert "in _explode" in detail.traceback
    assert detail.traceback.rstrip().endswith("ValueError: the model exploded")


async def test_huge_errors_are_truncated(served: Served) -> None:
    def explode(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ValueError("x" * 100_000)

    await served.worker.load_agent("huge", Agent(FunctionModel(explode)))

    with pytest.raises(RunFailed) as raised:
        await served.client.run_sync("huge", "hi")

    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    detail = error_detail(raised.value)
    assert detail.type == "ValueError"
    assert detail.message.startswith("ValueError: xxx")
    assert detail.message.endswith("…")
    assert len(detail.message) <= 1000
    assert len(detail.traceback) <= 2500
    assert detail.traceback.startswith("…")


def raising(exc: Exception) -> Agent:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise exc

    return Agent(FunctionModel(model))


def answering_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("not a number")])


@pytest.mark.parametrize(
    ("agent", "code", "kind", "error_type", "message"),
    [
        pytest.param(
            raising(UsageLimitExceeded("The next request would exceed the request_limit of 0")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "usage_limit_exceeded",
            "pydantic_ai.exceptions.UsageLimitExceeded",
            "request_limit of 0",
            id="usage limit",
        ),
        pytest.param(
            # Output validation that exhausts its retries.
            Agent(FunctionModel(answering_text), output_type=int),
            grpc.StatusCode.INTERNAL,
            "output_validation_failed",
            "pydantic_ai.exceptions.UnexpectedModelBehavior",
            "Exceeded maximum output retries (1); last problem: 1 validation error(s): "
            "<root>: Invalid JSON",
            id="output validation failed",
        ),
        pytest.param(
            raising(UnexpectedModelBehavior("the model answered gibberish")),
            grpc.StatusCode.INTERNAL,
            "unexpected_model_behavior",
            "pydantic_ai.exceptions.UnexpectedModelBehavior",
            "the model answered gibberish",
            id="unexpected model behavior",
        ),
        pytest.param(
            raising(ModelHTTPError(429, "some-model", body="slow down")),
            grpc.StatusCode.UNAVAILABLE,
            "model_http_error",
            "pydantic_ai.exceptions.ModelHTTPError",
            "HTTP status 429",
            id="model HTTP error",
        ),
    ],
)
async def test_pydantic_ai_errors_have_their_own_status_and_kind(
    served: Served,
    agent: Agent,
    code: grpc.StatusCode,
    kind: str,
    error_type: str,
    message: str,
) -> None:
    await served.worker.load_agent("erring", agent)

    with pytest.raises(RunFailed) as raised:
        await served.client.run_sync("erring", "hi")

    assert raised.value.code() == code
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type) == (kind, error_type)
    assert message in detail.message


async def wait_until_cancelled(prompt: str) -> None:
    """The server cancels its handler shortly after the client gives up: wait for it."""
    async with asyncio.timeout(5):
        while prompt not in fixtures.cancelled:  # noqa: ASYNC110 (a fixture's plain list)
            await asyncio.sleep(0.01)


async def test_a_deadline_cancels_the_run(client: AgentClient) -> None:
    await load(client, "slow")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.run_sync_call("slow", "30.1", timeout=0.3)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until_cancelled("30.1")
    assert (await client.run_sync("slow", "0")).text == "done"


async def test_a_client_cancel_cancels_the_run(client: AgentClient) -> None:
    await load(client, "slow")
    call = client.run_sync_call("slow", "30.2")
    await asyncio.sleep(0.3)

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until_cancelled("30.2")
    assert (await client.run_sync("slow", "0")).text == "done"
    await load(client, "cancelled")
    assert "30.2" in json.loads((await client.run_sync("cancelled", "which?")).text)
    assert "30.2" in json.loads((await client.run_sync("slow", "cancelled?")).text)


async def test_slow_stream_agent_answers_its_chunks_at_once(client: AgentClient) -> None:
    await load(client, "slow_stream")

    assert (await client.run_sync("slow_stream", "3 0")).text == "chunk1 chunk2 chunk3 "


async def test_runs_are_concurrent(client: AgentClient) -> None:
    await load(client, "concurrency")

    results = await asyncio.gather(*(client.run_sync("concurrency", "50") for _ in range(50)))

    assert [result.text for result in results] == ["peak=50"] * 50
