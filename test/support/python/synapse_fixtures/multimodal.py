"""An agent whose model answers with what it got as the user prompt, exactly.

`describing_agent`'s model (recorded, see `recording`) answers with JSON
describing each item of the last user prompt: its Python class and every
field of it, private ones included (a URL's `_media_type`, a binary's
`_identifier`), with the `media_type` and `identifier` pydantic-ai derives;
bytes are described by their size and SHA-256. Two runs whose models got
the same prompt objects answer the same text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pydantic_core
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.recording import recorded_model


def _value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    return pydantic_core.to_jsonable_python(value)


def _describe(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"class": "str", "value": item}
    fields = {field.name: _value(getattr(item, field.name)) for field in dataclasses.fields(item)}
    derived = {
        name: _value(getattr(item, name))
        for name in ("media_type", "identifier")
        if hasattr(type(item), name)
    }
    return {"class": type(item).__qualname__, "fields": fields, "derived": derived}


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    prompts = [part.content for part in last.parts if isinstance(part, UserPromptPart)]
    described = [
        [_describe(prompt)] if isinstance(prompt, str) else [_describe(item) for item in prompt]
        for prompt in prompts
    ]
    return ModelResponse(parts=[TextPart(json.dumps(described, sort_keys=True))])


describing_agent = Agent(recorded_model(_answer, name="describing"))
