"""Agents whose recorded models stream every kind of event pydantic-ai has.

`thinking_agent`'s model first thinks (with a signature), writes text and
calls `double` with its arguments in fragments; once it has the tool's
result, it calls the output tool, its arguments in fragments too, so that
the output grows. `double` emits a custom event. `slow_args_agent`'s model
streams a tool call's arguments in lockstep with its reader: the prompt
"N DIR" gives N fragments, fragment i only once the file DIR/i exists (the
reader creates it when it has seen the fragment before), so that a test
knows each fragment reached it while the model was still streaming.
`back_and_forth_agent`'s model goes back to parts it started before: after
starting a tool call it writes more text and more thinking, which
pydantic-ai adds to the text and thinking parts started first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from pydantic_ai import Agent, CustomEvent, DeferredToolRequests, RunContext, ToolReturn
from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import (
    AgentInfo,
    DeltaThinkingCalls,
    DeltaThinkingPart,
    DeltaToolCall,
    DeltaToolCalls,
    FunctionModel,
)

from synapse_fixtures.recording import record, recorded_model


class Pet(BaseModel):
    name: str
    species: str


@dataclass(kw_only=True)
class DoublingEvent(CustomEvent):
    value: int


_ARGS_PIECES = ['{"n"', ": 2", "1}"]
_OUTPUT_PIECES = ['{"name": "R', 'ex", "spe', 'cies": "do', 'g"}']


def _tool_returned(messages: list[ModelMessage]) -> bool:
    last = messages[-1]
    return isinstance(last, ModelRequest) and any(
        isinstance(part, ToolReturnPart) for part in last.parts
    )


def _respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    record(False, messages, info)
    if _tool_returned(messages):
        args = "".join(_OUTPUT_PIECES)
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, args, "out_1")])
    return ModelResponse(
        parts=[
            ThinkingPart("Let me think.", signature="sig-1", provider_name="function"),
            TextPart("Doubling it. "),
            ToolCallPart("double", "".join(_ARGS_PIECES), "call_1"),
        ]
    )


async def _stream(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls | DeltaThinkingCalls]:
    record(True, messages, info)
    if _tool_returned(messages):
        yield {2: DeltaToolCall(name=info.output_tools[0].name, tool_call_id="out_1")}
        for piece in _OUTPUT_PIECES:
            yield {2: DeltaToolCall(json_args=piece)}
        return
    yield {0: DeltaThinkingPart(content="Let me ")}
    yield {0: DeltaThinkingPart(content="think.", signature="sig-1")}
    yield "Doubling "
    yield "it. "
    yield {1: DeltaToolCall(name="double", tool_call_id="call_1")}
    for piece in _ARGS_PIECES:
        yield {1: DeltaToolCall(json_args=piece)}


thinking_agent = Agent(
    FunctionModel(_respond, stream_function=_stream, model_name="thinking"), output_type=Pet
)


@thinking_agent.tool
async def double(ctx: RunContext[None], n: int) -> int:
    """Doubles n."""
    await ctx.emit(DoublingEvent(value=n))
    return n * 2


async def _back_and_forth(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls | DeltaThinkingCalls]:
    record(True, messages, info)
    if _tool_returned(messages):
        yield "Done."
        return
    yield {0: DeltaThinkingPart(content="Let me ")}
    yield "Hel"
    yield {1: DeltaToolCall(name="shout", json_args='{"word": "hi"}', tool_call_id="shout_1")}
    # Plain text has one vendor part id, and the thinking's is 0: both go
    # back to the parts they started, not to the tool call started last.
    yield "lo"
    yield {0: DeltaThinkingPart(content="think.")}
    yield "!"


back_and_forth_agent = Agent(
    FunctionModel(stream_function=_back_and_forth, model_name="back_and_forth")
)


@back_and_forth_agent.tool_plain
def shout(word: str) -> str:
    """Shouts the word."""
    return word.upper()


def _slow_plan(messages: list[ModelMessage]) -> tuple[int, Path]:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    count, gate = str(first.parts[-1].content).split()
    return int(count), Path(gate)


async def _wait_for(path: Path, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if path.exists():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"nobody created {path}")


async def _slow_args(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    if _tool_returned(messages):
        yield "done"
        return
    count, gate = _slow_plan(messages)
    yield {0: DeltaToolCall(name="collect", tool_call_id="slow_1")}
    yield {0: DeltaToolCall(json_args='{"items": [')}
    for index in range(count):
        await _wait_for(gate / str(index))
        separator = ", " if index else ""
        yield {0: DeltaToolCall(json_args=f'{separator}"item{index + 1}"')}
    yield {0: DeltaToolCall(json_args="]}")}


slow_args_agent = Agent(FunctionModel(stream_function=_slow_args, model_name="slow_args"))


@slow_args_agent.tool_plain
def collect(items: list[str]) -> int:
    """Counts the items."""
    return len(items)


async def _delete_stream(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    record(True, messages, info)
    yield {
        0: DeltaToolCall(name="delete_file", json_args='{"path": "a.txt"}', tool_call_id="del_1")
    }


approval_agent = Agent(
    FunctionModel(stream_function=_delete_stream, model_name="approval"),
    output_type=[str, DeferredToolRequests],
)


@approval_agent.tool_plain(requires_approval=True)
def delete_file(path: str) -> str:
    """Deletes a file (once approved)."""
    return f"deleted {path}"


# A tool that shows the model an image after its result (`ToolReturn.content`).
SNAPSHOT = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def _look(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if _tool_returned(messages):
        return ModelResponse(parts=[TextPart("seen")])
    return ModelResponse(parts=[ToolCallPart("snapshot", {}, tool_call_id="snap_1")])


snapshot_agent = Agent(recorded_model(_look, name="look"))


@snapshot_agent.tool_plain
def snapshot() -> ToolReturn:
    """Takes a snapshot of the screen."""
    return ToolReturn(
        return_value="snapshot taken",
        content=["The snapshot:", BinaryContent(SNAPSHOT, media_type="image/png")],
    )
