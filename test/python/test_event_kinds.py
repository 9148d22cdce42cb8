"""`_events._wire_kinds` names every kind `wire_events` gives for an event.

The relay skips converting an event none of whose kinds the run asked for,
so an event whose wire form held a kind missing from its entry would be lost.
One event per branch of `wire_events`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic_ai.messages import (
    CustomEvent,
    DeferredToolRequestsEvent,
    FinalResultEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    OutputToolCallEvent,
    OutputToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    ToolCallPart,
    ToolCallPartDelta,
    ToolReturnPart,
)
from pydantic_ai.tools import DeferredToolRequests

from synapse_python._events import _wire_kinds, wire_events


@dataclass
class Progress(CustomEvent):
    """A custom event, as a capability or tool may emit one."""

    done: int = 0


_CALL = ToolCallPart("lookup", {"id": 1}, tool_call_id="c1")
_RETURN = ToolReturnPart("lookup", "found", tool_call_id="c1")

EVENTS = [
    PartStartEvent(index=0, part=TextPart("hello")),
    PartStartEvent(index=0, part=ThinkingPart("hmm")),
    PartStartEvent(index=0, part=_CALL),
    PartDeltaEvent(index=0, delta=TextPartDelta("more", provider_details={"a": 1})),
    PartDeltaEvent(index=0, delta=ThinkingPartDelta(content_delta="so", signature_delta="s")),
    PartDeltaEvent(index=0, delta=ToolCallPartDelta(args_delta='{"id"', tool_call_id="c1")),
    PartEndEvent(index=0, part=TextPart("hello")),
    FinalResultEvent(tool_name=None, tool_call_id=None),
    FunctionToolCallEvent(_CALL),
    OutputToolCallEvent(_CALL),
    FunctionToolResultEvent(_RETURN),
    OutputToolResultEvent(_RETURN),
    DeferredToolRequestsEvent(DeferredToolRequests(calls=[_CALL])),
    Progress(name="progress", done=1),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_an_events_wire_kinds_hold_every_kind_it_becomes(event: object) -> None:
    given = {message.WhichOneof("event") for message in wire_events(event)}  # type: ignore[arg-type]
    assert given
    assert given <= _wire_kinds(event)  # type: ignore[arg-type]


def test_every_wire_kind_is_given_by_some_event() -> None:
    given = {message.WhichOneof("event") for e in EVENTS for message in wire_events(e)}  # type: ignore[arg-type]
    named = frozenset().union(*(_wire_kinds(e) for e in EVENTS))  # type: ignore[arg-type]
    assert given == named
