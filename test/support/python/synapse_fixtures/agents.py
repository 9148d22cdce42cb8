"""Small agents on pydantic-ai's offline models, one per behaviour under test."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import BaseModel
from pydantic_ai import Agent, ToolFailed
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel

TextFunction = Callable[[list[ModelMessage], AgentInfo], ModelResponse | Awaitable[ModelResponse]]


def _prompt(messages: list[ModelMessage]) -> str:
    """The text of the latest user prompt."""
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


def _text(text: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)])


def _text_model(function: TextFunction) -> FunctionModel:
    """A FunctionModel answering with `function`'s text, streamed (`Run`) or not (`RunSync`).

    A FunctionModel without a stream function cannot serve streamed requests,
    which `Run` makes (the run fails with an AssertionError): this one streams
    the same text as one chunk.
    """

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        response = function(messages, info)
        if inspect.isawaitable(response):
            response = await response
        for part in response.parts:
            if isinstance(part, TextPart):
                yield part.content

    # The name RunSync's messages have always carried, as if there were no stream function.
    return FunctionModel(
        function, stream_function=stream, model_name=f"function:{function.__name__}:"
    )


# Plain text answers, from pydantic-ai's TestModel.
echo_agent = Agent("test")


def make_echo_agent() -> Agent:
    """A zero-argument factory, to load by reference."""
    return Agent("test")


# Answers with the number of messages the model received, the new request included.
def _count_messages(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(f"messages={len(messages)}")


history_agent = Agent(_text_model(_count_messages))


# Answers with the model settings it received, as JSON with sorted keys.
def _echo_settings(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(json.dumps(info.model_settings or {}, sort_keys=True))


settings_agent = Agent(_text_model(_echo_settings))


class City(BaseModel):
    name: str
    population: int


# Structured output.
city_agent = Agent(
    TestModel(custom_output_args={"name": "Paris", "population": 2_100_000}), output_type=City
)


# "Are N runs really in flight at once?" The prompt is the target N. Each run
# counts itself in, then waits (at most 10 s) until N runs have been in flight
# together, and answers the peak it saw. Counting restarts with each wave of
# runs (when a run starts while none is active). N concurrent runs answer
# "peak=N"; serialized runs would answer "peak=1", after 10 s each.
CONCURRENCY_TIMEOUT = 10.0
_active = 0
_peak = 0
_all_in = asyncio.Event()


async def _wait_for_peers(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    global _active, _peak, _all_in
    target = int(_prompt(messages))
    if _active == 0:
        _peak, _all_in = 0, asyncio.Event()
    all_in = _all_in
    _active += 1
    _peak = max(_peak, _active)
    if _peak >= target:
        all_in.set()
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONCURRENCY_TIMEOUT):
                await all_in.wait()
        return _text(f"peak={_peak}")
    finally:
        _active -= 1


concurrency_agent = Agent(_text_model(_wait_for_peers))


# Sleeps float(prompt) seconds, then answers "done". The prompts of runs that
# were cancelled while sleeping are recorded in `cancelled`, which
# `cancelled_agent` answers as a JSON list (for tests outside this process), as
# do `slow_agent` and `slow_stream_agent` for the prompt CANCELLED_QUESTION.
CANCELLED_QUESTION = "cancelled?"
cancelled: list[str] = []


async def _sleep(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _prompt(messages)
    if prompt == CANCELLED_QUESTION:
        return _text(json.dumps(cancelled))
    try:
        await asyncio.sleep(float(prompt))
    except asyncio.CancelledError:
        cancelled.append(prompt)
        raise
    return _text("done")


slow_agent = Agent(_text_model(_sleep))


# Blocks the worker's event loop for the prompt's number of seconds, then
# answers "done": a worker that cannot answer a cancel in time (the client
# gives up on the run after a grace).
async def _block(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    time.sleep(float(_prompt(messages)))  # noqa: ASYNC251 (blocking is the point)
    return _text("done")


blocking_agent = Agent(_text_model(_block))


# Holds the worker's event loop, as blocking code in an async function does,
# until the test says: the prompt "hold PATH" creates PATH.held once the loop
# is held, and lets go of it (answering "released") once PATH exists. Any
# other prompt answers its length: requests of any size, answered once the
# worker reads them.
HOLD = "hold "


async def _hold(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _prompt(messages)
    if not prompt.startswith(HOLD):
        return _text(str(len(prompt)))
    release = Path(prompt.removeprefix(HOLD))
    release.with_name(release.name + ".held").touch()
    while not release.exists():
        time.sleep(0.01)  # noqa: ASYNC251 (holding the loop is the point)
    return _text("released")


loop_holding_agent = Agent(_text_model(_hold))


# The prompt is "N DELAY" (e.g. "5 0.2"): streams N chunks "chunk1 ", "chunk2 ",
# ... sleeping DELAY seconds before each (RunSync: the same text at the end).
# A run that does not finish (cancelled, or its stream closed) records its prompt
# in `cancelled`.
def _chunk_plan(prompt: str) -> tuple[int, float]:
    count, delay = prompt.split()
    return int(count), float(delay)


async def _slow_chunks(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    prompt = _prompt(messages)
    if prompt == CANCELLED_QUESTION:
        yield json.dumps(cancelled)
        return
    count, delay = _chunk_plan(prompt)
    finished = False
    try:
        for number in range(1, count + 1):
            await asyncio.sleep(delay)
            yield f"chunk{number} "
        finished = True
    finally:
        if not finished:
            cancelled.append(prompt)


async def _slow_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text("".join([chunk async for chunk in _slow_chunks(messages, info)]))


slow_stream_agent = Agent(FunctionModel(_slow_text, stream_function=_slow_chunks))


# Streams its prompt back a word at a time (spaces kept), yielding to the
# event loop between words so that many concurrent streams interleave in the
# worker: each stream's deltas must still be its own prompt.
async def _echo_words(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for word in re.findall(r"\S+\s*|\s+", _prompt(messages)):
        await asyncio.sleep(0)
        yield word


async def _echo_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(_prompt(messages))


echo_stream_agent = Agent(FunctionModel(_echo_text, stream_function=_echo_words))


def _report_cancelled(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(json.dumps(cancelled))


cancelled_agent = Agent(_text_model(_report_cancelled))


# The model raises.
def _explode(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    raise ValueError("the model exploded")


failing_agent = Agent(_text_model(_explode))


# One Python tool. With TestModel a run makes 2 model requests: one calling the
# tool, one answering, so `{"request_limit": 1}` stops it.
tool_agent = Agent("test")


@tool_agent.tool_plain
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    return a + b


# Structured output the model never gets right: it always calls the output tool
# with a population that is not an integer, until the output retries run out.
_INVALID_CITY_ARGS = {"name": "Paris", "population": "lots"}


def _invalid_city(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    tool = info.output_tools[0]
    return ModelResponse(parts=[ToolCallPart(tool.name, _INVALID_CITY_ARGS)])


async def _invalid_city_stream(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[DeltaToolCalls]:
    tool = info.output_tools[0]
    yield {0: DeltaToolCall(name=tool.name, json_args=json.dumps(_INVALID_CITY_ARGS))}


invalid_city_agent = Agent(
    FunctionModel(_invalid_city, stream_function=_invalid_city_stream), output_type=City
)


def make_broken_agent() -> Agent:
    """A factory that fails."""
    raise LookupError("no agent today")


# Tools given by the client (Elixir) per run, with nothing of its own. TestModel
# calls every tool once, all in one response, with arguments generated from each
# tool's JSON schema (0 for integers, "a" for strings, ...), calls again the
# ones answered with a retry, and then answers the JSON object of each tool's
# last return value by tool name, compact, e.g. '{"lookup":{"id":42},"now":"noon"}'.
tools_agent = Agent("test")


# A model the prompt scripts, for tests of client tools. The prompt is a JSON object
#
#     {"calls": [{"name": "add", "args": {"a": 1, "b": 2}}, ...], "retry_calls": false}
#
# - The first response makes all the `calls` at once (parallel calls), the i-th
#   (from 0) with the tool call id "call-<i>". "args" (default {}) is any JSON
#   value passed as the call's arguments; a string is passed as the raw
#   arguments text (so "[1" is malformed JSON). A name that is no tool gets
#   pydantic-ai's own retry prompt ("Unknown tool name: ...").
# - When the returns come back: with "retry_calls": true (default false) every
#   call answered with a retry prompt is made again, same name and arguments,
#   with the id "call-<i>-<n>" for its n-th retry (n from 1), until it stops
#   asking for retries (or pydantic-ai ends the run: `tool_failed`).
# - Otherwise the answer is the text of a JSON list (Python's `json.dumps`:
#   ", " and ": " separators, non-ASCII as is) of every tool return of the run,
#   in order (by model request, then in call order), one object each:
#   {"name": <tool>, "content": <return value>} or, for a retry prompt,
#   {"name": <tool>, "retry": <its text>}; e.g.
#   '[{"name": "add", "content": 3}, {"name": "lookup", "retry": "no order 42"}]'.
#   No calls: "[]".
_RERUN_ID = re.compile(r"call-(\d+)(?:-\d+)?")


def _calls_to_make(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    try:
        script = json.loads(_prompt(messages))
        calls: list[dict[str, Any]] = script.get("calls", [])
        retry_calls = bool(script.get("retry_calls", False))
    except (ValueError, AttributeError) as exc:
        raise ValueError(
            'calling_agent\'s prompt must be a JSON object {"calls": [...], "retry_calls": ...}'
        ) from exc
    this_run = _since_prompt(messages)
    if not any(isinstance(message, ModelResponse) for message in this_run):
        if calls:
            return ModelResponse(
                parts=[_tool_call(call, f"call-{index}") for index, call in enumerate(calls)]
            )
    returns = [
        part
        for message in this_run
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    if retry_calls and this_run and isinstance(this_run[-1], ModelRequest):
        again = []
        for part in this_run[-1].parts:
            if isinstance(part, ToolReturnPart) and part.outcome == "retried":
                if matched := _RERUN_ID.fullmatch(part.tool_call_id):
                    index = int(matched[1])
                    retries = sum(
                        1
                        for seen in returns
                        if seen.outcome == "retried"
                        and (seen_id := _RERUN_ID.fullmatch(seen.tool_call_id))
                        and int(seen_id[1]) == index
                    )
                    again.append(_tool_call(calls[index], f"call-{index}-{retries}"))
        if again:
            return ModelResponse(parts=again)
    return _text(json.dumps([_tool_outcome(part) for part in returns], ensure_ascii=False))


def _since_prompt(messages: list[ModelMessage]) -> list[ModelMessage]:
    """The messages after the request that holds the latest user prompt (this run's)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, ModelRequest) and any(
            isinstance(part, UserPromptPart) for part in message.parts
        ):
            return messages[index + 1 :]
    return messages


