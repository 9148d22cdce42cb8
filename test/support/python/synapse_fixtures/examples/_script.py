"""What the scripted models of the examples read from the messages they get."""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)


def prompt(messages: list[ModelMessage]) -> str:
    """The text of the latest user prompt."""
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


def this_turn(messages: list[ModelMessage]) -> list[ModelMessage]:
    """The messages after the request holding the latest user prompt."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, ModelRequest) and any(
            isinstance(part, UserPromptPart) for part in message.parts
        ):
            return messages[index + 1 :]
    return messages


def returns(messages: list[ModelMessage], tool: str) -> list[Any]:
    """The contents of this turn's returns of `tool`, in order."""
    return [
        part.content
        for message in this_turn(messages)
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == tool
    ]


def retries(messages: list[ModelMessage]) -> list[str]:
    """The retry prompts of the latest request (output validators, tools)."""
    last = messages[-1] if messages else None
    if not isinstance(last, ModelRequest):
        return []
    found = []
    for part in last.parts:
        if isinstance(part, RetryPromptPart):
            found.append(part.model_response())
        elif isinstance(part, ToolReturnPart) and part.outcome == "retried":
            found.append(part.model_response_str())
    return found


def turns(messages: list[ModelMessage]) -> int:
    """How many user prompts the conversation has had."""
    return sum(
        1
        for message in messages
        if isinstance(message, ModelRequest)
        and any(isinstance(part, UserPromptPart) for part in message.parts)
    )


def call(name: str, args: dict[str, Any], call_id: str) -> ToolCallPart:
    return ToolCallPart(name, json.dumps(args), tool_call_id=call_id)


def text(content: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(content)])


def calls(*parts: ToolCallPart) -> ModelResponse:
    return ModelResponse(parts=list(parts))
