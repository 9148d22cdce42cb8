"""The lane's connections of sync calls, read and answered by the worker's threads.

A client whose first frame is a hello with `threads: true` has its calls of
the Bridge's sync functions read and answered by threads of the lane's own
(`_lane_threads`), not by the event loop. Each test checks one of the
guarantees those calls keep: the same answers as on the loop's connection,
exactly one end per call, deadlines, cancels, the connection's loss, the
worker's stop, stuck threads, and bounded threads.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import TOKEN
from synapse_python import Worker, _lane, _lane_blocking, _lane_threads, _lane_threads_core
from synapse_python._busy_wait import MAX_BUSY_WAIT_US
from synapse_python._lane_frames import framed
from synapse_python._proto.synapse.v1 import agent_pb2, lane_pb2
from synapse_python._threads import SyncThreads, any_busy
from synapse_python.bridge import BridgeService, generate, write
from test_lane import TRANSPORTS, LaneClient, status

MODULE = "threaded_bridged"

SOURCE = '''
"""Sync functions for the lane's threads, and others that are not theirs."""

from __future__ import annotations

import threading

from pydantic import BaseModel, Field

# Set by the tests: a blocked call returns once it is set.
release = threading.Event()
# The tags of the blocked calls that ran, in order.
ran: list[str] = []


class Point(BaseModel):
    x: int = Field(ge=0)
    y: int


def add(a: int, b: int) -> int:
    return a + b


def thread_name() -> str:
    return threading.current_thread().name


def block(tag: str) -> str:
    """Waits for the test to release it."""
    ran.append(tag)
    release.wait(10)
    return tag


def shift(point: Point, by: int) -> Point:
    return Point(x=point.x + by, y=point.y)


def fails(message: str) -> int:
    raise ValueError(message)


def echo(text: str) -> str:
    return text


def repeat(text: str, times: int) -> str:
    return text * times


def on_the_loop(a: int) -> int:
    return a


async def awaited(a: int) -> int:
    return a
