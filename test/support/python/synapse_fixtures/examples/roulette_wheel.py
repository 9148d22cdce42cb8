"""roulette_wheel: deps are the winning number, a tool checks a bet, the output is a bool.

The model reads the number the customer bets on from the prompt (digits or
English words up to twenty), calls `roulette_wheel` with it, then answers
True when the tool said "winner".
"""

from __future__ import annotations

import re

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model

_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()


def _square(question: str) -> int:
    for word in re.findall(r"[a-z]+|\d+", question.lower()):
        if word.isdigit():
            return int(word)
        if word in _WORDS:
            return _WORDS.index(word)
    return 0


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _script.turns(messages)
    outcomes = _script.returns(messages, "roulette_wheel")
    if not outcomes:
        square = _square(_script.prompt(messages))
        return _script.calls(_script.call("roulette_wheel", {"square": square}, f"spin_{turn}"))
    output_tool = info.output_tools[0].name
    return _script.calls(
        _script.call(output_tool, {"response": outcomes[-1] == "winner"}, f"answer_{turn}")
    )


roulette_agent = Agent(
    recorded_model(_model, name="roulette_wheel"),
    deps_type=int,
    output_type=bool,
    system_prompt=(
        "Use the `roulette_wheel` function to see if the customer has won "
        "based on the number they provide."
    ),
)


@roulette_agent.tool
async def roulette_wheel(ctx: RunContext[int], square: int) -> str:
    """Check whether a square is a winner.

    Args:
        square: The number of the square the customer bets on.
    """
    return "winner" if square == ctx.deps else "loser"
