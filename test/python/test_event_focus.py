"""Text and thinking deltas carry no part index: the client adds them to the
part the last `part_start`, `part_delta` or `tool_call_delta` it got names.
When pydantic-ai adds text or thinking to another part, `EventRelay` first
sends a `part_delta` naming that part, with an empty delta of that kind; in
the common stream (each delta to the part that started last) it sends
nothing more than `wire_events` gives.

Real agents (synapse_fixtures.events) run by pydantic-ai, their events
through a real `EventRelay`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import AgentStreamEvent

from synapse_fixtures.events import back_and_forth_agent, thinking_agent
from synapse_python._events import _KINDS, EventRelay, wire_events
from synapse_python._proto.synapse.v1 import agent_pb2

# The focus part_deltas' fields: an empty delta of each kind.
TEXT = {"part_delta_kind": "text", "content_delta": ""}
THINKING = {"part_delta_kind": "thinking"}

# Every kind but `output` (which validates the output as it grows; not about parts).
ALL = _KINDS - {"output"}


async def relayed(
    agent: Agent[Any, Any], kinds: frozenset[str]
) -> tuple[list[AgentStreamEvent], list[agent_pb2.RunEvent]]:
    """pydantic-ai's events of a run of `agent`, and what the relay sent of them."""
    seen: list[AgentStreamEvent] = []
    sent: list[agent_pb2.RunEvent] = []

    async def send(message: agent_pb2.RunEvent) -> None:
        sent.append(message)

    relay = EventRelay(send, kinds)

    async def handler(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        async def tee() -> AsyncIterator[AgentStreamEvent]:
            async for event in events:
                seen.append(event)
                yield event

        await relay.handle(ctx, tee())

    await agent.run("go", event_stream_handler=handler)
    return seen, sent


def shown(message: agent_pb2.RunEvent) -> tuple[Any, ...]:
    """A wire event as (kind, its index or text, and a `part_delta`'s set fields)."""
    kind = message.WhichOneof("event")
    match kind:
        case "text_delta" | "thinking_delta":
            return (kind, getattr(message, kind))
        case "part_delta":
            delta = json.loads(message.part_delta.delta_json)
            return (
                kind,
                message.part_delta.index,
                {k: v for k, v in delta.items() if v is not None},
            )
        case "part_start" | "part_end" | "tool_call_delta":
            return (kind, getattr(message, kind).index)
    return (kind,)


def filtered(events: list[AgentStreamEvent], kinds: frozenset[str]) -> list[agent_pb2.RunEvent]:
    return [
        message
        for event in events
        for message in wire_events(event)
        if message.WhichOneof("event") in kinds
    ]


async def test_a_delta_to_another_part_is_preceded_by_a_part_delta_naming_it() -> None:
    events, sent = await relayed(back_and_forth_agent, ALL)

    first_response = [shown(message) for message in sent][:16]
    assert first_response == [
        ("part_start", 0),
        ("thinking_delta", "Let me "),
        ("part_end", 0),
        ("part_start", 1),
        ("text_delta", "Hel"),
        ("final_result",),
        ("part_end", 1),
        ("part_start", 2),
        ("tool_call_delta", 2),
        # pydantic-ai's text goes to part 1, its thinking to part 0, then
        # text to part 1 again: each time another part than the last named.
        ("part_delta", 1, TEXT),
        ("text_delta", "lo"),
        ("part_delta", 0, THINKING),
        ("thinking_delta", "think."),
        ("part_delta", 1, TEXT),
        ("text_delta", "!"),
        ("part_end", 2),
    ]
    # Those three are all the relay adds to the events' wire forms.
    added = {9, 11, 13}
    assert [m for at, m in enumerate(sent) if at not in added] == filtered(events, ALL)


async def test_deltas_to_the_part_named_last_come_as_wire_events_gives_them() -> None:
    # Thinking, text, then a tool call's arguments: each delta to the part
    # that started last (the signature's part_delta is pydantic-ai's own).
    events, sent = await relayed(thinking_agent, ALL)

    assert sent == filtered(events, ALL)
    signature = {
        "part_delta_kind": "thinking",
        "signature_delta": "sig-1",
        "provider_name": "function",
    }
    assert [shown(m) for m in sent if m.HasField("part_delta")] == [("part_delta", 0, signature)]


async def test_without_part_deltas_asked_for_nothing_is_added() -> None:
    # The client gets no part_delta, so it cannot be told; its text is the same.
    kinds = frozenset({"part_start", "text_delta", "thinking_delta"})
    events, sent = await relayed(back_and_forth_agent, kinds)

    assert sent == filtered(events, kinds)
