"""What only another client of the wire contract could send: malformed prompt parts and event kinds.

Synapse's Elixir side never sends these (it validates first); the worker
still refuses each with `invalid_argument`, naming what is wrong, and keeps
serving. The well-formed cases are tested through Synapse
(test/synapse_core/prompt_test.exs, events_test.exs).
"""

from __future__ import annotations

import pytest

from conftest import AgentClient, RunFailed, split_events
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2


async def load(client: AgentClient) -> None:
    await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (agent_pb2.PromptPart(), "prompt part 1 is empty"),
        (
            agent_pb2.PromptPart(content_json=b'{"kind": "gif"}'),
            "prompt part 1: 1 validation error",
        ),
        (agent_pb2.PromptPart(content_json=b"not json"), "prompt part 1: 1 validation error"),
        (
            agent_pb2.PromptPart(
                binary=agent_pb2.BinaryPart(
                    data=b"\x00", media_type="image/png", vendor_metadata_json=b"[1]"
                )
            ),
            "prompt part 1: vendor_metadata must be a JSON object",
        ),
    ],
)
async def test_malformed_prompt_parts_are_invalid_argument(
    client: AgentClient, part: agent_pb2.PromptPart, message: str
) -> None:
    await load(client)
    parts = [agent_pb2.PromptPart(text="hi"), part]

    for run in (client.run_sync, client.run):
        with pytest.raises(RunFailed) as raised:
            await run("echo", prompt_parts=parts)
        assert kind_name(raised.value.detail.kind) == "invalid_argument"
        assert message in raised.value.detail.message

    result = await client.run_sync("echo", prompt_parts=[agent_pb2.PromptPart(text="hi")])
    assert b'"content":["hi"]' in result.messages_json


async def test_unknown_event_kinds_are_invalid_argument(client: AgentClient) -> None:
    await load(client)

    with pytest.raises(RunFailed) as raised:
        await client.run("echo", "hi", events=["text_delta", "tool_request", "nope"])

    assert kind_name(raised.value.detail.kind) == "invalid_argument"
    assert "['nope', 'tool_request']" in raised.value.detail.message

    deltas, result = split_events(await client.run("echo", "hi", events=["text_delta"]))
    assert "".join(deltas) == result.text
