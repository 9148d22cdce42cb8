"""Run: streamed text deltas and the result, cancellation, flow control, protocol errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from conftest import AgentClient, RunFailed, Served, error_detail, read_all, split_events
from synapse_fixtures import agents as fixtures
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2


async def load(client: AgentClient, agent_id: str) -> None:
    await client.load_agent(agent_id, ref=f"synapse_fixtures.agents:{agent_id}_agent")


async def wait_until_cancelled(prompt: str) -> None:
    """The server cancels its handler shortly after the client gives up: wait for it."""
    async with asyncio.timeout(5):
        while prompt not in fixtures.cancelled:  # noqa: ASYNC110 (a fixture's plain list)
            await asyncio.sleep(0.01)


def run_tasks() -> list[asyncio.Task[object]]:
    """The worker's tasks for Run calls still alive (the worker runs on the test's loop)."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("synapse-run")]


async def test_streams_text_deltas_then_the_result(client: AgentClient) -> None:
    await load(client, "echo")

    deltas, result = split_events(await client.run("echo", "hello"))

    assert len(deltas) > 1
    assert "".join(deltas) == result.text == "success (no tool calls)"
    assert result.usage.requests == 1
    assert result.run_id
    assert b"hello" in result.messages_json


async def test_deltas_are_the_streamed_pieces_in_order(served: Served) -> None:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for piece in ["Hel", "lo", "", ", ", "world", "!"]:
            yield piece

    await served.worker.load_agent("pieces", Agent(FunctionModel(stream_function=stream)))

    deltas, result = split_events(await served.client.run("pieces", "hi"))

    assert deltas == ["Hel", "lo", ", ", "world", "!"]
    assert result.text == "Hello, world!"


async def test_deltas_arrive_as_the_model_produces_them(client: AgentClient) -> None:
    await load(client, "slow_stream")
    call = await client.start_run("slow_stream", "5 0.2")
    arrivals: list[tuple[float, agent_pb2.RunEvent]] = []

    while (event := await call.read()) is not grpc.aio.EOF:
        arrivals.append((time.monotonic(), event))

    deltas, result = split_events([event for _, event in arrivals])
    assert deltas == ["chunk1 ", "chunk2 ", "chunk3 ", "chunk4 ", "chunk5 "]
    assert "".join(deltas) == result.text
    # The 4 chunks after the first take 4 x 0.2 s to come: the first one was sent
    # right away, not held back until the run finished.
    first_delta_at, result_at = arrivals[0][0], arrivals[-1][0]
    assert result_at - first_delta_at >= 0.5


async def test_the_client_may_half_close_after_start(client: AgentClient) -> None:
    await load(client, "echo")
    call = await client.start_run("echo", "hello")

    await call.done_writing()

    deltas, result = split_events(await read_all(call))
    assert "".join(deltas) == result.text == "success (no tool calls)"
    assert await call.code() == grpc.StatusCode.OK


async def test_nothing_of_a_run_is_left_running_after_it(client: AgentClient) -> None:
    await load(client, "echo")

    await client.run("echo", "hello")  # the client never half-closes

    assert run_tasks() == []


async def test_fixtures_without_their_own_stream_function_stream_too(client: AgentClient) -> None:
    await load(client, "history")

    deltas, result = split_events(await client.run("history", "one"))

    assert deltas == ["messages=1"]
    assert result.text == "messages=1"


async def test_structured_output_is_json_with_no_text_deltas(client: AgentClient) -> None:
    await load(client, "city")

    deltas, result = split_events(await client.run("city", "the capital of France"))

    assert deltas == []
    assert json.loads(result.json) == {"name": "Paris", "population": 2_100_000}


async def test_a_client_cancel_cancels_the_run(client: AgentClient) -> None:
    await load(client, "slow_stream")
    call = await client.start_run("slow_stream", "50 0.11")
    assert (await call.read()).text_delta == "chunk1 "

    call.cancel()

    await wait_until_cancelled("50 0.11")
    _, result = split_events(await client.run("slow_stream", "2 0"))
    assert result.text == "chunk1 chunk2 "
    _, answer = split_events(await client.run("slow_stream", "cancelled?"))
    assert "50 0.11" in json.loads(answer.text)
    assert run_tasks() == []