'''


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("threaded")
    (out / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    names = ["add", "thread_name", "block", "shift", "fails", "echo", "repeat", "awaited"]
    bridged = {name: {} for name in names} | {"on_the_loop": {"on_loop": True}}
    (out / "config.json").write_text(json.dumps({"module": MODULE, "functions": bridged}))
    sys.path.insert(0, str(out))
    write(out, generate(config=out / "config.json").files)
    yield out
    sys.path.remove(str(out))


@pytest.fixture
def functions(bridged: Path) -> Iterator[Any]:
    """The bridged module, its blocked calls released after each test."""
    module = importlib.import_module(MODULE)
    module.release.clear()
    module.ran.clear()
    yield module
    module.release.set()


def service() -> BridgeService:
    return importlib.import_module(f"synapse_bridge_{MODULE}").SERVICE


async def connect_threads(path: Path, transport: str, *, token: str = "") -> LaneClient:
    """A client of the lane whose hello asks for threads, on `transport`."""
    return await LaneClient.connect(path, pipes=transport == "pipes", token=token, threads=True)


@pytest.fixture(autouse=True, params=["core", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which connection serves the threads: every test runs on each (the
    native bookkeeping where `_lane_core` is built, and the Python one)."""
    if request.param == "core":
        assert _lane_threads_core.UNAVAILABLE is None, _lane_threads_core.UNAVAILABLE
        chosen: Any = _lane_threads_core.CoreConnection
    else:
        chosen = _lane_threads.ThreadedConnection
    monkeypatch.setattr(_lane, "threads_connection", lambda: chosen)
    return str(request.param)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """What the threads' connection goes on: most tests run on each."""
    return str(request.param)


class Lane:
    """A lane server of the bridge's handlers on its own pool, and a threads client."""

    def __init__(self, server: _lane.LaneServer, pool: SyncThreads, client: LaneClient) -> None:
        self.server, self.pool, self.client = server, pool, client
        self.stuck: list[int] = []

    async def call(self, name: str, *, deadline: float = 5, **arguments: Any) -> int:
        return self.client.start(*request(name, **arguments), timeout=deadline)


def request(name: str, **arguments: Any) -> tuple[str, bytes]:
    bridge = service()
    codec = bridge._codec
    function = codec.function(name)
    message = codec.write_request(function, arguments).SerializeToString()
    return f"/{bridge.name}/{function.rpc}", message


def value(name: str, frame: lane_pb2.LaneFrame) -> Any:
    assert frame.WhichOneof("body") == "message", frame
    bridge = service()
    codec = bridge._codec
    function = codec.function(name)
    response = codec.message_class(function.response).FromString(frame.message)
    return codec.read_response(function, response)


@pytest.fixture
async def lane(functions: Any, tmp_path: Path, transport: str) -> AsyncIterator[Lane]:
    lane = await start_lane(tmp_path, transport, max_threads=4)
    yield lane
    functions.release.set()
    await lane.client.close()
    await lane.server.stop(None)


async def start_lane(tmp_path: Path, transport: str, *, max_threads: int, **options: Any) -> Lane:
    stuck: list[int] = []
    pool = SyncThreads(max_threads=max_threads, on_stuck=stuck.append)
    bridge = service()
    _, table = bridge.handlers(pool)
    handlers = {f"/{bridge.name}/{rpc}": handler for rpc, handler in table.items()}
    server = _lane.LaneServer(handlers, max_message_bytes=1 << 20, threads=pool, **options)
    await server.start(str(tmp_path / "lane.sock"))
    lane = Lane(server, pool, await connect_threads(tmp_path / "lane.sock", transport))
    lane.stuck = stuck
    return lane


async def no_frame_for(client: LaneClient, call: int, seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)
    assert client.frames[call].empty(), client.frames[call]


async def eventually(condition: Any, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def without_traceback(frame: lane_pb2.LaneFrame) -> lane_pb2.LaneFrame:
    """`frame` but its call id and the traceback of its error, which shows
    the frames of the thread that ran the function."""
    copy = lane_pb2.LaneFrame()
    copy.CopyFrom(frame)
    copy.call = 0
    if copy.WhichOneof("body") == "status" and copy.status.detail:
        detail = agent_pb2.ErrorDetail.FromString(copy.status.detail)
        assert not detail.traceback or detail.traceback.endswith(f"{detail.message}\n")
        detail.traceback = ""
        copy.status.detail = detail.SerializeToString()
    return copy


def point(**fields: int) -> Any:
    """A `Point` as given, unchecked (the worker checks it)."""
    return importlib.import_module(MODULE).Point.model_construct(**fields)


async def test_sync_calls_are_answered_by_the_lanes_threads_as_by_the_loop(
    lane: Lane, tmp_path: Path
) -> None:
    client = lane.client
    looped = await LaneClient.connect(tmp_path / "lane.sock")
    try:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("add", {"a": 2, "b": 40}),
            ("shift", {"point": point(x=1, y=2), "by": 3}),
            ("shift", {"point": point(x=-1, y=2), "by": 3}),  # invalid arguments
            ("fails", {"message": "no"}),
            ("echo", {"text": "héllo"}),
        ]
        for name, arguments in cases:
            method, message = request(name, **arguments)
            threaded = await client.next(client.start(method, message))
            on_loop = await looped.next(looped.start(method, message))
            assert without_traceback(threaded) == without_traceback(on_loop), name
        assert value("add", await client.next(client.start(*request("add", a=1, b=2)))) == 3
        name = value("thread_name", await client.next(client.start(*request("thread_name"))))
        assert name == "synapse-lane-sync"
        # On the loop's connection the same function runs in the pool's thread.
        name = value("thread_name", await looped.next(looped.start(*request("thread_name"))))
        assert name == "synapse-sync"
    finally:
        await looped.close()


async def test_methods_that_are_not_sync_functions_are_refused(lane: Lane) -> None:
    client = lane.client
    for name in ("on_the_loop", "awaited"):
        code, message, _ = status(await client.next(client.start(*request(name, a=1))))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not a sync function run by the worker's threads" in message
    code, message, _ = status(await client.next(client.start("/no.Such/Method")))
    assert (code, message) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


async def test_many_calls_in_one_write_are_each_answered_once(lane: Lane) -> None:
    client = lane.client
    calls = {client.start(*request("add", a=i, b=1)): i + 1 for i in range(300)}
    for call, expected in calls.items():
        assert value("add", await client.next(call)) == expected
    await no_frame_for(client, max(calls))
    assert all(client.frames[call].empty() for call in calls)


async def test_answers_larger_than_the_pipe_or_socket_arrive_whole(lane: Lane) -> None:
    # Each is written in several parts, the thread waiting for room between them.
    client = lane.client
    calls = {
        client.start(*request("repeat", text=f"{i}-", times=100_000)): f"{i}-" * 100_000
        for i in range(4)
    }
    for call, expected in calls.items():
        assert value("repeat", await client.next(call)) == expected


async def test_a_long_call_does_not_hold_up_the_others(lane: Lane, functions: Any) -> None:
    client = lane.client
    blocked = await lane.call("block", tag="slow")
    await eventually(lambda: functions.ran == ["slow"])
    # Read by another thread, while the first is still in `block`.
    assert value("add", await client.next(await lane.call("add", a=1, b=1))) == 2
    assert client.frames[blocked].empty()
    functions.release.set()
    assert value("block", await client.next(blocked)) == "slow"


async def test_a_deadline_ends_a_running_call_and_its_thread_is_stuck_until_it_returns(
    lane: Lane, functions: Any
) -> None:
    client = lane.client
    call = await lane.call("block", tag="late", deadline=0.05)
    code, message, _ = status(await client.next(call))
    assert (code, message) == (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert lane.pool.stuck == 1
    functions.release.set()
    await eventually(lambda: lane.pool.stuck == 0)
    assert lane.stuck == [1, 0]
    await no_frame_for(client, call)  # what it returned is dropped


def together(client: LaneClient, *frames: lane_pb2.LaneFrame) -> None:
    """Sends `frames` in one write: the worker reads them together."""
    client.writer.write(b"".join(framed(frame) for frame in frames))


def start_frame(call: int, name: str, *, deadline: float = 0, **arguments: Any) -> Any:
    method, message = request(name, **arguments)
    start = lane_pb2.LaneStart(method=method, message=message, timeout_us=int(deadline * 1e6))
    return lane_pb2.LaneFrame(call=call, start=start)


async def test_a_call_waiting_for_a_thread_past_its_deadline_never_runs(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    lane = await start_lane(tmp_path, transport, max_threads=1)
    try:
        client = lane.client
        # Read together: the one thread runs the first, the second waits.
        together(
            client,
            start_frame(1, "block", tag="first"),
            start_frame(2, "block", tag="second", deadline=0.05),
        )
        code, _, _ = status(await client.next(2))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert functions.ran == ["first"]
        # With every thread busy nobody reads: a call and the cancel the
        # client sends when its own deadline passes wait in the socket, and
        # are read together once a thread is free: the call never runs.
        together(client, start_frame(3, "block", tag="third"))
        await asyncio.sleep(0.05)
        together(client, lane_pb2.LaneFrame(call=3, cancel=True))
        functions.release.set()
        assert value("block", await client.next(1)) == "first"
        assert value("add", await client.next(client.start(*request("add", a=1, b=2)))) == 3
        assert functions.ran == ["first"]
        assert lane.stuck == []  # no call was abandoned while it ran
        await no_frame_for(client, 3)
    finally:
        functions.release.set()
        await lane.client.close()
        await lane.server.stop(None)


async def test_threads_are_bounded_by_the_pools_maximum(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    lane = await start_lane(tmp_path, transport, max_threads=2)
    try:
        client = lane.client
        calls = [await lane.call("block", tag=str(i)) for i in range(4)]
        await eventually(lambda: len(functions.ran) == 2)
        await asyncio.sleep(0.05)  # many ticks: a third thread would have started
        assert len(functions.ran) == 2
        (connection,) = lane.server._threaded
        assert connection.threads == 2
        functions.release.set()
        answers = [value("block", await client.next(call)) for call in calls]
        assert answers == ["0", "1", "2", "3"]
        assert sorted(functions.ran) == ["0", "1", "2", "3"]
    finally:
        functions.release.set()
        await lane.client.close()
        await lane.server.stop(None)


async def test_a_cancel_abandons_a_running_call(lane: Lane, functions: Any) -> None:
    client = lane.client
    call = await lane.call("block", tag="cancelled")
    await eventually(lambda: functions.ran == ["cancelled"])
    client.send(lane_pb2.LaneFrame(call=call, cancel=True))
    await eventually(lambda: lane.pool.stuck == 1)
    functions.release.set()
    await eventually(lambda: lane.pool.stuck == 0)
    await no_frame_for(client, call)
    # A cancel of a call that ended, or never was, changes nothing.
    client.send(lane_pb2.LaneFrame(call=call, cancel=True))
    client.send(lane_pb2.LaneFrame(call=999, cancel=True))
    assert value("add", await client.next(await lane.call("add", a=2, b=2))) == 4


async def test_a_lost_connection_abandons_its_calls_and_its_threads_end(
    lane: Lane, functions: Any
) -> None:
    call = await lane.call("block", tag="orphan")
    await eventually(lambda: functions.ran == ["orphan"])
    closed = list(lane.server._threaded)
    await lane.client.close()
    await eventually(lambda: lane.pool.stuck == 1)
    await eventually(lambda: not lane.server._threaded)
    functions.release.set()
    await eventually(lambda: lane.pool.stuck == 0)
    await no_frame_for(lane.client, call)
    (gone,) = closed
    assert gone.threads == 0 and gone._ends_closed


async def test_messages_over_the_maximum_size_are_refused_both_ways(lane: Lane) -> None:
    client = lane.client
    big = "x" * (1 << 20)
    code, message, _ = status(await client.next(await lane.call("echo", text=big)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("Received message larger than max")
    code, message, _ = status(
        await client.next(await lane.call("repeat", text="ab", times=1 << 19))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("Sent message larger than max")
    assert value("add", await client.next(await lane.call("add", a=1, b=1))) == 2


async def test_a_broken_client_is_dropped_and_other_connections_go_on(
    lane: Lane, tmp_path: Path, transport: str
) -> None:
    lane.client.writer.write(b"\x00\x00\x00\x03abc")
    await asyncio.wait_for(lane.client.closed.wait(), 5)
    other = await connect_threads(tmp_path / "lane.sock", transport)
    try:
        assert value("add", await other.next(other.start(*request("add", a=5, b=5)))) == 10
    finally:
        await other.close()


async def test_a_hello_asking_for_threads_after_calls_breaks_the_connection(
    lane: Lane, tmp_path: Path
) -> None:
    client = await LaneClient.connect(tmp_path / "lane.sock")
    try:
        method, message = request("thread_name")
        client.start(method, message)
        client.send(lane_pb2.LaneFrame(call=0, hello=lane_pb2.LaneHello(threads=True)))
        await asyncio.wait_for(client.closed.wait(), 5)
    finally:
        await client.close()


async def test_a_running_call_counts_as_busy_for_the_loops_busy_wait(
    lane: Lane, functions: Any
) -> None:
    assert not any_busy()
    call = await lane.call("block", tag="busy")
    await eventually(lambda: functions.ran == ["busy"])
    assert any_busy()
    functions.release.set()
    assert value("block", await lane.client.next(call)) == "busy"
    await eventually(lambda: not any_busy())


async def test_the_stop_waits_for_calls_within_its_grace_then_ends_them(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    lane = await start_lane(tmp_path, transport, max_threads=4)
    client = lane.client
    try:
        answered = await lane.call("block", tag="answered")
        cut = await lane.call("block", tag="cut")
        await eventually(lambda: len(functions.ran) == 2)
        stopping = asyncio.ensure_future(lane.server.stop(0.3))
        await asyncio.sleep(0.05)
        # Calls that come while the worker stops are refused.
        code, message, _ = status(await client.next(await lane.call("add", a=1, b=1)))
        assert (code, message) == (grpc.StatusCode.UNAVAILABLE, "the worker is stopping")
        assert not stopping.done()
        await stopping
        for call in (answered, cut):
            code, message, _ = status(await client.next(call))
            assert (code, message) == (grpc.StatusCode.UNAVAILABLE, "the worker is stopping")
        assert lane.pool.stuck == 2
        await asyncio.wait_for(client.closed.wait(), 5)
    finally:
        functions.release.set()
        await client.close()
    await eventually(lambda: lane.pool.stuck == 0)


async def test_the_stop_lets_a_call_end_within_its_grace(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    await stop_while_a_call_ends_in_its_grace(functions, tmp_path, transport)


async def test_the_stop_waits_for_the_answer_of_a_call_that_ended_within_its_grace(
    functions: Any, tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread held up between its call's end and its answer's write, as a
    # busy machine may hold it: the stop must not close the socket meanwhile.
    write = _lane_threads.ThreadedConnection._write

    def late_write(connection: _lane_threads.ThreadedConnection, data: bytes) -> None:
        if data:
            time.sleep(0.3)
        write(connection, data)

    monkeypatch.setattr(_lane_threads.ThreadedConnection, "_write", late_write)
    await stop_while_a_call_ends_in_its_grace(functions, tmp_path, transport)


async def stop_while_a_call_ends_in_its_grace(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    """The worker's stop, with a grace of 5 s, while a call runs that ends
    0.05 s into it: the call is answered, the stop ends, no thread is stuck."""
    lane = await start_lane(tmp_path, transport, max_threads=4)
    client = lane.client
    try:
        call = await lane.call("block", tag="in time")
        await eventually(lambda: functions.ran == ["in time"])
        stopping = asyncio.ensure_future(lane.server.stop(5))
        await asyncio.sleep(0.05)
        functions.release.set()
        assert value("block", await client.next(call)) == "in time"
        await asyncio.wait_for(stopping, 5)
        assert lane.pool.stuck == 0
    finally:
        functions.release.set()
        await client.close()


async def test_a_worker_serves_threads_connections_with_its_token_and_threads(
    bridged: Path, functions: Any, tmp_path: Path, transport: str
) -> None:
    worker = Worker(token=TOKEN)
    worker.load_bridge(MODULE)
    await worker.start(f"unix:{tmp_path / 'worker.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        if transport == "pipes":
            # Refused at its hello: no pipes are handed over.
            with pytest.raises(ConnectionError):
                await connect_threads(tmp_path / "lane.sock", transport)
        else:
            refused = await connect_threads(tmp_path / "lane.sock", transport)
            refused.start(*request("add", a=1, b=1))
            await asyncio.wait_for(refused.closed.wait(), 5)
            await refused.close()

        client = await connect_threads(tmp_path / "lane.sock", transport, token=TOKEN)
        name = value("thread_name", await client.next(client.start(*request("thread_name"))))
        assert name == "synapse-lane-sync"
        call = client.start(*request("block", tag="stuck"), timeout=0.05)
        code, _, _ = status(await client.next(call))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert worker.stuck_threads == 1  # counted with the worker's pool
        functions.release.set()
        await eventually(lambda: worker.stuck_threads == 0)
        await client.close()
    finally:
        functions.release.set()
        await worker.stop(grace=0)


async def test_the_reading_thread_polls_for_the_next_call_with_a_busy_wait_budget(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    lane = await start_lane(tmp_path, transport, max_threads=4, busy_wait=0.005)
    try:
        client = lane.client
        assert value("add", await client.next(await lane.call("add", a=0, b=0))) == 0
        (connection,) = lane.server._threaded
        selector = connection._ends.selector
        polls = []
        poll = selector._poll
        selector._poll = lambda *args: polls.append(1) or poll(*args)
        for n in range(20):  # one call at a time, back to back
            assert value("add", await client.next(await lane.call("add", a=n, b=1))) == n + 1
        assert polls
    finally:
        await lane.client.close()
        await lane.server.stop(None)


async def test_a_worker_gives_its_busy_wait_budget_to_the_reading_thread(
    bridged: Path, tmp_path: Path, transport: str
) -> None:
    for wrong in (-1, MAX_BUSY_WAIT_US + 1):
        with pytest.raises(ValueError, match="busy_wait_us must be from 0 to"):
            Worker(busy_wait_us=wrong)
    worker = Worker(busy_wait_us=250)
    worker.load_bridge(MODULE)
    await worker.start(f"unix:{tmp_path / 'worker.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        client = await connect_threads(tmp_path / "lane.sock", transport)
        assert value("add", await client.next(client.start(*request("add", a=1, b=1)))) == 2
        (connection,) = worker._lane._threaded
        assert connection._ends.selector._budget == 250e-6
        await client.close()
    finally:
        await worker.stop(grace=0)


async def test_a_threads_connection_on_pipes_lives_as_long_as_its_socket(
    functions: Any, tmp_path: Path
) -> None:
    lane = await start_lane(tmp_path, "pipes", max_threads=4)
    client = lane.client
    try:
        assert value("add", await client.next(await lane.call("add", a=1, b=2))) == 3
        (connection,) = lane.server._threaded
        assert isinstance(connection._ends, _lane_blocking.BlockingPipes)
        # Shutting the socket down ends the connection (as the NIF does when
        # it lets go of one): the running call is abandoned, the threads end
        # and the worker closes its pipes.
        call = await lane.call("block", tag="shut")
        await eventually(lambda: functions.ran == ["shut"])
        assert client.control is not None
        client.control.shutdown(socket.SHUT_RDWR)
        await asyncio.wait_for(client.closed.wait(), 5)
        await eventually(lambda: not lane.server._threaded)
        assert lane.pool.stuck == 1
        functions.release.set()
        await eventually(lambda: connection.threads == 0 and lane.pool.stuck == 0)
        assert connection._ends_closed
        await no_frame_for(client, call)
        await client.close()
        # Bytes on the socket once the pipes are handed over end the connection too.
        other = await connect_threads(tmp_path / "lane.sock", "pipes")
        assert value("add", await other.next(other.start(*request("add", a=1, b=1)))) == 2
        assert other.control is not None
        other.control.sendall(b"\0\0\0\0")
        await asyncio.wait_for(other.closed.wait(), 5)
        await other.close()
        # The pipes' end ends the socket: the worker shuts it down.
        third = await connect_threads(tmp_path / "lane.sock", "pipes")
        assert third.control is not None
        third.writer.close()
        third.control.settimeout(5)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, third.control.recv, 1) == b""
        await third.close()
        await eventually(lambda: not lane.server._threaded)
    finally:
        functions.release.set()
        await client.close()
        await lane.server.stop(None)


async def test_a_hello_asking_for_threads_on_pipes_is_alone_on_its_socket(
    lane: Lane, tmp_path: Path
) -> None:
    client = lane.client
    assert value("add", await client.next(await lane.call("add", a=1, b=2))) == 3
    # Bytes after the hello on the socket: the client broke the protocol.
    hello = lane_pb2.LaneFrame(hello=lane_pb2.LaneHello(threads=True, pipes=True))
    broken = await LaneClient.connect(tmp_path / "lane.sock")
    broken.writer.write(framed(hello) + framed(start_frame(1, "add", a=1, b=1)))
    await asyncio.wait_for(broken.closed.wait(), 5)
    await broken.close()
    # No threads serve it; the other connection goes on.
    assert len(lane.server._threaded) == 1
    assert value("add", await client.next(await lane.call("add", a=2, b=2))) == 4


async def test_the_stop_wakes_a_thread_writing_to_a_client_that_does_not_read(
    functions: Any, tmp_path: Path, transport: str
) -> None:
    lane = await start_lane(tmp_path, transport, max_threads=2)
    client = lane.client
    try:
        assert value("add", await client.next(await lane.call("add", a=1, b=2))) == 3
        # The client stops reading: its buffers, then the pipe or socket,
        # fill up, and the thread writing an answer waits for room.
        client._reading.cancel()
        (connection,) = lane.server._threaded
        for _ in range(200):
            await lane.call("repeat", text="x", times=64 * 1024)
        await eventually(connection._write_lock.locked)
        await asyncio.sleep(0.05)
        assert connection._write_lock.locked()
        # The stop does not wait for it: it shuts the connection, which wakes it.
        await asyncio.wait_for(lane.server.stop(None), 5)
        await eventually(lambda: connection.threads == 0)
        assert connection._ends_closed and not connection._write_lock.locked()
    finally:
        await client.close()


async def test_threads_that_cannot_serve_the_pipes_let_every_descriptor_go(
    functions: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lane = await start_lane(tmp_path, "pipes", max_threads=2)
    assert value("add", await lane.client.next(await lane.call("add", a=1, b=1))) == 2
    (first,) = lane.server._threaded
    await lane.client.close()
    await eventually(lambda: first._ends_closed)

    def no_room(*args: Any) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_lane, "BlockingPipes", no_room)
    opened = len(os.listdir("/proc/self/fd"))
    try:
        client = await connect_threads(tmp_path / "lane.sock", "pipes")
        # The worker gave up on it: the client sees its pipe end.
        await asyncio.wait_for(client.closed.wait(), 5)
        await client.close()
        assert not lane.server._threaded
        # Neither side holds a descriptor of it any more.
        await eventually(lambda: len(os.listdir("/proc/self/fd")) == opened)
    finally:
        await lane.server.stop(None)


def test_without_the_native_module_the_python_connection_serves() -> None:
    # A worker's package copied where `_lane_core` was not built, or cannot
    # load: the worker imports, and its threads' connections are the Python ones.
    code = (
        "import sys\n"
        "sys.modules['synapse_python._lane_core'] = None\n"
        "from synapse_python import _lane, _lane_threads, _lane_threads_core\n"
        "assert _lane_threads_core.connection() is _lane_threads.ThreadedConnection\n"
        "print(_lane_threads_core.UNAVAILABLE)\n"
    )
    package = str(Path(_lane_threads.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": package}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "_lane_core" in done.stdout
    assert _lane_threads_core.connection() is _lane_threads_core.CoreConnection


async def test_a_connection_that_ended_is_freed(lane: Lane) -> None:
    # Nothing it handed its threads, or its bookkeeping, keeps it alive
    # once its threads are gone.
    assert value("add", await lane.client.next(await lane.call("add", a=1, b=2))) == 3
    (connection,) = lane.server._threaded
    gone = weakref.ref(connection)
    del connection
    await lane.client.close()
    await eventually(lambda: not lane.server._threaded)
    await eventually(lambda: gc.collect() >= 0 and gone() is None)
