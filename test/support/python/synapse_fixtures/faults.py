"""Agents that misbehave on purpose, for the fault-injection suite."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator

from pydantic_ai import Agent, TextOutput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from synapse_fixtures.agents import _prompt


def _model(answer: object) -> FunctionModel:
    """A FunctionModel answering `answer(prompt)` as text, streamed in one chunk."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(answer(_prompt(messages)))])  # type: ignore[operator]

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield answer(_prompt(messages))  # type: ignore[operator]

    return FunctionModel(respond, stream_function=stream)


def _exit(prompt: str) -> str:
    # The worker process exits in the middle of the run, with this status.
    os._exit(int(prompt))


exit_agent = Agent(_model(_exit))


def _block(prompt: str) -> str:
    # Blocks the event loop itself: the worker is alive but answers nothing,
    # health checks included.
    time.sleep(float(prompt))
    return "woke up"


hang_agent = Agent(_model(_block))


def _environment(prompt: str) -> str:
    return json.dumps(sorted(os.environ))


env_agent = Agent(_model(_environment))


def _nested(prompt: str) -> str:
    depth = int(prompt)
    return "[" * depth + "]" * depth


def _deep_output(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    from pydantic_ai.messages import ToolCallPart

    depth = int(_prompt(messages))
    value: object = "bottom"
    for _ in range(depth):
        value = {"next": value}
    tool = info.output_tools[0].name
    return ModelResponse(parts=[ToolCallPart(tool, {"response": value})])


# Structured output nested `prompt` levels deep.
deep_agent = Agent(FunctionModel(_deep_output), output_type=dict)


def _big(prompt: str) -> str:
    return "x" * int(prompt)


# Answers a text of `prompt` bytes.
big_agent = Agent(_model(_big))


def _random_keys(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    from pydantic_ai.messages import ToolCallPart

    keys = {f"key_{os.urandom(8).hex()}": index for index in range(20)}
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"response": keys})])


# Structured output whose keys were never seen before.
random_keys_agent = Agent(FunctionModel(_random_keys), output_type=dict)


async def _pid_after(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    import asyncio

    await asyncio.sleep(float(_prompt(messages)))
    return ModelResponse(parts=[TextPart(str(os.getpid()))])


# Sleeps `prompt` seconds, then answers the worker's OS pid: which worker served.
pid_agent = Agent(FunctionModel(_pid_after))


def _call_stuck_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    from pydantic_ai.messages import ToolCallPart, ToolReturnPart

    if any(isinstance(part, ToolReturnPart) for message in messages for part in message.parts):
        return ModelResponse(parts=[TextPart("unstuck")])
    return ModelResponse(parts=[ToolCallPart("stuck", {"seconds": float(_prompt(messages))})])


# Calls a sync tool that sleeps `prompt` seconds and cannot be cancelled:
# a run that times out meanwhile leaves its thread stuck until it returns.
stuck_tool_agent = Agent(FunctionModel(_call_stuck_tool))


@stuck_tool_agent.tool_plain
def stuck(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _flood(prompt: str) -> str:
    # `prompt` MiB on stdout, in lines of 1 KiB: print() as a user's code would.
    line = "x" * 1023
    for _ in range(int(prompt) * 1024):
        print(line)
    return "flooded"


flood_agent = Agent(_model(_flood))

_chatty_log = logging.getLogger("synapse_fixtures.chatty")


def _chatty(prompt: str) -> str:
    print("a line of print() output")
    _chatty_log.warning("a warning record")
    try:
        raise ValueError("the inner problem")
    except ValueError:
        _chatty_log.exception("a failure, with its traceback")
    return "logged"


# Prints a line and logs a warning and an error with a traceback, then answers.
chatty_agent = Agent(_model(_chatty))


def _surrogate(prompt: str) -> str:
    # A str Python holds but UTF-8 cannot: a lone surrogate, as
    # os.fsdecode gives for a file name that is not UTF-8.
    name = os.fsdecode(b"caf\xe9")
    if prompt == "raise":
        raise ValueError(f"no such file: {name}")
    if prompt == "log":
        logging.getLogger("synapse_fixtures.surrogate").warning("no such file: %s", name)
        return "logged"
    return f"name: {name}"


# Answers text holding a lone surrogate ("raise": raises an error whose
# message holds one; "log": logs a warning that holds one).
surrogate_agent = Agent(_model(_surrogate))


def _file_name(text: str) -> str:
    """The model's clean text, turned by the output function into a name UTF-8 cannot hold."""
    name = os.fsdecode(b"caf\xe9")
    return f"{text}: {name}"


# The model's text is UTF-8; only the output holds a lone surrogate.
surrogate_output_agent = Agent(_model(lambda prompt: prompt), output_type=TextOutput(_file_name))


def _called_tool(messages: list[ModelMessage]) -> bool:
    return any(isinstance(part, ToolReturnPart) for m in messages for part in m.parts)


async def _call_then_done(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if _called_tool(messages):
        return ModelResponse(parts=[TextPart("done")])
    return ModelResponse(parts=[ToolCallPart("file_name", {}, tool_call_id="call-1")])


async def _stream_call_then_done(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    if _called_tool(messages):
        yield "done"
    else:
        yield {0: DeltaToolCall(name="file_name", json_args="{}", tool_call_id="call-1")}


# Calls its tool, whose result (a file name that is not UTF-8, as os.fsdecode
# gives it) holds a lone surrogate, then answers "done".
surrogate_tool_agent = Agent(FunctionModel(_call_then_done, stream_function=_stream_call_then_done))


@surrogate_tool_agent.tool_plain
def file_name() -> str:
    return os.fsdecode(b"caf\xe9")


async def stuck_executor_agent() -> Agent[None, str]:
    """An agent whose factory leaves a call that never returns in the loop's default
    executor, as a hung `asyncio.to_thread` in a user's async tool does."""
    asyncio.get_running_loop().run_in_executor(None, threading.Event().wait)
    return Agent(_model(lambda prompt: prompt))
