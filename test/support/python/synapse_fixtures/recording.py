"""FunctionModels that record what they receive, for tests that compare two runs.

A recorded function appends one JSON line per model request to the file
named by the environment variable `SYNAPSE_FIDELITY_RECORD` (nothing when it
is unset): whether the request was streamed, the messages the model got, and
what pydantic-ai told it (instructions, tools, output tools, settings). The
values that differ between two identical runs by nature (timestamps, run and
conversation ids) are left out, so that a run through Synapse and a direct
Python run of the same agent record the same lines.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic_ai import ModelMessagesTypeAdapter
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

RECORD_ENV = "SYNAPSE_FIDELITY_RECORD"

# Values that two runs of the same agent never share.
VOLATILE_KEYS = frozenset({"timestamp", "run_id", "conversation_id"})

Function = Callable[[list[ModelMessage], AgentInfo], ModelResponse | Awaitable[ModelResponse]]


def without_volatile(data: Any) -> Any:
    """`data` (JSON-able) without the keys in `VOLATILE_KEYS`, at any depth."""
    if isinstance(data, dict):
        return {k: without_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS}
    if isinstance(data, list):
        return [without_volatile(item) for item in data]
    return data


def record(streamed: bool, messages: list[ModelMessage], info: AgentInfo) -> None:
    """Append what one model request received to the record file, if any."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    entry = {
        "streamed": streamed,
        "messages": without_volatile(ModelMessagesTypeAdapter.dump_python(messages, mode="json")),
        "instructions": info.instructions,
        "function_tools": pydantic_core.to_jsonable_python(info.function_tools),
        "output_tools": pydantic_core.to_jsonable_python(info.output_tools),
        "allow_text_output": info.allow_text_output,
        "model_settings": pydantic_core.to_jsonable_python(info.model_settings),
    }
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def recorded_model(function: Function, *, name: str, streams: bool = True) -> FunctionModel:
    """A FunctionModel answering with `function`, recording each request it gets.

    With `streams`, it also serves streamed requests, with the same response
    streamed: text a word at a time, each tool call as one chunk.
    """

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        record(False, messages, info)
        return await _response(function, messages, info)

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        record(True, messages, info)
        response = await _response(function, messages, info)
        for index, part in enumerate(response.parts):
            if isinstance(part, TextPart):
                for word in re.findall(r"\S+\s*|\s+", part.content):
                    yield word
            elif isinstance(part, ToolCallPart):
                yield {
                    index: DeltaToolCall(
                        name=part.tool_name,
                        json_args=part.args_as_json_str(),
                        tool_call_id=part.tool_call_id,
                    )
                }

    return FunctionModel(respond, stream_function=stream if streams else None, model_name=name)


async def _response(
    function: Function, messages: list[ModelMessage], info: AgentInfo
) -> ModelResponse:
    response = function(messages, info)
    if inspect.isawaitable(response):
        response = await response
    return response
