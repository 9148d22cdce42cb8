"""A streamed run's events on the wire, as pydantic-ai emits them.

`EventRelay.handle` is the run's `event_stream_handler`: for each pydantic-ai
event it sends the `RunEvent`s of `wire_events` of the kinds the run asked
for, in order (an event that can give none of them is not converted), and,
when the run asked for it, the output validated so far (`output` events, as
pydantic-ai's `stream_output` yields it).

Every `AgentStreamEvent` has a wire form:

* a part of a model response starts empty (`part_start`): the text, thinking
  or tool arguments a pydantic-ai `PartStartEvent` starts with follow as the
  part's first delta, so that deltas alone carry a part's content and the
  `text_delta`s of a run concatenate to its text. `part_end` carries the
  whole part;
* text and thinking deltas are plain strings (`text_delta`,
  `thinking_delta`), tool call deltas a `tool_call_delta`; what else a delta
  carries (a signature, provider details, citations) follows as a
  `part_delta` holding pydantic-ai's JSON of that remainder. Text and
  thinking going to a part other than the one last named follow a
  `part_delta` naming it, with an empty delta (the rule is
  `SynapseCore.Event`'s; `EventRelay._sendable` applies it);
* function and output tool calls and their results, the final result and
  deferred tool requests have messages of their own;
* every other event (enqueued messages, tool availability, custom and
  capability events, ...) is an `other` event: its `event_kind` and
  pydantic-ai's JSON of it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import RunContext
from pydantic_ai.exceptions import ModelRetry, UnexpectedModelBehavior
from pydantic_ai.messages import (
    AgentStreamEvent,
    BaseToolCallPart,
    DeferredToolRequestsEvent,
    FinalResultEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelResponsePart,
    ModelResponsePartDelta,
    OutputToolCallEvent,
    OutputToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    ToolCallEvent,
    ToolCallPartDelta,
    ToolReturnPart,
    UserContent,
)
from pydantic_ai.result import AgentStream
from pydantic_ai.tools import DeferredToolRequests

from synapse_python import _convert, _errors
from synapse_python._proto.synapse.v1 import agent_pb2
from synapse_python._utf8 import escaped

Send = Callable[[agent_pb2.RunEvent], Awaitable[None]]
"""Sends one event to the client; returns once the transport took it (flow control)."""


DEFAULT_KINDS = frozenset({"text_delta", "tool_call", "tool_return"})
"""The events a run sends when its request names none (`RunRequest.events`)."""


class EventRelay:
    """Sends a run's events of the kinds asked for; see the module docstring."""

    def __init__(self, send: Send, kinds: frozenset[str]) -> None:
        self._send = send
        self._kinds = kinds or DEFAULT_KINDS
        unknown = self._kinds - _KINDS
        if unknown:
            raise _errors.invalid_argument(
                f"unknown event kinds {sorted(unknown)} (known: {sorted(_KINDS)})"
            )
        self._partial_output = "output" in self._kinds
        # The index of the last part_start, part_delta or tool_call_delta
        # sent: the part the client adds text and thinking deltas to. Kept
        # for the whole run, as the client keeps it.
        self._focus: int | None = None

    async def handle(self, ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        """The run's `event_stream_handler`, called once per model request and per tool step.

        `send` returns once the transport took the event, and pydantic-ai's
        stream has no buffer: a slow reader slows the run down.
        """
        partial = _PartialOutput(events) if self._partial_output else None
        async for event in events:
            # An event none of whose wire forms was asked for is not
            # converted: it costs nothing, and what it holds (text UTF-8
            # cannot carry, say) cannot fail a run that does not send it.
            if not self._kinds.isdisjoint(_wire_kinds(event)):
                for message in self._sendable(event, _wire_form(event)):
                    await self._send(message)
            if partial is not None and (output := await partial.after(event)) is not None:
                await self._send(output)

    def _sendable(
        self, event: AgentStreamEvent, messages: list[agent_pb2.RunEvent]
    ) -> Iterator[agent_pb2.RunEvent]:
        """`event`'s wire events of the kinds asked for, a text or thinking
        delta for a part other than the client's focus preceded by a
        `part_delta` naming that part.

        pydantic-ai may add text to a part started before the last one (a
        model's plain text has one vendor part id, so text after a tool call
        goes back to the text part); only a `PartDeltaEvent` can, a part's
        first text following its `part_start`.
        """
        target = event.index if isinstance(event, PartDeltaEvent) else None
        for message in messages:
            kind = message.WhichOneof("event")
            if kind not in self._kinds:
                continue
            if kind in _PART_EVENTS:
                self._focus = getattr(message, kind).index
            elif (
                target is not None
                and target != self._focus
                and kind in _FOCUS_DELTAS
                and "part_delta" in self._kinds
            ):
                self._focus = target
                yield _part_delta(target, _FOCUS_DELTAS[kind])
            yield message

    async def final_output(self, output: object) -> None:
        """Send the run's output as the last `output` event, if `output` events were asked for."""
        if self._partial_output:
            await self._send(output_event(output, partial=False))


class _PartialOutput:
    """The output validated so far of one model response, as `AgentStream.stream_output` has it.

    Once the response matches the output type (its `FinalResultEvent`), each
    event that changes the response's parts gives the response validated in
    pydantic-ai's partial mode (output validators see `ctx.partial_output`),
    unless it does not validate yet. Only a model request's stream (an
    `AgentStream`) has outputs; a tool step's has none.
    """

    def __init__(self, events: AsyncIterable[AgentStreamEvent]) -> None:
        self._stream = events if isinstance(events, AgentStream) else None
        self._matched = False
        self._last_parts: list[ModelResponsePart] | None = None

    async def after(self, event: AgentStreamEvent) -> agent_pb2.RunEvent | None:
        if self._stream is None:
            return None
        if isinstance(event, FinalResultEvent):
            self._matched = True
        if not self._matched or not isinstance(
            event, PartStartEvent | PartDeltaEvent | PartEndEvent | FinalResultEvent
        ):
            return None
        response = self._stream.response
        if self._last_parts is not None and response.parts == self._last_parts:
            return None
        self._last_parts = list(response.parts)
        try:
            output = await self._stream.validate_response_output(response, allow_partial=True)
        except (pydantic.ValidationError, ModelRetry, UnexpectedModelBehavior):
            return None
        try:
            return output_event(output, partial=True)
        except _errors.SynapseError:
            # No wire form yet (a NaN so far): the run's own output says so, if it keeps it.
            return None


def output_event(output: object, *, partial: bool) -> agent_pb2.RunEvent:
    """An `output` event: `output` as the run's result carries it, and its class."""
    message = agent_pb2.PartialOutput(output_type=type(output).__qualname__, partial=partial)
    _convert.put_output(message, output)
    return agent_pb2.RunEvent(output=message)


def _wire_form(event: AgentStreamEvent) -> list[agent_pb2.RunEvent]:
    """`wire_events(event)`; an event holding what the wire cannot carry (a
    lone surrogate, as in a file name `os.fsdecode` gave a tool) is
    `unrepresentable`, as the run's messages holding it are, not a Python error."""
    try:
        return list(wire_events(event))
    except (UnicodeEncodeError, pydantic_core.PydanticSerializationError) as exc:
        kind = getattr(event, "event_kind", type(event).__name__)
        raise _errors.unrepresentable(
            f"a {kind} event has no wire form: {escaped(str(exc))}"
        ) from exc


# The kinds of `RunEvent` each pydantic-ai event may become (`wire_events`);
# an event of any other class is an `other` event.
_WIRE_KINDS: dict[type, frozenset[str]] = {
    PartStartEvent: frozenset({"part_start", "text_delta", "thinking_delta", "tool_call_delta"}),
    PartDeltaEvent: frozenset({"text_delta", "thinking_delta", "tool_call_delta", "part_delta"}),
    PartEndEvent: frozenset({"part_end"}),
    FinalResultEvent: frozenset({"final_result"}),
    FunctionToolCallEvent: frozenset({"tool_call"}),
    OutputToolCallEvent: frozenset({"output_tool_call"}),
    FunctionToolResultEvent: frozenset({"tool_return"}),
    OutputToolResultEvent: frozenset({"output_tool_return"}),
    DeferredToolRequestsEvent: frozenset({"deferred_tool_requests_json"}),
}
_OTHER = frozenset({"other"})


# The kinds that name the part they are about (`index`): the client's focus.
_PART_EVENTS = frozenset({"part_start", "part_delta", "tool_call_delta"})
# The kinds with no index, and the empty delta whose `part_delta` moves the
# client's focus to the part they go to (an empty delta changes no part).
_FOCUS_DELTAS: dict[str, ModelResponsePartDelta] = {
    "text_delta": TextPartDelta(content_delta=""),
    "thinking_delta": ThinkingPartDelta(),
}


def _wire_kinds(event: AgentStreamEvent) -> frozenset[str]:
    """The kinds of the `RunEvent`s `wire_events(event)` may give."""
    for cls in type(event).__mro__:
        if (kinds := _WIRE_KINDS.get(cls)) is not None:
            return kinds
    return _OTHER


def wire_events(event: AgentStreamEvent) -> Iterator[agent_pb2.RunEvent]:
    """The `RunEvent`s standing for one pydantic-ai event, in order."""
    match event:
        case PartStartEvent(index=index, part=part):
            empty, first = _split_start(index, part)
            yield agent_pb2.RunEvent(
                part_start=agent_pb2.PartEvent(
                    index=index,
                    part_json=_dump_part(empty),
                    neighbour_kind=event.previous_part_kind or "",
                )
            )
            yield from first
        case PartDeltaEvent(index=index, delta=delta):
            yield from _delta_events(index, delta)
        case PartEndEvent(index=index, part=part):
            yield agent_pb2.RunEvent(
                part_end=agent_pb2.PartEvent(
                    index=index,
                    part_json=_dump_part(part),
                    neighbour_kind=event.next_part_kind or "",
                )
            )
        case FinalResultEvent(tool_name=tool_name, tool_call_id=tool_call_id):
            yield agent_pb2.RunEvent(
                final_result=agent_pb2.FinalResult(tool_name=tool_name, tool_call_id=tool_call_id)
            )
        case FunctionToolCallEvent():
            yield agent_pb2.RunEvent(tool_call=tool_call(event))
        case OutputToolCallEvent():
            yield agent_pb2.RunEvent(output_tool_call=tool_call(event))
        case FunctionToolResultEvent(part=part, content=content):
            returned = tool_return(part)
            if content is not None:
                returned.user_content_json = _user_content_adapter().dump_json(content)
            yield agent_pb2.RunEvent(tool_return=returned)
        case OutputToolResultEvent(part=part):
            yield agent_pb2.RunEvent(output_tool_return=tool_return(part))
        case DeferredToolRequestsEvent(requests=requests):
            yield agent_pb2.RunEvent(deferred_tool_requests_json=_dump_deferred(requests))
        case _:
            yield agent_pb2.RunEvent(
                other=agent_pb2.OtherEvent(
                    kind=str(getattr(event, "event_kind", type(event).__name__)),
                    json=_dump_event(event),
                )
            )


def _split_start(
    index: int, part: ModelResponsePart
) -> tuple[ModelResponsePart, list[agent_pb2.RunEvent]]:
    """A started part without its content, and the deltas that give it that content."""
    match part:
        case TextPart(content=text):
            return dataclasses.replace(part, content=""), _text_deltas("text_delta", text)
        case ThinkingPart(content=text):
            return dataclasses.replace(part, content=""), _text_deltas("thinking_delta", text)
        case BaseToolCallPart(args=args) if args:
            delta = agent_pb2.ToolCallDelta(index=index, tool_call_id=part.tool_call_id)
            _set_args(delta, args)
            return (
                dataclasses.replace(part, args=None),
                [agent_pb2.RunEvent(tool_call_delta=delta)],
            )
        case _:
            return part, []


def _text_deltas(field: str, text: str) -> list[agent_pb2.RunEvent]:
    what = "the model's text" if field == "text_delta" else "the model's thinking"
    return [agent_pb2.RunEvent(**{field: _convert.wire_text(text, what)})] if text else []


def _delta_events(index: int, delta: Any) -> Iterator[agent_pb2.RunEvent]:
    match delta:
        case TextPartDelta(content_delta=text):
            yield from _text_deltas("text_delta", text)
            rest = dataclasses.replace(delta, content_delta="")
            if _carries_more(rest, TextPartDelta(content_delta="")):
                yield _part_delta(index, rest)
        case ThinkingPartDelta(content_delta=text):
            yield from _text_deltas("thinking_delta", text or "")
            rest = dataclasses.replace(delta, content_delta=None)
            if _carries_more(rest, ThinkingPartDelta()):
                yield _part_delta(index, rest)
        case ToolCallPartDelta():
            message = agent_pb2.ToolCallDelta(index=index)
            if delta.tool_call_id is not None:
                message.tool_call_id = delta.tool_call_id
            if delta.tool_name_delta is not None:
                message.tool_name_delta = delta.tool_name_delta
            if delta.args_delta is not None:
                _set_args(message, delta.args_delta)
            yield agent_pb2.RunEvent(tool_call_delta=message)
            rest = dataclasses.replace(
                delta, tool_call_id=None, tool_name_delta=None, args_delta=None
            )
            if _carries_more(rest, ToolCallPartDelta()):
                yield _part_delta(index, rest)
        case _:
            yield _part_delta(index, delta)


def _carries_more(rest: object, empty: object) -> bool:
    """Whether a delta without its text still says something (a signature, details, ...)."""
    return rest != empty


def _part_delta(index: int, delta: object) -> agent_pb2.RunEvent:
    return agent_pb2.RunEvent(
        part_delta=agent_pb2.PartDelta(index=index, delta_json=_delta_adapter().dump_json(delta))
    )


def _set_args(message: agent_pb2.ToolCallDelta, args: str | dict[str, Any]) -> None:
    if isinstance(args, str):
        message.args_text = args
    else:
        message.args_json = pydantic_core.to_json(args)


def tool_call(event: ToolCallEvent) -> agent_pb2.ToolCall:
    """A tool call as the model made it: its arguments as given, and whether they validated."""
    part = event.part
    call = agent_pb2.ToolCall(
        id=part.tool_call_id, name=part.tool_name, args_json=part.args_as_json_str().encode()
    )
    if event.args_valid is not None:
        call.args_valid = event.args_valid
    return call


def tool_return(part: ToolReturnPart) -> agent_pb2.ToolReturn:
    """A tool call's outcome: its return value as JSON, or the retry prompt the model gets.

    A retried call (the tool raised `ModelRetry`, the client answered a
    `retry_message`, the arguments did not validate, the tool is unknown) has
    `retry` set and its content is the retry prompt's text as a JSON string:
    the `ModelRetry` message as is, a validation error's details as JSON text.
    Any other outcome (success, or pydantic-ai's `failed`/`denied`) carries the
    part's content as JSON; values JSON cannot hold (bytes, arbitrary objects)
    are encoded leniently (base64, `str`) rather than failing the run.
    """
    if part.outcome == "retried":
        content = part.model_response_str(wrap_if_error=False)
        return agent_pb2.ToolReturn(
            id=part.tool_call_id,
            name=part.tool_name,
            content_json=pydantic_core.to_json(content),
            retry=True,
            outcome=part.outcome,
        )
    return agent_pb2.ToolReturn(
        id=part.tool_call_id,
        name=part.tool_name,
        content_json=pydantic_core.to_json(part.content, bytes_mode="base64", fallback=str),
        outcome=part.outcome,
    )


@functools.cache
def _part_adapter() -> pydantic.TypeAdapter[ModelResponsePart]:
    return pydantic.TypeAdapter(ModelResponsePart)


@functools.cache
def _user_content_adapter() -> pydantic.TypeAdapter[str | Sequence[UserContent]]:
    # As pydantic-ai's messages are written (`ModelMessagesTypeAdapter`).
    return pydantic.TypeAdapter(
        str | Sequence[UserContent], config=pydantic.ConfigDict(ser_json_bytes="base64")
    )


@functools.cache
def _delta_adapter() -> pydantic.TypeAdapter[ModelResponsePartDelta]:
    return pydantic.TypeAdapter(ModelResponsePartDelta)


@functools.cache
def _event_adapter() -> pydantic.TypeAdapter[AgentStreamEvent]:
    return pydantic.TypeAdapter(AgentStreamEvent)


@functools.cache
def _deferred_adapter() -> pydantic.TypeAdapter[DeferredToolRequests]:
    return pydantic.TypeAdapter(DeferredToolRequests)


# The `RunEvent` fields that are events (not the tool and approval requests, the
# result and the failure).
_KINDS = frozenset(
    field.name
    for field in agent_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    if field.name not in {"tool_request", "approval_request", "result", "failure"}
)


def _dump_part(part: ModelResponsePart) -> bytes:
    return _part_adapter().dump_json(part)


def _dump_event(event: AgentStreamEvent) -> bytes:
    return _event_adapter().dump_json(event)


def _dump_deferred(requests: DeferredToolRequests) -> bytes:
    return _deferred_adapter().dump_json(requests)
