"""Small agents on pydantic-ai's offline models, one per behaviour under test."""

from __future__ import annotations

import asyncio
import contextlib
import json

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel


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


# Plain text answers, from pydantic-ai's TestModel.
echo_agent = Agent("test")


def make_echo_agent() -> Agent:
    """A zero-argument factory, to load by reference."""
    return Agent("test")


# Answers with the number of messages the model received, the new request included.
def _count_messages(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(f"messages={len(messages)}")


history_agent = Agent(FunctionModel(_count_messages))


# Answers with the model settings it received, as JSON with sorted keys.
def _echo_settings(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(json.dumps(info.model_settings or {}, sort_keys=True))


settings_agent = Agent(FunctionModel(_echo_settings))


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


concurrency_agent = Agent(FunctionModel(_wait_for_peers))


# Sleeps float(prompt) seconds, then answers "done". The prompts of runs that
# were cancelled while sleeping are recorded in `cancelled`, which
# `cancelled_agent` answers as a JSON list (for tests outside this process).
cancelled: list[str] = []


async def _sleep(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _prompt(messages)
    try:
        await asyncio.sleep(float(prompt))
    except asyncio.CancelledError:
        cancelled.append(prompt)
        raise
    return _text("done")


slow_agent = Agent(FunctionModel(_sleep))


def _report_cancelled(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _text(json.dumps(cancelled))


cancelled_agent = Agent(FunctionModel(_report_cancelled))


# The model raises.
def _explode(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    raise ValueError("the model exploded")


failing_agent = Agent(FunctionModel(_explode))


def make_broken_agent() -> Agent:
    """A factory that fails."""
    raise LookupError("no agent today")