def _tool_call(call: dict[str, Any], tool_call_id: str) -> ToolCallPart:
    return ToolCallPart(call["name"], call.get("args", {}), tool_call_id=tool_call_id)


def _tool_outcome(part: ToolReturnPart) -> dict[str, Any]:
    if part.outcome == "success":
        return {"name": part.tool_name, "content": pydantic_core.to_jsonable_python(part.content)}
    key = "retry" if part.outcome == "retried" else part.outcome
    return {"name": part.tool_name, key: part.model_response_str(wrap_if_error=False)}


async def _stream_calls_to_make(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    async for delta in streamed(_calls_to_make(messages, info)):
        yield delta


async def streamed(response: ModelResponse) -> AsyncIterator[str | DeltaToolCalls]:
    """`response` as a stream function yields it: its tool calls at once, then its text."""
    calls = {
        index: DeltaToolCall(
            name=part.tool_name,
            json_args=part.args if isinstance(part.args, str) else json.dumps(part.args),
            tool_call_id=part.tool_call_id,
        )
        for index, part in enumerate(response.parts)
        if isinstance(part, ToolCallPart)
    }
    if calls:
        yield calls
    for part in response.parts:
        if isinstance(part, TextPart):
            yield part.content


calling_agent = Agent(FunctionModel(_calls_to_make, stream_function=_stream_calls_to_make))

# The same script, with a Python tool that fails for good: what an Elixir
# tool answering {:failed, reason} must look like to the model.
failing_lookup_agent = Agent(FunctionModel(_calls_to_make), retries=0)


@failing_lookup_agent.tool_plain
def find_order(id: int) -> str:
    """Looks an order up."""
    raise ToolFailed(f"no order {id}")
