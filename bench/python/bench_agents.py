"""The agents every contender of the path benchmarks runs (`bench/paths.exs`).

All answer with pydantic-ai's `TestModel`, offline: what is measured is the cost of
carrying a run, with pydantic-ai's own cost in every contender alike.

* `minimal_agent`: no tools; one model request.
* `python_tool_agent`: one Python tool, `order_status`; the model calls it, then answers.
* `callback_agent(call)`: the same agent whose tool asks the caller (an Erlang Port's
  BEAM side) for the result, as ErlPort's Erlang callbacks do.
* `stream_agent`: no tools; one model response of `STREAM_WORDS` words, which
  `TestModel` streams a word at a time (`bench/stream.exs`: a streamed run, one text
  delta per word).

Synapse's "Elixir tool" case is `minimal_agent` given an Elixir tool of the same name,
parameters and work (`bench/support/paths_support.ex`); its in-process stand-in is
`python_tool_agent`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_ai import (
    Agent,
    AgentRunResult,
    AgentRunResultEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models.test import TestModel

PROMPT = "Where is my order?"

TOOL_DESCRIPTION = "The shipping status of an order."

# JSON Schema of the tool's arguments, as a client-side tool declares it on the wire.
TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"order_id": {"type": "integer"}},
    "required": ["order_id"],
}


def order_status_text(order_id: int) -> str:
    """The tool's work, the same in every contender (the Elixir tool's too)."""
    return f"order {order_id}: shipped"


minimal_agent: Agent[None, str] = Agent(TestModel(), name="bench_minimal")

STREAM_WORDS = 50

# A short answer as a chat model streams it: TestModel streams its text a word at a time.
STREAM_TEXT = " ".join(f"word{index}" for index in range(STREAM_WORDS))

stream_agent: Agent[None, str] = Agent(
    TestModel(custom_output_text=STREAM_TEXT), name="bench_stream"
)

python_tool_agent: Agent[None, str] = Agent(TestModel(), name="bench_python_tool")


@python_tool_agent.tool_plain
async def order_status(order_id: int) -> str:
    """The shipping status of an order."""
    return order_status_text(order_id)


def callback_agent(call: Callable[[str, dict[str, Any]], Any]) -> Agent[None, str]:
    """An agent whose `order_status` tool is answered by `call(name, arguments)`."""
    agent: Agent[None, str] = Agent(TestModel(), name="bench_callback_tool")

    @agent.tool_plain(name="order_status", description=TOOL_DESCRIPTION)
    async def _order_status(order_id: int) -> str:
        return call("order_status", {"order_id": order_id})

    return agent


async def stream_text_deltas(
    agent: Agent[None, str], prompt: str, on_delta: Callable[[str], None]
) -> AgentRunResult[str]:
    """Streams a run's events as a Python caller does (`run_stream_events`), handing each
    text delta to `on_delta`; the run's result."""
    async with agent.run_stream_events(prompt) as events:
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                if event.part.content:
                    on_delta(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                on_delta(event.delta.content_delta)
            elif isinstance(event, AgentRunResultEvent):
                return event.result
    raise RuntimeError("the run's events ended without its result")


def summary(result: AgentRunResult[str]) -> dict[str, Any]:
    """What the baselines hand back per run: the output and the usage."""
    usage = result.usage
    return {
        "output": result.output,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "requests": usage.requests,
            "tool_calls": usage.tool_calls,
        },
    }
