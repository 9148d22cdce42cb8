"""Between the wire's payloads and pydantic-ai's objects.

Message histories, model settings, usage limits and structured outputs cross the
wire as JSON in pydantic-ai's own forms (see agent.proto): the worker validates
them here, against pydantic-ai's own types, and never invents a schema of its
own. (Run events are mapped in `_events`.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from collections.abc import Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import DeferredToolRequests, ModelMessagesTypeAdapter, RunCancelled
from pydantic_ai.messages import ModelMessage, ModelResponse, repair_messages
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage, UsageBase, UsageLimits

from synapse_python._approvals import deferred_output
from synapse_python._errors import (
    invalid_argument,
    summarize_validation_error,
    unrepresentable,
    validation_failed,
)
from synapse_python._proto.synapse.v1 import agent_pb2
from synapse_python._utf8 import unencodable


def parse_message_history(data: bytes) -> list[ModelMessage] | None:
    """`message_history_json` as pydantic-ai messages; empty means no history."""
    if not data:
        return None
    try:
        return ModelMessagesTypeAdapter.validate_json(data)
    except pydantic.ValidationError as exc:
        # Each error as data too, as for deps: where it is, under `message_history`.
        errors = [
            {**error, "loc": ("message_history", *error["loc"])}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise validation_failed(
            "the message history is not a valid pydantic-ai message history: "
            + summarize_validation_error(exc),
            errors,
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


def parse_usage_limits(data: bytes) -> UsageLimits | None:
    """`usage_limits_json` as pydantic-ai `UsageLimits`; empty means pydantic-ai's defaults.

    The keys are `UsageLimits`' fields, e.g. `{"request_limit": 1, "total_tokens_limit": 100}`;
    a limit given as `null` is lifted (pydantic-ai's `None`). Unknown keys and
    values of the wrong JSON type (`"1"`, `1.0` or `true` for a count) are
    rejected, naming the key.
    """
    if not data:
        return None
    try:
        fields = _usage_limits_model().model_validate_json(data)
    except pydantic.ValidationError as exc:
        raise invalid_argument(
            "invalid usage limits: " + _describe_usage_limit_errors(exc), cause=exc
        ) from exc
    return UsageLimits(**fields.model_dump(exclude_unset=True))


@functools.cache
def _usage_limits_model() -> type[pydantic.BaseModel]:
    """A strict, closed pydantic model of `UsageLimits`' fields, made from the dataclass itself."""
    hints = typing.get_type_hints(UsageLimits)
    fields: dict[str, Any] = {
        field.name: (hints[field.name], field.default)
        for field in dataclasses.fields(UsageLimits)
        if field.init
    }
    return pydantic.create_model(
        "UsageLimits",
        __config__=pydantic.ConfigDict(extra="forbid", strict=True),
        **fields,
    )


def _describe_usage_limit_errors(exc: pydantic.ValidationError) -> str:
    known = ", ".join(field.name for field in dataclasses.fields(UsageLimits) if field.init)
    described = []
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            described.append(f"unknown usage limit {key!r} (known: {known})")
        elif key:
            described.append(f"{key}: {error['msg']}")
        elif error["type"] == "model_type":
            described.append("the usage limits must be a JSON object")
        else:
            described.append(error["msg"])
    return "; ".join(described)


def run_result(
    result: AgentRunResult[Any],
    output_tool_return_content: str | None = None,
    *,
    messages: bool = True,
) -> agent_pb2.RunResult:
    """The wire form of a finished run: output, its class, usage, all messages.

    An output that is pydantic-ai's `DeferredToolRequests` (the run ended with
    tool calls awaiting approval or an external result) has a form of its own.

    The messages are pydantic-ai's own `all_messages_json()` bytes, untouched
    (with `output_tool_return_content` given to it when set): the client
    hands them back as they are, so the next turn's history is byte for byte
    the one a Python caller would pass. Without `messages` (the caller will
    not continue the conversation), `messages_json` is left empty: the
    messages' JSON is most of what converting a short run costs.
    """
    try:
        messages_json = (
            result.all_messages_json(output_tool_return_content=output_tool_return_content)
            if messages
            else b""
        )
    except pydantic_core.PydanticSerializationError as exc:
        # What the run holds (a string UTF-8 cannot encode, an object with
        # no JSON form), not what the caller asked.
        raise unrepresentable(f"the run's messages have no JSON form: {exc}") from exc
    except (ValueError, LookupError) as exc:
        raise invalid_argument(f"output_tool_return_content: {exc}", cause=exc) from exc
    output = result.output
    message = agent_pb2.RunResult(
        usage=usage(result.usage, result.new_messages()),
        messages_json=messages_json,
        run_id=result.run_id,
        output_type=type(output).__qualname__,
        message_count=len(result.all_messages()),
        new_message_index=result._new_message_index,  # what new_messages() slices from
    )
    if isinstance(output, DeferredToolRequests):
        message.deferred.CopyFrom(deferred_output(output))
    else:
        put_output(message, output)
    return message


def put_output(message: agent_pb2.RunResult | agent_pb2.PartialOutput, output: object) -> None:
    """Sets the `output` of a run's result or output event: text, bytes as
    they are, anything else as JSON (`output_json`)."""
    if isinstance(output, str):
        message.text = wire_text(output, "the output")
    elif isinstance(output, bytes):
        message.binary = output
    else:
        message.json = output_json(output)


def run_state(cancelled: RunCancelled) -> agent_pb2.RunState:
    """What pydantic-ai kept of a cancelled or timed-out run, or an
    `unrepresentable` error when its messages have no JSON form."""
    messages = cancelled.all_messages()
    try:
        messages_json = cancelled.all_messages_json()
    except pydantic_core.PydanticSerializationError as exc:
        raise unrepresentable(f"the run's messages have no JSON form: {exc}") from exc
    state = agent_pb2.RunState(
        messages_json=messages_json,
        message_count=len(messages),
        new_message_index=len(messages) - len(cancelled.new_messages()),
        usage=usage(cancelled.usage, cancelled.new_messages()),
    )
    if cancelled.run_id is not None:
        state.run_id = cancelled.run_id
    return state


def captured_state(
    captured: Sequence[ModelMessage], history: Sequence[ModelMessage] | None
) -> agent_pb2.RunState:
    """What a run that failed otherwise than by a cancel or a timeout had
    done: the messages pydantic-ai's `capture_run_messages()` recorded of it
    (`captured`), written as pydantic-ai writes any list of messages; or an
    `unrepresentable` error when they have no JSON form.

    pydantic-ai puts no usage and no run id on these failures, so the state
    has none. Where the run's own messages begin is where pydantic-ai starts
    them: after the `history` the run was given, as the run repaired it
    before adding to it (`repair_messages` without touching the last
    response, which is what the run does first).
    """
    messages = list(captured)
    try:
        messages_json = ModelMessagesTypeAdapter.dump_json(messages)
    except pydantic_core.PydanticSerializationError as exc:
        raise unrepresentable(f"the run's messages have no JSON form: {exc}") from exc
    start = len(repair_messages(history, repair_last_response=False)) if history else 0
    return agent_pb2.RunState(
        messages_json=messages_json,
        message_count=len(messages),
        new_message_index=min(start, len(messages)),
    )


def output_json(output: object) -> bytes:
    """Structured output as JSON, exactly, or an `unrepresentable` error naming the value.

    Pydantic writes NaN and infinities as `null` in models (and as bare `NaN`
    elsewhere, which is not JSON): neither reaches Elixir as what Python
    had, and Elixir floats have no such values, so they are refused here.
    Integers of any size are exact (the client makes them bignums). Bytes
    within it are text, as Pydantic writes them by default, and refused when
    they are not UTF-8 (an output of bytes itself is carried as it is: see
    `put_output`).
    """
    try:
        data = pydantic_core.to_jsonable_python(output)
    except UnicodeDecodeError as exc:
        raise unrepresentable(
            f"the output holds bytes that are not UTF-8 ({exc.reason} at byte {exc.start}), "
            "which JSON cannot carry: a Pydantic model can write them as base64 "
            "(`ser_json_bytes='base64'` in its config)"
        ) from exc
    if (found := non_finite(data, "the output")) is not None:
        path, value = found
        raise unrepresentable(
            f"{path} is {value!r}, which neither JSON nor an Elixir float can hold"
        )
    return pydantic_core.to_json(data)


def wire_text(text: str, what: str) -> str:
    """`text`, or an `unrepresentable` error if UTF-8 cannot carry it as it is."""
    # ASCII is always UTF-8: most text is checked without encoding it.
    if not text.isascii() and (found := unencodable(text)) is not None:
        raise unrepresentable(
            f"{what} holds {found}, a lone surrogate, which UTF-8 (and so Elixir) cannot hold"
        )
    return text


def non_finite(data: object, path: str) -> tuple[str, float] | None:
    """The path and value of the first NaN or infinite float in `data`, or None."""
    match data:
        case float() if not math.isfinite(data):
            return path, data
        case dict():
            for key, value in data.items():
                if (found := non_finite(value, f"{path}.{key}")) is not None:
                    return found
        case list() | tuple():
            for index, value in enumerate(data):
                if (found := non_finite(value, f"{path}[{index}]")) is not None:
                    return found
    return None


def usage(run_usage: RunUsage, new_messages: Sequence[ModelMessage] = ()) -> agent_pb2.Usage:
    """A run's usage, with the usage of each of its model responses (`new_messages`')."""
    message = _usage_counts(run_usage)
    message.requests = run_usage.requests
    message.tool_calls = run_usage.tool_calls
    message.by_request.extend(
        agent_pb2.RequestUsage(
            usage=_usage_counts(response.usage),
            model_name=response.model_name or "",
            provider_name=response.provider_name or "",
        )
        for response in new_messages
        if isinstance(response, ModelResponse)
    )
    return message


def _usage_counts(counted: UsageBase) -> agent_pb2.Usage:
    """Every count pydantic-ai's `UsageBase` has, and its cost (exact, as a decimal string)."""
    message = agent_pb2.Usage(
        input_tokens=counted.input_tokens,
        output_tokens=counted.output_tokens,
        cache_read_tokens=counted.cache_read_tokens,
        cache_write_tokens=counted.cache_write_tokens,
        cache_write_1h_tokens=counted.cache_write_1h_tokens,
        # Provider data may hold a None despite the annotation: it is no count.
        details={key: value for key, value in counted.details.items() if isinstance(value, int)},
        input_audio_tokens=counted.input_audio_tokens,
        cache_audio_read_tokens=counted.cache_audio_read_tokens,
        output_audio_tokens=counted.output_audio_tokens,
        output_reasoning_tokens=counted.output_reasoning_tokens,
        audio_seconds=counted.audio_seconds,
        unmeasured_requests=counted.unmeasured_requests,
    )
    if counted.cost is not None:
        message.cost = str(counted.cost)
    return message
