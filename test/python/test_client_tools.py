"""Tools the client executes: `RunRequest.tools`, `tool_request`/`tool_result`, tool events."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.toolsets.abstract import AGENT_TOOLSET_ID

from conftest import (
    AgentClient,
    RunFailed,
    Served,
    error_detail,
    kinds,
    read_all,
    retry,
    returns,
    split_events,
    tool_def,
)
from synapse_python import _client_tools, _json_schema
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

LOOKUP_PARAMETERS = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 0},
        "note": {"type": "string"},
        "express": {"type": "boolean"},
    },
    "required": ["order_id", "express"],
}


# pydantic's error for tool arguments that are not a JSON object, as the model gets it.
NOT_AN_OBJECT = {"type": "dict_type", "loc": [], "msg": "Input should be an object", "input": [1]}


def lookup(**options: Any) -> agent_pb2.ToolDef:
    return tool_def("lookup", LOOKUP_PARAMETERS, description="Find an order.", **options)


def calls(*calls: dict[str, Any], retry_calls: bool = False) -> str:
    """A prompt for `calling_agent` (see synapse_fixtures.agents)."""
    return json.dumps({"calls": list(calls), "retry_calls": retry_calls})


async def load(client: AgentClient, agent_id: str) -> None:
    await client.load_agent(agent_id, ref=f"synapse_fixtures.agents:{agent_id}_agent")


def run_tasks() -> list[asyncio.Task[object]]:
    """The worker's tasks of Run calls and of tool calls still alive (the worker runs here)."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("synapse-run") or task.get_name() == "lookup"
    ]


async def until_no_run_tasks() -> None:
    async with asyncio.timeout(5):
        while run_tasks():  # noqa: ASYNC110 (tasks, nothing to wait on)
            await asyncio.sleep(0.01)


async def read_until(call: grpc.aio.StreamStreamCall, kind: str) -> agent_pb2.RunEvent:
    async with asyncio.timeout(5):
        while (event := await call.read()) is not grpc.aio.EOF:
            if event.WhichOneof("event") == kind:
                return event
    raise AssertionError(f"the stream ended before a {kind}")


