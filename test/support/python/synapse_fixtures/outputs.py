"""One agent per way pydantic-ai has of producing an output, on recorded FunctionModels.

Each scripted model answers the way its output mode expects: a call of the
output tool (output types, output functions, `ToolOutput`), or text (JSON
for `NativeOutput` and `PromptedOutput`, anything for `TextOutput`).
"""

from __future__ import annotations

import json

from pydantic import BaseModel
from pydantic_ai import (
    Agent,
    ModelRetry,
    NativeOutput,
    PromptedOutput,
    RunContext,
    TextOutput,
    ToolOutput,
)
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model


class Pet(BaseModel):
    name: str
    species: str


class Unknown(BaseModel):
    """Nothing could be found."""


def _call_output(
    messages: list[ModelMessage], info: AgentInfo, args: dict[str, object]
) -> ModelResponse:
    tool = info.output_tools[0].name
    return _script.calls(_script.call(tool, args, f"out_{len(messages)}"))


# An output function: the model's arguments go through it.
def sum_numbers(numbers: list[int]) -> int:
    """Add up numbers."""
    return sum(numbers)


def _numbers(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _call_output(messages, info, {"numbers": [1, 2, 3, 2**70]})


function_output_agent = Agent(recorded_model(_numbers, name="numbers"), output_type=[sum_numbers])


def _pet_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _call_output(messages, info, {"name": "Rex", "species": "dog"})


tool_output_agent = Agent(
    recorded_model(_pet_tool, name="pet_tool"),
    output_type=ToolOutput(Pet, name="return_pet", description="The pet found."),
)


def _pet_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _script.text(json.dumps({"name": "Tom", "species": "cat"}))


native_output_agent = Agent(
    recorded_model(_pet_text, name="pet_native"), output_type=NativeOutput(Pet)
)
prompted_output_agent = Agent(
    recorded_model(_pet_text, name="pet_prompted"), output_type=PromptedOutput(Pet)
)


def shout(text: str) -> str:
    """The model's text, louder."""
    return text.upper() + "!"


def _words(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _script.text(f"hello {_script.prompt(messages)}")


text_output_agent = Agent(recorded_model(_words, name="words"), output_type=TextOutput(shout))


# An output validator that makes the model retry: names must be capitalised.
def _lowercase_first(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    name = "Rex" if _script.retries(messages) else "rex"
    return _call_output(messages, info, {"name": name, "species": "dog"})


validated_agent = Agent(recorded_model(_lowercase_first, name="validated"), output_type=Pet)


@validated_agent.output_validator
def capitalised(ctx: RunContext[None], output: Pet) -> Pet:
    if not output.name[:1].isupper():
        raise ModelRetry(f"The name {output.name!r} must start with a capital letter.")
    return output


# A union: which member the output is must survive the trip.
def _maybe_pet(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    tools = {tool.name: tool for tool in info.output_tools}
    if "pet" in _script.prompt(messages):
        name = next(name for name in tools if "Pet" in name)
        return _script.calls(_script.call(name, {"name": "Rex", "species": "dog"}, "union_0"))
    name = next(name for name in tools if "Unknown" in name)
    return _script.calls(_script.call(name, {}, "union_0"))


union_agent = Agent(
    recorded_model(_maybe_pet, name="union"),
    output_type=Pet | Unknown,  # type: ignore[arg-type]
)


# NaN and infinities: Python has them, JSON and Elixir floats do not.
def measure(text: str) -> float:
    """The model's text, as a number."""
    return float(text)


def _number_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _script.text(_script.prompt(messages))


float_agent = Agent(recorded_model(_number_text, name="floats"), output_type=TextOutput(measure))


# Bytes: an output of bytes itself (a rendered file) is carried as it is;
# within structured output they are text, which bytes not UTF-8 cannot be.
def render(text: str) -> bytes:
    """The model's text as a file: a PDF's header, which is not UTF-8, then the text."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + text.encode()


bytes_agent = Agent(recorded_model(_number_text, name="bytes"), output_type=TextOutput(render))


def attach(text: str) -> dict[str, bytes]:
    """The rendered file, in a map."""
    return {"file": render(text)}


nested_bytes_agent = Agent(
    recorded_model(_number_text, name="nested_bytes"), output_type=TextOutput(attach)
)
