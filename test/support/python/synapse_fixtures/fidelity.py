"""Agents for the fidelity tests: non-streamed runs, deps, histories, errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from synapse_fixtures.examples import _script

# -- Non-streamed runs -------------------------------------------------------


def _double_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the client's `double` tool with 21, then answers what it returned."""
    doubled = _script.returns(messages, "double")
    if not doubled:
        return _script.calls(_script.call("double", {"n": 21}, "double_0"))
    return _script.text(f"doubled: {doubled[-1]}")


# pydantic-ai's own test double with no stream function: it cannot serve a
# streamed request, so a run that streams fails.
nonstream_agent = Agent(FunctionModel(_double_then_answer))


def _from_function(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _script.text("from the function")


async def _from_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    yield "from the "
    yield "stream function"


# Says which of its two functions served the request.
two_function_agent = Agent(FunctionModel(_from_function, stream_function=_from_stream))


# -- Deps --------------------------------------------------------------------


@dataclasses.dataclass
class Customer:
    name: str
    since: datetime.date
    tier: int = 1


def _answer_with_deps(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the Python tool `tier` (and the client's `whoami`, if given), then reports."""
    tools = {tool.name for tool in info.function_tools}
    tiers = _script.returns(messages, "tier")
    whoami = _script.returns(messages, "whoami")
    if not tiers:
        calls = [_script.call("tier", {}, "tier_0")]
        if "whoami" in tools:
            calls.append(_script.call("whoami", {}, "whoami_0"))
        return _script.calls(*calls)
    return _script.text(
        json.dumps({"instructions": info.instructions, "tier": tiers[-1], "whoami": whoami})
    )


deps_agent = Agent(FunctionModel(_answer_with_deps), deps_type=Customer)


@deps_agent.instructions
def _about(ctx: RunContext[Customer]) -> str:
    deps = ctx.deps
    return f"{type(deps).__name__} {deps.name}, tier {deps.tier}, since {deps.since.isoformat()}"


@deps_agent.tool
def tier(ctx: RunContext[Customer]) -> int:
    """The customer's tier."""
    return ctx.deps.tier


def _report_deps(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _script.text(info.instructions or "")


# No deps_type: the deps are the caller's data as plain JSON values.
plain_deps_agent = Agent(FunctionModel(_report_deps))


@plain_deps_agent.instructions
def _plain(ctx: RunContext[Any]) -> str:
    return json.dumps({"type": type(ctx.deps).__name__, "deps": ctx.deps})


# Integers beyond 64 bits both ways: the deps in, the output out.
def _plus_one(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    tool = info.output_tools[0].name
    return _script.calls(
        _script.call(tool, {"response": int(info.instructions or "0") + 1}, "big_0")
    )


big_agent = Agent(FunctionModel(_plus_one), deps_type=int, output_type=int)


@big_agent.instructions
def _the_number(ctx: RunContext[int]) -> str:
    return str(ctx.deps)


# -- Deps factories ----------------------------------------------------------

# What the factories did, per user, for the tests to read ("events?").
factory_events: list[str] = []


class Session:
    """Deps that cannot come from data."""

    def __init__(self, user: str, how: str) -> None:
        self.user = user
        self.how = how
        self.open = True


class SessionRequest(BaseModel):
    user: str


def make_session(request: SessionRequest) -> Session:
    return Session(request.user, "sync")


async def make_session_async(data: dict[str, Any]) -> Session:
    await asyncio.sleep(0)
    return Session(str(data["user"]), "async")


def make_session_plain() -> Session:
    return Session("nobody", "no data")


@contextlib.asynccontextmanager
async def session_scope(request: SessionRequest) -> AsyncIterator[Session]:
    session = Session(request.user, "async context manager")
    factory_events.append(f"enter {request.user}")
    try:
        yield session
    except BaseException as exc:
        factory_events.append(f"exit {request.user} {type(exc).__name__}")
        raise
    else:
        factory_events.append(f"exit {request.user}")
    finally:
        session.open = False


@contextlib.contextmanager
def session_scope_sync(request: SessionRequest) -> Iterator[Session]:
    session = Session(request.user, "context manager")
    factory_events.append(f"enter {request.user}")
    try:
        yield session
    finally:
        session.open = False
        factory_events.append(f"exit {request.user}")


async def _session_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers: the factories' events ("events?"), a failure ("fail"), a sleep ("sleep N").

    Otherwise, the instructions.
    """
    question = _script.prompt(messages)
    if question == "events?":
        return _script.text(json.dumps(factory_events))
    if question == "fail":
        raise RuntimeError("the model failed on purpose")
    if question.startswith("sleep "):
        await asyncio.sleep(float(question.split()[1]))
    return _script.text(info.instructions or "")


session_agent = Agent(FunctionModel(_session_model), deps_type=Session)


@session_agent.instructions
def _session(ctx: RunContext[Session]) -> str:
    return f"{ctx.deps.user} via {ctx.deps.how}, open={ctx.deps.open}"


# -- Histories ---------------------------------------------------------------


def _weather_once(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls `reading` once per turn, then answers with the number of messages it got."""
    if not _script.returns(messages, "reading"):
        return _script.calls(_script.call("reading", {}, f"reading_{_script.turns(messages)}"))
    return _script.text(f"{len(messages)} messages")


history_tool_agent = Agent(FunctionModel(_weather_once))


@history_tool_agent.tool_plain
def reading() -> dict[str, Any]:
    """The current reading, keys deliberately not in sorted order."""
    return {"temperature": 21, "city": "Paris", "huge": 2**80}


# -- Completed runs are completed --------------------------------------------

# How the deps scope of each run ended, for the "no cancellation reaches a run
# that answered" test.
scope_exits: list[str] = []


@contextlib.asynccontextmanager
async def watched_scope(request: SessionRequest) -> AsyncIterator[Session]:
    try:
        yield Session(request.user, "watched")
    except BaseException as exc:
        scope_exits.append(f"{request.user}: {type(exc).__name__}")
        raise
    else:
        scope_exits.append(f"{request.user}: ok")


def _double_or_report(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if _script.prompt(messages) == "exits?":
        return _script.text(json.dumps(scope_exits))
    return _double_then_answer(messages, info)


watched_agent = Agent(FunctionModel(_double_or_report), deps_type=Session)


def _local_and_client(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if isinstance(messages[-1], ModelRequest) and any(
        isinstance(part, ToolReturnPart) for part in messages[-1].parts
    ):
        return _script.text("done")
    return ModelResponse(
        parts=[
            ToolCallPart("listing", {}, tool_call_id="local"),
            ToolCallPart("double", {"n": 21}, tool_call_id="client"),
        ]
    )


# Calls its own tool, whose return UTF-8 cannot carry (a file name read with
# surrogateescape), and a client tool `double`, together.
unkept_agent = Agent(FunctionModel(_local_and_client))


@unkept_agent.tool_plain
def listing() -> str:
    return "report-\udce9.txt"


# -- Cost and limits ---------------------------------------------------------

# No model of its own: given one (`model:`), e.g. an OpenAI model on the fake
# server, that genai-prices can price.
plain_agent = Agent()