async def test_a_deadline_cancels_the_run(client: AgentClient) -> None:
    await load(client, "slow_stream")
    call = await client.start_run("slow_stream", "50 0.12", deadline=0.5)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_all(call)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until_cancelled("50 0.12")


async def test_stopping_the_worker_cancels_the_run(served: Served) -> None:
    await load(served.client, "slow_stream")
    call = await served.client.start_run("slow_stream", "50 0.13")
    assert (await call.read()).text_delta == "chunk1 "

    await served.worker.stop(grace=0)

    with pytest.raises(grpc.aio.AioRpcError):
        await read_all(call)
    await wait_until_cancelled("50 0.13")


async def test_a_slow_reader_slows_the_run_down(served: Served) -> None:
    chunk, chunks = "x" * 65536, 2000  # 128 MiB if nothing held the model back
    produced = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        nonlocal produced
        for _ in range(chunks):
            produced += 1
            yield chunk

    await served.worker.load_agent("firehose", Agent(FunctionModel(stream_function=stream)))
    call = await served.client.start_run("firehose", "go")
    await call.read()

    # The client reads no more: the run stalls once gRPC's flow-control windows are full.
    seen = -1
    async with asyncio.timeout(5):
        while produced != seen:
            seen = produced
            await asyncio.sleep(0.2)

    assert produced * len(chunk) < 32 * 1024 * 1024
    call.cancel()


async def test_a_first_message_other_than_start_is_invalid_argument(client: AgentClient) -> None:
    call = client.run_call()
    await call.write(agent_pb2.RunInput())

    with pytest.raises(RunFailed) as raised:
        await read_all(call)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert detail.message == "the first RunInput of a Run must be `start`, got empty"


async def test_a_stream_closed_before_start_is_invalid_argument(client: AgentClient) -> None:
    call = client.run_call()
    await call.done_writing()

    with pytest.raises(RunFailed) as raised:
        await read_all(call)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "got end of stream" in error_detail(raised.value).message


async def test_a_second_start_is_invalid_argument_and_cancels_the_run(client: AgentClient) -> None:
    await load(client, "slow_stream")
    call = await client.start_run("slow_stream", "50 0.14")
    assert (await call.read()).text_delta == "chunk1 "

    await call.write(agent_pb2.RunInput(start=agent_pb2.RunRequest(agent_id="slow_stream")))

    with pytest.raises(RunFailed) as raised:
        await read_all(call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(raised.value).message == "unexpected start after a Run's `start`"
    assert "50 0.14" in fixtures.cancelled  # cancelled before the status was sent


async def test_an_unknown_agent_is_not_found(client: AgentClient) -> None:
    with pytest.raises(RunFailed) as raised:
        await client.run("ghost", "hi")

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert kind_name(error_detail(raised.value).kind) == "not_found"


async def test_a_failing_run_ends_with_its_error_after_the_text_so_far(served: Served) -> None:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "partial "
        raise ValueError("the stream broke")

    await served.worker.load_agent("breaking", Agent(FunctionModel(stream_function=stream)))
    call = await served.client.start_run("breaking", "hi")

    assert (await call.read()).text_delta == "partial "
    with pytest.raises(RunFailed) as raised:
        await read_all(call)
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type, detail.message) == (
        "python_error",
        "ValueError",
        "ValueError: the stream broke",
    )
    assert run_tasks() == []


async def test_a_model_error_is_reported_like_run_sync(client: AgentClient) -> None:
    await load(client, "failing")

    with pytest.raises(RunFailed) as raised:
        await client.run("failing", "hi")

    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type, detail.message) == (
        "python_error",
        "ValueError",
        "ValueError: the model exploded",
    )
    assert "in _explode" in detail.traceback


async def test_runs_are_concurrent(client: AgentClient) -> None:
    await load(client, "concurrency")

    runs = await asyncio.gather(*(client.run("concurrency", "20") for _ in range(20)))

    assert [split_events(events)[1].text for events in runs] == ["peak=20"] * 20
