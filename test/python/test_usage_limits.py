"""usage_limits_json, on RunSync and Run: limits that hold, limits exceeded, bad limits."""

from __future__ import annotations

import grpc
import pytest

from conftest import AgentClient, RunFailed, error_detail, split_events
from synapse_python._errors import kind_name


@pytest.fixture
async def tools(client: AgentClient) -> AgentClient:
    await client.load_agent("tools", ref="synapse_fixtures.agents:tool_agent")
    return client


async def test_a_run_within_its_limits_succeeds(tools: AgentClient) -> None:
    limits = b'{"request_limit": 2, "total_tokens_limit": 1000, "tool_calls_limit": 1}'

    result = await tools.run_sync("tools", "add", usage_limits_json=limits)

    assert result.text == '{"add":0}'
    assert (result.usage.requests, result.usage.tool_calls) == (2, 1)
    _, streamed = split_events(await tools.run("tools", "add", usage_limits_json=limits))
    assert streamed.text == result.text


async def test_a_null_limit_is_lifted(tools: AgentClient) -> None:
    result = await tools.run_sync("tools", "add", usage_limits_json=b'{"request_limit": null}')

    assert result.usage.requests == 2


async def test_exceeding_a_limit_is_usage_limit_exceeded(tools: AgentClient) -> None:
    limits = b'{"request_limit": 1}'

    with pytest.raises(RunFailed) as sync_raised:
        await tools.run_sync("tools", "add", usage_limits_json=limits)
    with pytest.raises(RunFailed) as stream_raised:
        await tools.run("tools", "add", usage_limits_json=limits)

    for raised in (sync_raised, stream_raised):
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        detail = error_detail(raised.value)
        assert kind_name(detail.kind) == "usage_limit_exceeded"
        assert detail.type == "pydantic_ai.exceptions.UsageLimitExceeded"
        assert "request_limit of 1" in detail.message


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        pytest.param(
            b'{"request_limit": 1, "requests": 2}',
            "unknown usage limit 'requests' (known: cost_limit, request_limit,",
            id="unknown key",
        ),
        pytest.param(
            b'{"request_limit": "1"}',
            "request_limit: Input should be a valid integer",
            id="string for a count",
        ),
        pytest.param(
            b'{"total_tokens_limit": 1.5}',
            "total_tokens_limit: Input should be a valid integer",
            id="float for a count",
        ),
        pytest.param(
            b'{"request_limit": true}',
            "request_limit: Input should be a valid integer",
            id="boolean for a count",
        ),
        pytest.param(
            b'{"count_tokens_before_request": 1}',
            "count_tokens_before_request: Input should be a valid boolean",
            id="number for a flag",
        ),
        pytest.param(b"[1]", "the usage limits must be a JSON object", id="not an object"),
        pytest.param(b"{nope", "Invalid JSON", id="not JSON"),
    ],
)
async def test_invalid_limits_are_invalid_argument(
    tools: AgentClient, limits: bytes, message: str
) -> None:
    with pytest.raises(RunFailed) as sync_raised:
        await tools.run_sync("tools", "add", usage_limits_json=limits)
    with pytest.raises(RunFailed) as stream_raised:
        await tools.run("tools", "add", usage_limits_json=limits)

    for raised in (sync_raised, stream_raised):
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        detail = error_detail(raised.value)
        assert kind_name(detail.kind) == "invalid_argument"
        assert detail.message.startswith("invalid usage limits: ")
        assert message in detail.message