async def test_a_client_tool_gets_schema_valid_args_and_its_return_reaches_the_model(
    client: AgentClient,
) -> None:
    await load(client, "tools")
    requests: list[agent_pb2.ToolRequest] = []

    def answer(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        requests.append(request)
        return returns(request, {"status": "shipped", "got": json.loads(request.args_json)})

    _, result = split_events(await client.run("tools", "hi", tools=[lookup()], answer=answer))

    [request] = requests
    assert request.name == "lookup"
    args = json.loads(request.args_json)
    assert _json_schema.load(LOOKUP_PARAMETERS).problems(args) == []
    assert (request.request_id, request.retry) == ("1", 0)
    assert request.run_id == result.run_id
    assert request.tool_call_id
    assert json.loads(result.text) == {"lookup": {"status": "shipped", "got": args}}
    assert (result.usage.requests, result.usage.tool_calls) == (2, 1)


async def test_the_model_sees_the_tool_as_defined(served: Served) -> None:
    seen: list[AgentInfo] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(info)
        return ModelResponse(parts=[TextPart("no thanks")])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        model(messages, info)
        yield "no thanks"

    await served.worker.load_agent("looker", Agent(FunctionModel(model, stream_function=stream)))

    await served.client.run("looker", "hi", tools=[lookup(), tool_def("ping")])

    tools = {tool.name: tool for tool in seen[0].function_tools}
    assert tools["lookup"].description == "Find an order."
    assert tools["lookup"].parameters_json_schema == LOOKUP_PARAMETERS
    assert tools["ping"].parameters_json_schema == {"type": "object", "properties": {}}


async def test_tool_events_come_in_order(client: AgentClient) -> None:
    await load(client, "tools")

    events = await client.run(
        "tools", "hi", tools=[lookup()], answer=lambda request: returns(request, [1, "two"])
    )

    assert kinds(events)[:3] == ["tool_call", "tool_request", "tool_return"]
    assert set(kinds(events)[3:-1]) == {"text_delta"}
    call, request = events[0].tool_call, events[1].tool_request
    tool_return = events[2].tool_return
    assert call.id == request.tool_call_id == tool_return.id
    assert call.name == request.name == tool_return.name == "lookup"
    assert json.loads(call.args_json) == json.loads(request.args_json)
    assert json.loads(tool_return.content_json) == [1, "two"]
    assert not tool_return.retry
    assert events[-1].result.text == '{"lookup":[1,"two"]}'


async def test_a_retry_message_makes_the_model_retry(client: AgentClient) -> None:
    await load(client, "tools")

    def answer(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        if request.retry == 0:
            return retry(request, "order 0 does not exist, try another")
        return returns(request, "found")

    events = await client.run("tools", "hi", tools=[lookup()], answer=answer)

    tool_events = [event for event in events if event.WhichOneof("event") != "text_delta"]
    assert kinds(tool_events) == [
        *("tool_call", "tool_request", "tool_return"),
        *("tool_call", "tool_request", "tool_return"),
        "result",
    ]
    first, second = tool_events[1].tool_request, tool_events[4].tool_request
    assert (first.request_id, first.retry) == ("1", 0)
    assert (second.request_id, second.retry) == ("2", 1)
    assert first.tool_call_id != second.tool_call_id
    retried = tool_events[2].tool_return
    assert retried.retry
    assert json.loads(retried.content_json) == "order 0 does not exist, try another"
    assert b"order 0 does not exist, try another" in events[-1].result.messages_json
    assert events[-1].result.text == '{"lookup":"found"}'


@pytest.mark.parametrize(("max_retries", "requests"), [(None, 2), (0, 1), (2, 3)])
async def test_exhausted_retries_are_tool_failed(
    client: AgentClient, max_retries: int | None, requests: int
) -> None:
    await load(client, "tools")
    asked: list[int] = []

    def answer(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        asked.append(request.retry)
        return retry(request, f"still broken ({request.retry})")

    with pytest.raises(RunFailed) as raised:
        await client.run("tools", "hi", tools=[lookup(max_retries=max_retries)], answer=answer)

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "tool_failed"
    limit = 1 if max_retries is None else max_retries  # the agent's default: 1
    assert detail.message == (
        f"Tool 'lookup' exceeded max retries count of {limit}; "
        f"last problem: still broken ({requests - 1})"
    )
    assert asked == list(range(requests))


async def test_parallel_calls_are_all_requested_before_any_is_answered(
    client: AgentClient,
) -> None:
    await load(client, "calling")
    tools = [tool_def("a"), tool_def("b"), tool_def("c")]
    prompt = calls({"name": "a", "args": {"n": 1}}, {"name": "b"}, {"name": "c"})
    call = await client.start_run("calling", prompt, tools=tools)

    pending = [(await read_until(call, "tool_request")).tool_request for _ in range(3)]
    for request in reversed(pending):
        await call.write(agent_pb2.RunInput(tool_result=returns(request, request.name.upper())))
    events = await read_all(call)

    assert sorted(request.name for request in pending) == ["a", "b", "c"]
    assert len({request.request_id for request in pending}) == 3
    assert kinds(events) == ["tool_return"] * 3 + ["text_delta", "result"]
    assert json.loads(events[-1].result.text) == [
        {"name": "a", "content": "A"},
        {"name": "b", "content": "B"},
        {"name": "c", "content": "C"},
    ]


async def test_each_call_has_its_call_then_request_then_return(client: AgentClient) -> None:
    await load(client, "calling")
    prompt = calls({"name": "a"}, {"name": "nope"}, {"name": "b"}, {"name": "a", "args": [1]})

    events = await client.run(
        "calling",
        prompt,
        tools=[tool_def("a"), tool_def("b")],
        answer=lambda request: returns(request, request.tool_call_id),
    )

    positions: dict[str, dict[str, int]] = {}
    for position, event in enumerate(events):
        kind = event.WhichOneof("event")
        if kind in ("tool_call", "tool_return"):
            call_id = getattr(event, kind).id
        elif kind == "tool_request":
            call_id = event.tool_request.tool_call_id
        else:
            continue
        assert kind not in positions.setdefault(call_id, {}), (kind, call_id)
        positions[call_id][kind] = position
    assert set(positions) == {"call-0", "call-1", "call-2", "call-3"}
    for call_id in ("call-0", "call-2"):  # client tools
        order = positions[call_id]
        assert order["tool_call"] < order["tool_request"] < order["tool_return"]
    for call_id in ("call-1", "call-3"):  # an unknown tool, arguments that are not an object
        assert set(positions[call_id]) == {"tool_call", "tool_return"}
        assert positions[call_id]["tool_call"] < positions[call_id]["tool_return"]
    assert json.loads(events[-1].result.text) == [
        {"name": "a", "content": "call-0"},
        {"name": "nope", "retry": "Unknown tool name: 'nope'. Available tools: 'a', 'b'"},
        {"name": "b", "content": "call-2"},
        {"name": "a", "retry": json.dumps([NOT_AN_OBJECT], separators=(",", ":"))},
    ]


async def test_quiet_sends_only_tool_requests_and_the_result(client: AgentClient) -> None:
    await load(client, "tools")

    events = await client.run(
        "tools", "hi", tools=[lookup()], quiet=True, answer=lambda r: returns(r, None)
    )

    assert kinds(events) == ["tool_request", "result"]
    assert events[-1].result.text == '{"lookup":null}'


async def test_python_and_client_tools_in_one_run(client: AgentClient) -> None:
    await load(client, "tool")

    events = await client.run(
        "tool", "hi", tools=[lookup()], answer=lambda request: returns(request, {"n": 7})
    )

    assert [event.tool_call.name for event in events if event.HasField("tool_call")] == [
        "add",
        "lookup",
    ]
    assert [event.tool_request.name for event in events if event.HasField("tool_request")] == [
        "lookup"
    ]
    returned = {
        event.tool_return.name: json.loads(event.tool_return.content_json)
        for event in events
        if event.HasField("tool_return")
    }
    assert returned == {"add": 0, "lookup": {"n": 7}}
    assert events[-1].result.text == '{"add":0,"lookup":{"n":7}}'


async def test_python_tools_have_events_too(client: AgentClient) -> None:
    await load(client, "tool")

    events = await client.run("tool", "hi")

    assert kinds(events)[:2] == ["tool_call", "tool_return"]
    assert json.loads(events[0].tool_call.args_json) == {"a": 0, "b": 0}
    assert events[0].tool_call.id == events[1].tool_return.id
    assert events[1].tool_return.content_json == b"0"
    assert split_events(events)[1].text == '{"add":0}'
    assert kinds(await client.run("tool", "hi", quiet=True)) == ["result"]


async def test_a_tool_result_for_no_pending_request_is_ignored(
    client: AgentClient, caplog: pytest.LogCaptureFixture
) -> None:
    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()])
    request = (await read_until(call, "tool_request")).tool_request

    # The first request is answered with a retry, so that the run asks
    # again and waits for that answer: the worker handles a run's inputs in
    # the order they come, so both results it ignores are handled before
    # the run can end (once ended, it reads no more).
    await call.write(agent_pb2.RunInput(tool_result=retry(request, "once more")))
    await call.write(agent_pb2.RunInput(tool_result=returns(request, "again")))
    await call.write(agent_pb2.RunInput(tool_result=agent_pb2.ToolResult(request_id="nope")))
    second = (await read_until(call, "tool_request")).tool_request
    await call.write(agent_pb2.RunInput(tool_result=returns(second, "first")))
    _, result = split_events(await read_all(call))

    assert result.text == '{"lookup":"first"}'
    await until_no_run_tasks()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("request '1'" in message for message in warnings), warnings
    assert any("request 'nope'" in message for message in warnings), warnings


async def test_cancelling_while_a_request_is_pending_cancels_the_run(client: AgentClient) -> None:
    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()])
    await read_until(call, "tool_request")
    assert len(run_tasks()) == 2  # the run's input reader, the tool call

    call.cancel()

    await until_no_run_tasks()
    _, result = split_events(
        await client.run("tools", "hi", tools=[lookup()], answer=lambda r: returns(r, 1))
    )
    assert result.text == '{"lookup":1}'


