"""An agent whose runs fail after they began, each in a way pydantic-ai has,
for the tests of what a failed run keeps (`failure_messages_test.exs`).

`failing_agent`'s model (streamed or not) does what the prompt says:

* "lookup": calls the Python tool `lookup`, then answers "done" (with
  `usage_limits: request_limit: 1`, pydantic-ai's `UsageLimitExceeded`
  before the second request);
* "explode": calls the Python tool `explode`, which raises RuntimeError;
* "bad output": answers "bad output" every time, which its output validator
  refuses with `ModelRetry` until the output retries are used up;
* "http error": the model raises pydantic-ai's `ModelHTTPError` (429);
* "unkept": calls `listing`, whose return UTF-8 cannot carry, then
  `explode`;
* "nap": calls `nap`, which sleeps for a minute (for a timeout);
* anything else: answers "done".

A run with no new prompt (resuming a failed run's messages) answers "done"
once the last request holds a tool's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic_ai import Agent, ModelRetry
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from synapse_fixtures.agents import streamed
from synapse_fixtures.examples import _script

# The tool each prompt calls first, and the one it calls after that tool's return.
_FIRST = {"lookup": "lookup", "explode": "explode", "unkept": "listing", "nap": "nap"}
_THEN = {"unkept": "explode"}


def _respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _script.prompt(messages)
    if prompt == "http error":
        raise ModelHTTPError(429, "failing-model", {"error": "slow down"})
    # (A retry's feedback reaches a FunctionModel as the latest prompt.)
    if prompt == "bad output" or any(
        isinstance(message, ModelResponse) and message.text == "bad output" for message in messages
    ):
        return _script.text("bad output")
    last = messages[-1]
    answered = (
        [part.tool_name for part in last.parts if isinstance(part, ToolReturnPart)]
        if isinstance(last, ModelRequest)
        else []
    )
    if not answered and prompt in _FIRST:
        return _script.calls(_script.call(_FIRST[prompt], {}, f"{prompt}_0"))
    if answered and prompt in _THEN and _THEN[prompt] not in answered:
        return _script.calls(_script.call(_THEN[prompt], {}, f"{prompt}_1"))
    return _script.text("done")


async def _stream(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    async for delta in streamed(_respond(messages, info)):
        yield delta


failing_agent = Agent(FunctionModel(_respond, stream_function=_stream))


@failing_agent.tool_plain
def lookup() -> str:
    return json.dumps({"found": True})


@failing_agent.tool_plain
def explode() -> str:
    raise RuntimeError("the tool exploded")


@failing_agent.tool_plain
def listing() -> str:
    return "report-\udce9.txt"


@failing_agent.tool_plain
async def nap() -> str:
    await asyncio.sleep(60)
    return "rested"


@failing_agent.output_validator
def _good_output(output: Any) -> Any:
    if output == "bad output":
        raise ModelRetry("the output is bad")
    return output


@contextlib.asynccontextmanager
async def closing_fails() -> AsyncIterator[None]:
    """A deps factory whose deps cannot be closed: the run's end fails."""
    yield None
    raise RuntimeError("closing the deps failed")
