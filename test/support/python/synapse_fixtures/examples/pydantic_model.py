"""pydantic_model: a Pydantic model built from a text input (structured output).

Turn 1 "The windy city in the US of A." gives Chicago; a later turn asking for
"the capital" gives the capital of the country the previous answer named.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model

_CAPITALS = {"United States": "Washington, D.C.", "France": "Paris"}


class MyModel(BaseModel):
    city: str
    country: str


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    output_tool = info.output_tools[0].name
    question = _script.prompt(messages)
    if "capital" in question:
        country = "France" if "France" in question else "United States"
        answer = {"city": _CAPITALS[country], "country": country}
    else:
        answer = {"city": "Chicago", "country": "United States"}
    return _script.calls(_script.call(output_tool, answer, f"call_{_script.turns(messages)}"))


agent = Agent(recorded_model(_model, name="pydantic_model"), output_type=MyModel)
