"""Between the wire's JSON payloads and pydantic-ai's objects.

Message histories, model settings and structured outputs cross the wire as JSON
in pydantic-ai's own forms (see agent.proto): the worker validates them here,
with pydantic-ai's type adapter, and never invents a schema of its own.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import ModelMessagesTypeAdapter
from pydantic_ai.messages import ModelMessage
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage

from synapse_python._errors import invalid_argument
from synapse_python._proto.synapse.v1 import agent_pb2

_MAX_REPORTED_VALIDATION_ERRORS = 5


def parse_message_history(data: bytes) -> list[ModelMessage] | None:
    """`message_history_json` as pydantic-ai messages; empty means no history."""
    if not data:
        return None
    try:
        return ModelMessagesTypeAdapter.validate_json(data)
    except pydantic.ValidationError as exc:
        raise invalid_argument(
            "the message history is not a valid pydantic-ai message history: " + _summarize(exc),
            cause=exc,
        ) from exc


def parse_model_settings(data: bytes) -> dict[str, Any] | None:
    """`model_settings_json` as a settings dict; empty means none.

    Only the shape (a JSON object) is checked: which keys a model honours is the
    model's business, as it is when pydantic-ai is called directly.
    """
    if not data:
        return None
    try:
        settings = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(f"the model settings are not valid JSON: {exc}", cause=exc) from exc
    if not isinstance(settings, dict):
        raise invalid_argument(
            f"the model settings must be a JSON object, got {type(settings).__name__}"
        )
    return settings


def run_result(result: AgentRunResult[Any]) -> agent_pb2.RunResult:
    """The wire form of a finished run: text or JSON output, usage, all messages."""
    message = agent_pb2.RunResult(
        usage=usage(result.usage),
        messages_json=result.all_messages_json(),
        run_id=result.run_id,
    )
    if isinstance(result.output, str):
        message.text = result.output
    else:
        message.json = pydantic_core.to_json(result.output)
    return message


def usage(run_usage: RunUsage) -> agent_pb2.Usage:
    return agent_pb2.Usage(
        input_tokens=run_usage.input_tokens,
        output_tokens=run_usage.output_tokens,
        requests=run_usage.requests,
        tool_calls=run_usage.tool_calls,
        cache_read_tokens=run_usage.cache_read_tokens,
        cache_write_tokens=run_usage.cache_write_tokens,
    )


def _summarize(exc: pydantic.ValidationError) -> str:
    """pydantic's errors as one line: count, then `location: message` for the first few."""
    errors = exc.errors(include_url=False, include_input=False)
    shown = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
        for error in errors[:_MAX_REPORTED_VALIDATION_ERRORS]
    )
    more = len(errors) - _MAX_REPORTED_VALIDATION_ERRORS
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{len(errors)} validation error(s): {shown}{suffix}"