async def test_a_deadline_while_a_request_is_pending_ends_the_run(client: AgentClient) -> None:
    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()], deadline=0.5)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_all(call)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until_no_run_tasks()


async def test_half_closing_with_a_request_pending_is_invalid_argument(
    client: AgentClient,
) -> None:
    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()])
    await read_until(call, "tool_request")

    await call.done_writing()

    with pytest.raises(RunFailed) as raised:
        await read_all(call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(raised.value).message == (
        "the client half-closed the Run with tool requests unanswered: '1'"
    )
    await until_no_run_tasks()


async def test_a_client_tool_called_after_a_half_close_is_invalid_argument(
    client: AgentClient,
) -> None:
    await load(client, "slow_stream")
    # A run on an agent that calls no tool may half-close as before: nothing to answer.
    call = await client.start_run("slow_stream", "2 0", tools=[lookup()])
    await call.done_writing()
    assert split_events(await read_all(call))[1].text == "chunk1 chunk2 "

    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()])
    await call.done_writing()

    with pytest.raises(RunFailed) as raised:
        await read_all(call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "half-closed" in error_detail(raised.value).message
    await until_no_run_tasks()


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (
            agent_pb2.ToolResult(request_id="1"),
            "has no outcome (return_json, retry_message or failed_message)",
        ),
        (agent_pb2.ToolResult(request_id="1", return_json=b"{nope"), "is not valid JSON"),
        (agent_pb2.ToolResult(request_id="1", return_json=b""), "is not valid JSON"),
    ],
)
async def test_a_malformed_tool_result_is_invalid_argument(
    client: AgentClient, result: agent_pb2.ToolResult, message: str
) -> None:
    await load(client, "tools")
    call = await client.start_run("tools", "hi", tools=[lookup()])
    await read_until(call, "tool_request")

    await call.write(agent_pb2.RunInput(tool_result=result))

    with pytest.raises(RunFailed) as raised:
        await read_all(call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error_detail(raised.value).message
    await until_no_run_tasks()


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([tool_def("")], "a ToolDef needs a name"),
        ([tool_def("a"), tool_def("a")], "tool 'a' is defined twice"),
        ([tool_def("add")], "tool 'add' is defined twice"),  # the agent's own tool
        ([agent_pb2.ToolDef(name="a", parameters_json=b"{")], "not valid JSON"),
        ([tool_def("a", {"type": "array"})], '"type": "object"'),
        ([tool_def("a", max_retries=-1)], "max_retries must be >= 0, got -1"),
    ],
)
async def test_bad_tool_defs_are_invalid_argument(
    client: AgentClient, tools: list[agent_pb2.ToolDef], message: str
) -> None:
    await load(client, "tool")

    with pytest.raises(RunFailed) as raised:
        await client.run("tool", "hi", tools=tools)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error_detail(raised.value).message


