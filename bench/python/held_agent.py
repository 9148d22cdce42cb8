"""The agent of `bench/in_flight_memory.exs`: runs that stay in flight.

`agent` waits the number of seconds its prompt gives (its model sleeps), then
answers "done", so that many runs can be started and held while the memory
they hold is counted. Its model streams too (`FunctionModel` needs a stream
function to serve the requests of a streamed run, which `Agent.run/3` makes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

ANSWER = "done"


def _seconds(messages: list[ModelMessage]) -> float:
    """The seconds the run's prompt asks it to wait."""
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return float(part.content)
    raise ValueError("the prompt must be a number of seconds")


async def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await asyncio.sleep(_seconds(messages))
    return ModelResponse(parts=[TextPart(ANSWER)])


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    await asyncio.sleep(_seconds(messages))
    yield ANSWER


agent = Agent(FunctionModel(_answer, stream_function=_stream), name="bench_held")