async def test_tools_on_run_sync_are_invalid_argument(client: AgentClient) -> None:
    await load(client, "tools")

    with pytest.raises(RunFailed) as raised:
        await client.run_sync("tools", "hi", tools=[lookup()])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert "tools need the Run stream" in detail.message


async def test_calling_agent_makes_the_scripted_calls(client: AgentClient) -> None:
    await load(client, "calling")
    prompt = calls({"name": "add", "args": {"a": 1, "b": 2}}, {"name": "nope"})

    def add(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        assert request.tool_call_id == "call-0"
        args = json.loads(request.args_json)
        return returns(request, args["a"] + args["b"])

    _, result = split_events(
        await client.run("calling", prompt, tools=[tool_def("add")], answer=add)
    )

    assert result.text == (
        '[{"name": "add", "content": 3}, '
        """{"name": "nope", "retry": "Unknown tool name: 'nope'. Available tools: 'add'"}]"""
    )


async def test_calling_agent_retries_calls_when_told(client: AgentClient) -> None:
    await load(client, "calling")
    seen: list[tuple[str, int]] = []

    def answer(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        seen.append((request.tool_call_id, request.retry))
        return retry(request, "not yet") if request.retry < 2 else returns(request, "done")

    _, result = split_events(
        await client.run(
            "calling",
            calls({"name": "job"}, retry_calls=True),
            tools=[tool_def("job", max_retries=2)],
            answer=answer,
        )
    )

    assert seen == [("call-0", 0), ("call-0-1", 1), ("call-0-2", 2)]
    assert json.loads(result.text) == [
        {"name": "job", "retry": "not yet"},
        {"name": "job", "retry": "not yet"},
        {"name": "job", "content": "done"},
    ]


async def test_calling_agent_retrying_an_unknown_tool_is_tool_failed(client: AgentClient) -> None:
    await load(client, "calling")

    with pytest.raises(RunFailed) as raised:
        await client.run("calling", calls({"name": "nope"}, retry_calls=True))

    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.message) == (
        "tool_failed",
        "Tool 'nope' exceeded max retries count of 1; "
        "last problem: Unknown tool name: 'nope'. No tools available.",
    )


async def test_calling_agent_also_answers_run_sync(client: AgentClient) -> None:
    await load(client, "calling")

    assert (await client.run_sync("calling", calls())).text == "[]"
    result = await client.run_sync("calling", calls({"name": "nope"}))
    assert json.loads(result.text) == [
        {"name": "nope", "retry": "Unknown tool name: 'nope'. No tools available."}
    ]


def _recording_agent(seen: list[AgentInfo], **options: Any) -> Agent[None, str]:
    """An agent on FunctionModel that records what each request offered the model; calls no tool."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(info)
        return ModelResponse(parts=[TextPart("no thanks")])

    return Agent(FunctionModel(model), **options)


def _own_tool(agent: Agent[None, str]) -> None:
    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b


@pytest.mark.parametrize(
    "shape",
    [
        "no tools of its own",  # the client tools join the agent's for the run
        "a tool of its own",  # likewise, after the agent's own
        "a tool timeout",  # it would apply to the client tools: run toolset
        "a toolset of its own",  # the client tools come after it: run toolset
    ],
)
async def test_the_model_gets_the_client_tools_a_run_given_them_as_a_toolset_gets(
    served: Served, shape: str
) -> None:
    """Whichever way the worker gives the run its client tools (`ClientTools.attach`),
    the model gets what a Python caller's `agent.run(..., toolsets=[...])` gives it."""
    seen: list[AgentInfo] = []
    options: dict[str, Any] = {}
    if shape == "a tool timeout":
        options["tool_timeout"] = 30
    if shape == "a toolset of its own":
        options["toolsets"] = [FunctionToolset([Tool(_own_tool_function)])]
    agent = _recording_agent(seen, **options)
    if shape != "no tools of its own":
        _own_tool(agent)
    own_before = dict(agent.toolsets[0].tools)
    await served.worker.load_agent("recorder", agent)
    defs = [lookup(), tool_def("ping", description="Are you there?")]

    await served.client.run("recorder", "hi", tools=defs, quiet=True)
    client_toolset = _client_tools.ClientTools(defs, agent, _never_sent).toolset
    assert client_toolset is not None
    await agent.run("hi", toolsets=[client_toolset])

    via_synapse, direct = seen
    # Joined to the agent's tools, they carry its toolset id, which no model is sent.
    assert [replace(tool, toolset_id=None) for tool in via_synapse.function_tools] == [
        replace(tool, toolset_id=None) for tool in direct.function_tools
    ]
    joined = shape in ("no tools of its own", "a tool of its own")
    assert [tool.toolset_id for tool in via_synapse.function_tools][-2:] == (
        [AGENT_TOOLSET_ID] * 2 if joined else [None, None]
    )
    assert [tool.name for tool in direct.function_tools][-2:] == ["lookup", "ping"]
    assert agent.toolsets[0].tools == own_before  # the agent itself is unchanged


def _own_tool_function(text: str) -> str:
    """Echo the text."""
    return text


async def _never_sent(event: agent_pb2.RunEvent) -> None:
    raise AssertionError("no tool is called")


async def test_concurrent_runs_of_one_agent_see_only_their_own_client_tools(
    served: Served,
) -> None:
    offered: dict[str, list[str]] = {}
    both_in_flight = asyncio.Event()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = messages[0].parts[-1].content
        offered[prompt] = [tool.name for tool in info.function_tools]
        if len(offered) == 2:
            both_in_flight.set()
        await asyncio.wait_for(both_in_flight.wait(), 5)
        return ModelResponse(parts=[TextPart("done")])

    await served.worker.load_agent("shared", Agent(FunctionModel(model)))

    await asyncio.gather(
        served.client.run("shared", "a", tools=[tool_def("alpha")], quiet=True),
        served.client.run("shared", "b", tools=[tool_def("beta"), tool_def("gamma")], quiet=True),
    )

    assert offered == {"a": ["alpha"], "b": ["beta", "gamma"]}


async def test_concurrent_runs_with_the_same_tool_definition_each_answer_their_own_calls(
    client: AgentClient,
) -> None:
    # The `Tool` made from a definition is kept for the runs that send it again:
    # each call must still reach the run that made it, and its answer that run.
    await load(client, "calling")
    both_asked = asyncio.Event()
    asked: list[str] = []

    def answerer(run: str) -> Any:
        async def answer(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
            asked.append(run)
            if len(asked) == 2:
                both_asked.set()
            await asyncio.wait_for(both_asked.wait(), 5)
            return returns(request, f"{run}: {json.loads(request.args_json)['order_id']}")

        return answer

    prompts = {
        run: calls({"name": "lookup", "args": {"order_id": n}}) for n, run in enumerate("ab")
    }
    runs = [
        client.run("calling", prompts[run], tools=[lookup()], quiet=True, answer=answerer(run))
        for run in "ab"
    ]
    results = [split_events(events)[1] for events in await asyncio.gather(*runs)]

    assert sorted(asked) == ["a", "b"]
    assert [json.loads(result.text) for result in results] == [
        [{"name": "lookup", "content": "a: 0"}],
        [{"name": "lookup", "content": "b: 1"}],
    ]
    assert _client_tools._cached_tool.cache_info().currsize >= 1


async def test_runs_that_send_the_same_definitions_share_their_toolset(
    client: AgentClient,
) -> None:
    # An agent's runs all send its tools: the toolset is made for the first.
    await load(client, "calling")
    tools = [tool_def("add"), tool_def(f"unique_{id(client)}")]
    made = _client_tools._cached_toolset.cache_info()

    def add(request: agent_pb2.ToolRequest) -> agent_pb2.ToolResult:
        args = json.loads(request.args_json)
        return returns(request, args["a"] + args["b"])

    for n in range(3):
        prompt = calls({"name": "add", "args": {"a": n, "b": 1}})
        _, result = split_events(await client.run("calling", prompt, tools=tools, answer=add))
        assert result.text == f'[{{"name": "add", "content": {n + 1}}}]'

    now = _client_tools._cached_toolset.cache_info()
    assert (now.misses - made.misses, now.hits - made.hits) == (1, 2)
