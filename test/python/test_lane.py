"""The local lane: a worker's gRPC handlers answering frames on a second Unix socket.

A small lane client speaks the frames of `proto/synapse/v1/lane.proto` to a real
worker; each test checks one of the guarantees the lane keeps from gRPC.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import struct
import threading
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

import synapse_fixtures.agents as fixtures
from conftest import TOKEN
from synapse_python import Worker, _lane
from synapse_python._awaitables import Later
from synapse_python._errors import ERROR_METADATA_KEY as ERROR_KEY
from synapse_python._proto.synapse.v1 import agent_pb2, lane_pb2, probe_pb2
from synapse_python._threads import SyncThreads

HEADER = struct.Struct(">I")
RUN_SYNC = "/synapse.v1.AgentService/RunSync"
RUN = "/synapse.v1.AgentService/Run"
LOAD = "/synapse.v1.AgentService/LoadAgent"
ECHO = "/synapse.v1.ProbeService/Echo"
ECHO_STREAM = "/synapse.v1.ProbeService/EchoStream"


class LaneClient:
    """Frames to and from a worker's lane, sorted by call: on the socket, or
    on the two pipes a hello asking for them brings (`pipes`)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        control: socket.socket | None = None,
    ) -> None:
        self.reader, self.writer = reader, writer
        # On pipes: the socket, which the connection lives as long as, and
        # the transport of the pipe read (the writer's closes the other).
        self.control = control
        self.reading_pipe: asyncio.BaseTransport | None = None
        self.frames: dict[int, asyncio.Queue[lane_pb2.LaneFrame]] = defaultdict(asyncio.Queue)
        self.closed = asyncio.Event()
        self._next = 0
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, path: Path, *, pipes: bool = False, token: str = "", threads: bool = False
    ) -> LaneClient:
        """A client of the lane at `path`; with `pipes` or `threads`, whose
        hello (with `token`, if any) asks for them."""
        if not pipes:
            reader, writer = await asyncio.open_unix_connection(str(path))
            client = cls(reader, writer)
            if threads or token:
                authorization = f"Bearer {token}" if token else ""
                hello = lane_pb2.LaneHello(authorization=authorization, threads=threads)
                client.send(lane_pb2.LaneFrame(call=0, hello=hello))
            return client
        control, to_worker, from_worker = await ask_for_pipes(path, token, threads=threads)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        reading, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_worker, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(to_worker, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        client = cls(reader, writer, control)
        client.reading_pipe = reading
        return client

    async def _read(self) -> None:
        try:
            while True:
                (length,) = HEADER.unpack(await self.reader.readexactly(4))
                frame = lane_pb2.LaneFrame.FromString(await self.reader.readexactly(length))
                self.frames[frame.call].put_nowait(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()

    def send(self, frame: lane_pb2.LaneFrame) -> None:
        data = frame.SerializeToString()
        self.writer.write(HEADER.pack(len(data)) + data)

    def start(
        self, method: str, request: bytes = b"", *, timeout: float = 0, credit: int = 0
    ) -> int:
        self._next += 1
        start = lane_pb2.LaneStart(
            method=method, message=request, timeout_us=int(timeout * 1e6), credit=credit
        )
        self.send(lane_pb2.LaneFrame(call=self._next, start=start))
        return self._next

    async def next(self, call: int) -> lane_pb2.LaneFrame:
        return await asyncio.wait_for(self.frames[call].get(), 10)

    async def unary(self, method: str, request: Any, **options: Any) -> lane_pb2.LaneFrame:
        return await self.next(self.start(method, request.SerializeToString(), **options))

    async def close(self) -> None:
        self.writer.close()
        self._reading.cancel()
        if self.reading_pipe is not None:
            self.reading_pipe.close()
        if self.control is not None:
            self.control.close()
        # The transports let their descriptors go in a callback of their own.
        await asyncio.sleep(0)


async def ask_for_pipes(
    path: Path, token: str = "", *, threads: bool = False
) -> tuple[socket.socket, int, int]:
    """Connects to the lane at `path` and asks for pipes (and `threads`),
    with `token`: the socket, and the two pipes' ends the worker hands over
    (the one it reads, the one it writes). Raises `ConnectionError` if it
    hands none."""
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(str(path))
    authorization = f"Bearer {token}" if token else ""
    hello = lane_pb2.LaneHello(pipes=True, threads=threads, authorization=authorization)
    data = lane_pb2.LaneFrame(hello=hello).SerializeToString()
    control.sendall(HEADER.pack(len(data)) + data)
    control.settimeout(5)
    loop = asyncio.get_running_loop()
    received, fds, _, _ = await loop.run_in_executor(None, socket.recv_fds, control, 1, 4)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        control.close()
        raise ConnectionError(f"no pipes: {received!r}, {len(fds)} descriptors")
    return control, fds[0], fds[1]


TRANSPORTS = ["socket", "pipes"]
"""What a lane connection's frames go on: the tests of both run on each."""


@pytest.fixture(params=TRANSPORTS)
async def lane(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Worker, LaneClient]]:
    worker = Worker()
    await worker.start(f"unix:{tmp_path / 'worker.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    client = await LaneClient.connect(tmp_path / "lane.sock", pipes=request.param == "pipes")
    yield worker, client
    await client.close()
    await worker.stop(grace=0)


async def load(client: LaneClient, agent_id: str, attr: str) -> None:
    request = agent_pb2.LoadAgentRequest(agent_id=agent_id, ref=f"synapse_fixtures.agents:{attr}")
    frame = await client.unary(LOAD, request)
    assert frame.WhichOneof("body") == "message", frame


def status(frame: lane_pb2.LaneFrame) -> tuple[grpc.StatusCode, str, agent_pb2.ErrorDetail]:
    assert frame.WhichOneof("body") == "status", frame
    code = next(code for code in grpc.StatusCode if code.value[0] == frame.status.code)
    return code, frame.status.message, agent_pb2.ErrorDetail.FromString(frame.status.detail)


async def test_a_unary_call_is_one_frame_each_way(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    await load(client, "echo", "echo_agent")
    frame = await client.unary(RUN_SYNC, agent_pb2.RunRequest(agent_id="echo", prompt="hi"))
    assert frame.WhichOneof("body") == "message"
    result = agent_pb2.RunEvent.FromString(frame.message).result
    assert result.text == "success (no tool calls)"
    assert result.usage.requests == 1
    # Nothing else arrives for the call.
    await asyncio.sleep(0.05)
    assert client.frames[1].empty() and client.frames[2].empty()


async def test_calls_interleave_on_one_connection(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    payloads = [f"payload {i}".encode() for i in range(200)]
    calls = [
        client.start(ECHO, probe_pb2.EchoRequest(payload=payload).SerializeToString())
        for payload in payloads
    ]
    for call, payload in zip(calls, payloads, strict=True):
        frame = await client.next(call)
        assert probe_pb2.EchoReply.FromString(frame.message).payload == payload


async def test_errors_carry_the_same_detail_as_grpc(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    request = agent_pb2.LoadAgentRequest(agent_id="broken", ref="synapse_fixtures.nope:agent")
    code, message, detail = status(await client.unary(LOAD, request))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "synapse_fixtures.nope" in message
    assert detail.kind == agent_pb2.ERROR_KIND_LOAD_FAILED
    assert detail.type == "ModuleNotFoundError"


async def test_a_run_fails_in_band_as_on_grpc(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    frame = await client.unary(RUN_SYNC, agent_pb2.RunRequest(agent_id="nobody", prompt="x"))
    assert frame.WhichOneof("body") == "message", frame
    failure = agent_pb2.RunEvent.FromString(frame.message).failure
    assert failure.error.kind == agent_pb2.ERROR_KIND_NOT_FOUND
    assert "nobody" in failure.error.message


async def test_an_unknown_method_is_unimplemented(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    frame = await client.next(client.start("/synapse.v1.Nothing/Here"))
    assert status(frame)[0] is grpc.StatusCode.UNIMPLEMENTED


async def test_the_deadline_cancels_the_run(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    await load(client, "slow", "slow_agent")
    request = agent_pb2.RunRequest(agent_id="slow", prompt="30.31")
    frame = await client.unary(RUN_SYNC, request, timeout=0.3)
    assert status(frame)[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until_cancelled("30.31")


async def test_a_cancel_frame_cancels_the_run(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    await load(client, "slow", "slow_agent")
    request = agent_pb2.RunRequest(agent_id="slow", prompt="30.32")
    call = client.start(RUN_SYNC, request.SerializeToString())
    await asyncio.sleep(0.3)
    client.send(lane_pb2.LaneFrame(call=call, cancel=True))
    await wait_until_cancelled("30.32")
    # A cancelled call gets nothing more.
    await asyncio.sleep(0.1)
    assert client.frames[call].empty()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_lost_connection_cancels_its_calls(tmp_path: Path, transport: str) -> None:
    worker = Worker()
    await worker.start(f"unix:{tmp_path / 'w.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        client = await LaneClient.connect(tmp_path / "lane.sock", pipes=transport == "pipes")
        await load(client, "slow", "slow_agent")
        client.start(
            RUN_SYNC, agent_pb2.RunRequest(agent_id="slow", prompt="30.33").SerializeToString()
        )
        await asyncio.sleep(0.3)
        await client.close()
        await wait_until_cancelled("30.33")
        # The worker still serves new connections.
        again = await LaneClient.connect(tmp_path / "lane.sock")
        frame = await again.unary(ECHO, probe_pb2.EchoRequest(payload=b"x"))
        assert probe_pb2.EchoReply.FromString(frame.message).payload == b"x"
        await again.close()
    finally:
        await worker.stop(grace=0)


async def test_streamed_responses_wait_for_credit(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    request = probe_pb2.EchoStreamRequest(payload=b"p", count=5)
    call = client.start(ECHO_STREAM, request.SerializeToString(), credit=2)
    first = [await client.next(call) for _ in range(2)]
    assert [frame.WhichOneof("body") for frame in first] == ["message", "message"]
    await asyncio.sleep(0.2)
    assert client.frames[call].empty()  # no credit, no response
    client.send(lane_pb2.LaneFrame(call=call, credit=10))
    rest = [await client.next(call) for _ in range(4)]
    assert [frame.WhichOneof("body") for frame in rest] == ["message"] * 3 + ["status"]
    assert rest[-1].status.code == 0


def _start_lookup_run(client: LaneClient) -> int:
    """Starts a Run of `calling_agent` whose model calls the client tool `lookup` once."""
    call = client.start(RUN, credit=100)
    prompt = json.dumps({"calls": [{"name": "lookup", "args": {"id": 7}}]})
    start = agent_pb2.RunRequest(
        agent_id="calling",
        prompt=prompt,
        quiet=True,
        tools=[agent_pb2.ToolDef(name="lookup", parameters_json=b'{"type": "object"}')],
    )
    client.send(
        lane_pb2.LaneFrame(call=call, message=agent_pb2.RunInput(start=start).SerializeToString())
    )
    return call


async def _last_event(client: LaneClient, call: int) -> agent_pb2.RunEvent:
    """The Run's last event, once its status says it ended well."""
    frames = [await asyncio.wait_for(client.next(call), 10)]
    while frames[-1].WhichOneof("body") == "message":
        frames.append(await asyncio.wait_for(client.next(call), 10))
    assert frames[-1].status.code == 0, frames[-1]
    return agent_pb2.RunEvent.FromString(frames[-2].message)


async def test_a_run_whose_client_breaks_off_ends_rather_than_waits(
    lane: tuple[Worker, LaneClient],
) -> None:
    _, client = lane
    await load(client, "calling", "calling_agent")

    # A half-close read with the start, before the run has its tools: a
    # client tool it calls then fails the run, as on gRPC.
    call = _start_lookup_run(client)
    client.send(lane_pb2.LaneFrame(call=call, half_close=True))
    last = await _last_event(client, call)
    assert last.WhichOneof("event") == "failure", last
    assert "half-closed" in last.failure.error.message

    # A tool result nested too deep for Python's JSON parser, or a message
    # that does not parse: the run fails INVALID_ARGUMENT, whatever follows.
    for broken in ("deep", "corrupt"):
        call = _start_lookup_run(client)
        frame = await client.next(call)
        request = agent_pb2.RunEvent.FromString(frame.message).tool_request
        if broken == "deep":
            deep = b"[" * 100_000 + b"]" * 100_000
            result = agent_pb2.ToolResult(request_id=request.request_id, return_json=deep)
            message = agent_pb2.RunInput(tool_result=result).SerializeToString()
        else:
            message = b"\xff\xff\xff"
        client.send(lane_pb2.LaneFrame(call=call, message=message))
        client.send(lane_pb2.LaneFrame(call=call, half_close=True))
        last = await _last_event(client, call)
        assert last.WhichOneof("event") == "failure", last
        assert last.failure.error.kind == agent_pb2.ERROR_KIND_INVALID_ARGUMENT, (broken, last)


async def test_a_run_with_client_tools_over_the_lane(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    await load(client, "calling", "calling_agent")
    call = _start_lookup_run(client)
    frame = await client.next(call)
    event = agent_pb2.RunEvent.FromString(frame.message)
    assert event.WhichOneof("event") == "tool_request"
    assert json.loads(event.tool_request.args_json) == {"id": 7}
    result = agent_pb2.ToolResult(request_id=event.tool_request.request_id, return_json=b'"found"')
    client.send(
        lane_pb2.LaneFrame(
            call=call, message=agent_pb2.RunInput(tool_result=result).SerializeToString()
        )
    )
    client.send(lane_pb2.LaneFrame(call=call, half_close=True))
    last = await _last_event(client, call)
    assert last.WhichOneof("event") == "result"
    assert json.loads(last.result.text) == [{"name": "lookup", "content": "found"}]


async def test_health_checks_over_the_lane(lane: tuple[Worker, LaneClient]) -> None:
    _, client = lane
    frame = await client.unary("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest())
    response = health_pb2.HealthCheckResponse.FromString(frame.message)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_connection_on_pipes_lives_as_long_as_its_socket(tmp_path: Path) -> None:
    worker = Worker()
    await worker.start(f"unix:{tmp_path / 'w.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        client = await LaneClient.connect(tmp_path / "lane.sock", pipes=True)
        await load(client, "slow", "slow_agent")
        # The worker serves the connection on the pipes, not on the socket.
        lane = worker._lane
        assert lane is not None
        transports = [type(connection._transport).__name__ for connection in lane._connections]
        assert sorted(transports) == ["Pipes", "_SelectorSocketTransport"]
        client.start(
            RUN_SYNC, agent_pb2.RunRequest(agent_id="slow", prompt="30.35").SerializeToString()
        )
        await asyncio.sleep(0.3)
        # Shutting the socket down ends the connection (as the NIF does when
        # it lets go of one): the call is cancelled, the worker's pipe closes.
        assert client.control is not None
        client.control.shutdown(socket.SHUT_RDWR)
        await wait_until_cancelled("30.35")
        await asyncio.wait_for(client.closed.wait(), 5)
        await client.close()
        # Bytes on the socket once the pipes are handed over end the connection too.
        other = await LaneClient.connect(tmp_path / "lane.sock", pipes=True)
        assert other.control is not None
        other.control.sendall(b"\0\0\0\0")
        await asyncio.wait_for(other.closed.wait(), 5)
        await other.close()
        # The pipes' end ends the socket: the worker closes it.
        third = await LaneClient.connect(tmp_path / "lane.sock", pipes=True)
        assert third.control is not None
        third.writer.close()
        third.control.settimeout(5)
        assert await asyncio.get_running_loop().run_in_executor(None, third.control.recv, 1) == b""
        await third.close()
        assert not lane._connections
    finally:
        await worker.stop(grace=0)


async def test_a_hello_asking_for_pipes_comes_first(lane: tuple[Worker, LaneClient]) -> None:
    worker, _ = lane
    late = await LaneClient.connect(Path(worker_lane_path(worker)))
    frame = await late.unary(ECHO, probe_pb2.EchoRequest(payload=b"x"))
    assert frame.WhichOneof("body") == "message"
    late.send(lane_pb2.LaneFrame(hello=lane_pb2.LaneHello(pipes=True)))
    await asyncio.wait_for(late.closed.wait(), 5)
    await late.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_over_the_maximum_size_are_refused_both_ways(
    tmp_path: Path, transport: str
) -> None:
    worker = Worker(max_message_bytes=100_000)
    await worker.start(f"unix:{tmp_path / 'w.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        client = await LaneClient.connect(tmp_path / "lane.sock", pipes=transport == "pipes")
        frame = await client.unary(ECHO, probe_pb2.EchoRequest(payload=b"x" * 150_000))
        code, message, _ = status(frame)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Received message larger than max" in message
        request = agent_pb2.LoadAgentRequest(
            agent_id="big", ref="synapse_fixtures.faults:big_agent"
        )
        assert (await client.unary(LOAD, request)).WhichOneof("body") == "message"
        frame = await client.unary(RUN_SYNC, agent_pb2.RunRequest(agent_id="big", prompt="300000"))
        code, message, _ = status(frame)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Sent message larger than max" in message
        # The connection goes on.
        frame = await client.unary(RUN_SYNC, agent_pb2.RunRequest(agent_id="big", prompt="3"))
        assert agent_pb2.RunEvent.FromString(frame.message).result.text == "xxx"
        # A frame far beyond the maximum is not read: the client is broken.
        client.start(ECHO, probe_pb2.EchoRequest(payload=b"x" * 300_000).SerializeToString())
        await asyncio.wait_for(client.closed.wait(), 5)
        await client.close()
    finally:
        await worker.stop(grace=0)


async def test_a_broken_client_is_dropped_and_others_go_on(lane: tuple[Worker, LaneClient]) -> None:
    worker, client = lane
    broken = await LaneClient.connect(Path(worker_lane_path(worker)))
    broken.writer.write(HEADER.pack(3) + b"\xff\xff\xff")
    await asyncio.wait_for(broken.closed.wait(), 5)
    frame = await client.unary(ECHO, probe_pb2.EchoRequest(payload=b"still"))
    assert probe_pb2.EchoReply.FromString(frame.message).payload == b"still"


async def test_a_worker_with_a_token_wants_it_first(tmp_path: Path) -> None:
    worker = Worker(token=TOKEN)
    await worker.start(f"unix:{tmp_path / 'w.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}")
    try:
        refused = await LaneClient.connect(tmp_path / "lane.sock")
        refused.start(ECHO, probe_pb2.EchoRequest(payload=b"x").SerializeToString())
        await asyncio.wait_for(refused.closed.wait(), 5)
        wrong = await LaneClient.connect(tmp_path / "lane.sock")
        wrong.send(lane_pb2.LaneFrame(hello=lane_pb2.LaneHello(authorization="Bearer nope")))
        await asyncio.wait_for(wrong.closed.wait(), 5)
        client = await LaneClient.connect(tmp_path / "lane.sock")
        client.send(lane_pb2.LaneFrame(hello=lane_pb2.LaneHello(authorization=f"Bearer {TOKEN}")))
        frame = await client.unary(ECHO, probe_pb2.EchoRequest(payload=b"ok"))
        assert probe_pb2.EchoReply.FromString(frame.message).payload == b"ok"
        await client.close()
        # Pipes are handed over only for the token: else the socket closes.
        with pytest.raises(ConnectionError):
            await ask_for_pipes(tmp_path / "lane.sock")
        with pytest.raises(ConnectionError):
            await ask_for_pipes(tmp_path / "lane.sock", "nope")
        piped = await LaneClient.connect(tmp_path / "lane.sock", pipes=True, token=TOKEN)
        frame = await piped.unary(ECHO, probe_pb2.EchoRequest(payload=b"piped"))
        assert probe_pb2.EchoReply.FromString(frame.message).payload == b"piped"
        await piped.close()
    finally:
        await worker.stop(grace=0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stopping_ends_calls_in_flight_and_removes_the_socket(
    tmp_path: Path, transport: str
) -> None:
    worker = Worker()
    path = tmp_path / "lane.sock"
    await worker.start(f"unix:{tmp_path / 'w.sock'}", lane=f"unix:{path}")
    client = await LaneClient.connect(path, pipes=transport == "pipes")
    await load(client, "slow", "slow_agent")
    call = client.start(
        RUN_SYNC, agent_pb2.RunRequest(agent_id="slow", prompt="30.34").SerializeToString()
    )
    await asyncio.sleep(0.3)
    stopping = asyncio.create_task(worker.stop(grace=0.5))
    await asyncio.sleep(0.1)
    # During the grace period a new call is refused.
    late = client.start(ECHO, probe_pb2.EchoRequest(payload=b"x").SerializeToString())
    code, message, _ = status(await client.next(late))
    assert code is grpc.StatusCode.UNAVAILABLE
    await stopping
    code, message, _ = status(await client.next(call))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "stopping" in message
    assert not path.exists()
    await client.close()


def worker_lane_path(worker: Worker) -> str:
    lane = worker._lane
    assert lane is not None and lane._path is not None
    return lane._path


async def wait_until_cancelled(prompt: str) -> None:
    async def poll() -> None:
        while prompt not in fixtures.cancelled:  # noqa: ASYNC110 (a fixture's plain list)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5)


class _RecordingTransport(asyncio.Transport):
    """A transport that keeps each write, to see which frames went out together."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[lane_pb2.LaneFrame]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data, frames = bytes(data), []
        while data:
            (length,) = HEADER.unpack_from(data)
            frames.append(lane_pb2.LaneFrame.FromString(data[4 : 4 + length]))
            data = data[4 + length :]
        self.writes.append(frames)

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_a_streams_last_response_and_its_status_go_out_in_one_write() -> None:
    async def two(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(0.01)
        yield b"last"

    method = "/test.S/Two"
    handler = grpc.unary_stream_rpc_method_handler(
        two, request_deserializer=bytes, response_serializer=bytes
    )
    server = _lane.LaneServer({method: handler}, max_message_bytes=1024)
    connection = _lane._Connection(server)
    transport = _RecordingTransport()
    connection.connection_made(transport)
    start = lane_pb2.LaneStart(method=method, credit=10)
    data = lane_pb2.LaneFrame(call=1, start=start).SerializeToString()
    connection.data_received(HEADER.pack(len(data)) + data)
    for _ in range(100):
        if connection.calls:
            await asyncio.sleep(0.01)
    bodies = [[frame.WhichOneof("body") for frame in write] for write in transport.writes]
    assert bodies == [["message"], ["message", "status"]], bodies
    assert transport.writes[1][0].message == b"last"


async def test_calls_answered_at_once_end_in_the_callback_that_reads_them() -> None:
    async def later(request: bytes) -> bytes:
        await asyncio.sleep(0)
        if request == b"refuse later":
            raise _lane.Refused(grpc.StatusCode.NOT_FOUND, "gone", ((ERROR_KEY, b"why"),))
        return request.upper()

    def at_once(request: bytes) -> Any:
        if request == b"refuse":
            raise _lane.Refused(grpc.StatusCode.INVALID_ARGUMENT, "no", ((ERROR_KEY, b"detail"),))
        if request == b"break":
            raise RuntimeError("broken")
        if request == b"grow":
            return b"y" * 17  # over the maximum size
        return later(request) if request.endswith(b"later") else request[::-1]

    method = "/test.S/AtOnce"
    server = _answered_at_once(method, at_once, max_message_bytes=16)
    connection, transport = _connected(server)
    requests = [b"abc", b"refuse", b"break", b"x" * 17, b"later", b"refuse later", b"grow"]
    data = b""
    for call, request in enumerate(requests, 1):
        start = lane_pb2.LaneStart(method=method, message=request, timeout_us=1_000_000)
        frame = lane_pb2.LaneFrame(call=call, start=start).SerializeToString()
        data += HEADER.pack(len(frame)) + frame
    connection.data_received(data)
    # All but two ended in the callback, in one write; those two wait in tasks.
    [answered] = transport.writes
    assert sorted(connection.calls) == [5, 6]
    assert [(f.call, f.WhichOneof("body")) for f in answered] == [
        (1, "message"),
        (2, "status"),
        (3, "status"),
        (4, "status"),
        (7, "status"),
    ]
    assert answered[0].message == b"cba"
    assert (answered[1].status.code, answered[1].status.message, answered[1].status.detail) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "no",
        b"detail",
    )
    assert answered[2].status.code == grpc.StatusCode.UNKNOWN.value[0]
    assert "RuntimeError" in answered[2].status.message
    assert answered[3].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert answered[3].status.message == "Received message larger than max (17 vs. 16)"
    assert answered[4].status.message == "Sent message larger than max (17 vs. 16)"
    for _ in range(100):
        if connection.calls:
            await asyncio.sleep(0.01)
    ended = {frame.call: frame for write in transport.writes[1:] for frame in write}
    assert ended[5].message == b"LATER"
    assert (ended[6].status.code, ended[6].status.message, ended[6].status.detail) == (
        grpc.StatusCode.NOT_FOUND.value[0],
        "gone",
        b"why",
    )


async def test_a_handler_can_take_its_requests_in_the_callback_that_reads_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="synapse_python.lane")
    taken: list[tuple[int, bytes | str]] = []
    release = asyncio.Event()

    def deserialize(data: bytes) -> bytes:
        if data == b"bad":
            raise ValueError("not a request")
        return data

    async def collect(requests: Any, context: Any) -> bytes:
        call = context._id

        def deliver(request: bytes) -> None:
            if request == b"raise":
                raise RuntimeError("deliver broke")
            taken.append((call, request))

        stop = context.hand_requests_to(
            deliver,
            lambda: taken.append((call, "closed")),
            lambda exc: taken.append((call, f"broken: {exc}")),
        )
        await release.wait()
        stop()
        rest = []
        while (request := await context.read()) is not grpc.aio.EOF:
            rest.append(request)
        return b",".join(rest)

    method = "/test.S/Collect"
    handler = grpc.stream_unary_rpc_method_handler(
        collect, request_deserializer=deserialize, response_serializer=bytes
    )
    server = _lane.LaneServer({method: handler}, max_message_bytes=1024)
    connection, transport = _connected(server)

    def frames(*bodies: tuple[int, str, Any]) -> bytes:
        data = b""
        for call, kind, value in bodies:
            frame = lane_pb2.LaneFrame(call=call, **{kind: value}).SerializeToString()
            data += HEADER.pack(len(frame)) + frame
        return data

    def start(call: int) -> tuple[int, str, Any]:
        return (call, "start", lane_pb2.LaneStart(method=method, credit=1))

    # Requests read before the handler asks are handed over first, in order.
    connection.data_received(frames(start(1), (1, "message", b"a"), (1, "message", b"b")))
    connection.data_received(frames(start(2), start(3)))
    await asyncio.sleep(0)  # the handlers' tasks run up to their wait
    assert taken == [(1, b"a"), (1, b"b")]
    # Later ones in the callback that reads them, with no task in between.
    connection.data_received(frames((1, "message", b"c"), (3, "message", b"e")))
    assert taken[2:] == [(1, b"c"), (3, b"e")]
    # The half-close too; `read` then stays at EOF.
    connection.data_received(frames((3, "half_close", True)))
    assert taken[4:] == [(3, "closed")]
    # A request that does not deserialize, or that `deliver` raises on, stops
    # the handing over (logged), and the handler is told; the connection and
    # the other calls go on, and what comes next waits for `read`.
    connection.data_received(frames((1, "message", b"bad"), (1, "message", b"f")))
    connection.data_received(frames((2, "message", b"raise"), (2, "message", b"g")))
    assert taken[5:] == [(1, "broken: not a request"), (2, "broken: deliver broke")]
    assert "a request that does not deserialize: not a request" in caplog.text
    assert "handing over a request or the half-close failed" in caplog.text
    assert "deliver broke" in caplog.text
    # Once the handler stops taking them, requests wait for `read`.
    release.set()
    await asyncio.sleep(0)
    connection.data_received(
        frames(
            (1, "message", b"h"),
            (1, "half_close", True),
            (2, "message", b"i"),
            (2, "half_close", True),
        )
    )
    for _ in range(100):
        if connection.calls:
            await asyncio.sleep(0.01)
    ended = {
        frame.call: frame
        for write in transport.writes
        for frame in write
        if frame.WhichOneof("body") == "message"
    }
    assert {call: frame.message for call, frame in ended.items()} == {
        1: b"f,h",
        2: b"g,i",
        3: b"",
    }
    assert len(taken) == 7  # nothing handed over after the handler stopped it
    assert not connection.calls


async def test_a_call_whose_answer_is_later_ends_once_whatever_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="synapse_python.lane")
    futures: dict[bytes, _Work] = {}

    def at_once(request: bytes) -> _Work:
        futures[request] = _Work()
        return futures[request]

    method = "/test.S/Later"
    server = _answered_at_once(method, at_once, max_message_bytes=1024)
    connection, transport = _connected(server)

    def start(call: int, request: bytes, timeout_us: int = 10_000_000) -> None:
        start = lane_pb2.LaneStart(method=method, message=request, timeout_us=timeout_us)
        frame = lane_pb2.LaneFrame(call=call, start=start).SerializeToString()
        connection.data_received(HEADER.pack(len(frame)) + frame)

    def cancel(call: int) -> None:
        frame = lane_pb2.LaneFrame(call=call, cancel=True).SerializeToString()
        connection.data_received(HEADER.pack(len(frame)) + frame)

    start(1, b"answered")
    start(2, b"refused")
    start(3, b"cancelled")
    start(4, b"late", timeout_us=20_000)
    start(5, b"awaits")
    assert sorted(connection.calls) == [1, 2, 3, 4, 5]
    futures[b"answered"].end(b"yes")
    futures[b"refused"].end(failure=_lane.Refused(grpc.StatusCode.ABORTED, "no"))
    cancel(3)
    await asyncio.sleep(0.05)  # call 4's deadline passes

    async def later() -> bytes:
        return b"awaited"

    futures[b"awaits"].end(later())  # an awaitable: the call goes on in a task
    for _ in range(100):
        if connection.calls:
            await asyncio.sleep(0.01)
    assert not connection.calls
    ends: dict[int, list[Any]] = defaultdict(list)
    for write in transport.writes:
        for frame in write:
            ends[frame.call].append(frame)
    assert sorted(ends) == [1, 2, 4, 5]  # a cancelled call expects nothing
    assert all(len(frames) == 1 for frames in ends.values()), ends
    assert ends[1][0].message == b"yes"
    assert (ends[2][0].status.code, ends[2][0].status.message) == (
        grpc.StatusCode.ABORTED.value[0],
        "no",
    )
    assert futures[b"cancelled"].cancelled
    assert ends[4][0].status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert futures[b"late"].cancelled  # its deadline abandoned the work
    assert not futures[b"answered"].cancelled
    assert connection.deadlines._ticks == {}  # every call ended: no timer left
    # Each abandoned call is said to be, as a handler's cancelled task is.
    assert [record.getMessage() for record in caplog.records] == [
        "/test.S/Later cancelled: the client cancelled or left",
        "/test.S/Later cancelled: Deadline Exceeded",
    ]
    assert ends[5][0].message == b"awaited"


async def test_a_call_whose_answer_is_later_ends_with_its_connection_or_the_worker() -> None:
    futures: list[_Work] = []

    def at_once(request: bytes) -> _Work:
        futures.append(_Work())
        return futures[-1]

    method = "/test.S/Later"
    server = _answered_at_once(method, at_once, max_message_bytes=1024)
    connections, transports = zip(*(_connected(server) for _ in range(2)), strict=True)
    for connection in connections:
        frame = lane_pb2.LaneFrame(call=1, start=lane_pb2.LaneStart(method=method))
        data = frame.SerializeToString()
        connection.data_received(HEADER.pack(len(data)) + data)
    # The first connection breaks: its call's work is abandoned, nothing is sent.
    connections[0].connection_lost(None)
    await asyncio.sleep(0)
    assert futures[0].cancelled and not connections[0].calls
    # The worker stops: the call still waiting after the grace ends UNAVAILABLE.
    server._server = _Closable()  # type: ignore[assignment]  # as if it listened
    await server.stop(0.05)
    assert futures[1].cancelled and not connections[1].calls
    [[status]] = transports[1].writes
    assert (status.call, status.status.code) == (1, grpc.StatusCode.UNAVAILABLE.value[0])
    assert transports[0].writes == []


async def test_a_call_in_a_thread_leaves_no_garbage_cycle_behind() -> None:
    # A call's `_Pending` and the `Later` holding its callbacks refer to each
    # other while it is in flight; however it ends, both must then go with
    # their reference counts, not wait in a cycle for the garbage collector
    # (which had run every few hundred calls in a thread, for a tenth of the
    # worker's CPU).
    threads = SyncThreads()
    release = threading.Event()

    def work(request: bytes) -> bytes:
        if request == b"slow":
            release.wait(10)
        return request.upper()

    method = "/test.S/Thread"
    server = _answered_at_once(
        method, lambda request: threads.start(work, request), max_message_bytes=1024
    )
    connection, transport = _connected(server)

    def send(frame: lane_pb2.LaneFrame) -> None:
        data = frame.SerializeToString()
        connection.data_received(HEADER.pack(len(data)) + data)

    def start(call: int, request: bytes, timeout_us: int = 10_000_000) -> weakref.ref[Any]:
        send(
            lane_pb2.LaneFrame(
                call=call,
                start=lane_pb2.LaneStart(method=method, message=request, timeout_us=timeout_us),
            )
        )
        return weakref.ref(connection.calls[call])

    gc.collect()
    gc.disable()
    try:
        answered = start(1, b"quick")
        cancelled = start(2, b"slow")
        expired = start(3, b"slow", timeout_us=20_000)
        send(lane_pb2.LaneFrame(call=2, cancel=True))
        for _ in range(200):
            if 1 not in connection.calls and 3 not in connection.calls:
                break
            await asyncio.sleep(0.005)
        release.set()
        for _ in range(200):
            if threads.stuck == 0:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the threads' outcomes, handed back (or dropped)
        assert not connection.calls
        assert [ref() for ref in (answered, cancelled, expired)] == [None, None, None]
    finally:
        gc.enable()
    ends = [
        (frame.call, frame.message, frame.status.code)
        for write in transport.writes
        for frame in write
    ]
    assert ends == [(1, b"QUICK", 0), (3, b"", grpc.StatusCode.DEADLINE_EXCEEDED.value[0])]


class _Work(Later):
    """Work a call answered at once hands back, ended by the test (or, when
    `finished`, already over: its `done` is called as it is given)."""

    def __init__(self, finished: tuple[Any, BaseException | None] | None = None) -> None:
        self.done: Callable[[Any, BaseException | None], None] | None = None
        self.early: Callable[[Any, BaseException | None], bool] | None = None
        self.cancelled = False
        # Whether `early` took the outcome in full (then `end` calls no `done`).
        self.taken = False
        self._finished = finished

    def then_in_thread(self, early: Callable[[Any, BaseException | None], bool]) -> None:
        self.early = early

    def end_in_thread(self, result: Any = None, failure: BaseException | None = None) -> None:
        """Hands the outcome over early, from a thread of its own, as a worker thread does."""
        early = self.early
        assert early is not None

        def hand_over() -> None:
            self.taken = early(result, failure)

        thread = threading.Thread(target=hand_over)
        thread.start()
        thread.join()

    def then(self, done: Callable[[Any, BaseException | None], None]) -> None:
        assert self.done is None
        self.done = done
        if self._finished is not None:
            done(*self._finished)

    def cancel(self) -> None:
        self.cancelled = True

    def end(self, result: Any = None, failure: BaseException | None = None) -> None:
        """Hands the outcome to `done`, on the loop, unless `early` took it."""
        assert self.done is not None and not self.cancelled
        if not self.taken:
            self.done(result, failure)


class _EarlyLane:
    """A connection on a real socket pair, of one method answered at once with
    a `_Work` per request (`works`), and the client's end of it. The
    connection's send buffer is small: a large answer is not written at once."""

    METHOD = "/test.S/Early"

    def __init__(self) -> None:
        self.works: dict[bytes, _Work] = {}
        self.server = _answered_at_once(self.METHOD, self._at_once, max_message_bytes=1 << 20)
        self.connection = _lane._Connection(self.server)

    def _at_once(self, request: bytes) -> _Work:
        self.works[request] = _Work()
        return self.works[request]

    async def connect(self) -> None:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        self.send_buffer = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: self.connection, ours)
        self.reader, self.writer = await asyncio.open_connection(sock=theirs)

    def start(self, call: int, request: bytes, timeout_us: int = 10_000_000) -> None:
        start = lane_pb2.LaneStart(method=self.METHOD, message=request, timeout_us=timeout_us)
        frame = lane_pb2.LaneFrame(call=call, start=start).SerializeToString()
        self.writer.write(HEADER.pack(len(frame)) + frame)

    async def started(self, call: int) -> None:
        for _ in range(500):
            if call in self.connection.calls:
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"call {call} did not start")

    async def next_frame(self) -> lane_pb2.LaneFrame:
        (length,) = HEADER.unpack(await asyncio.wait_for(self.reader.readexactly(4), 10))
        return lane_pb2.LaneFrame.FromString(await self.reader.readexactly(length))


async def test_a_call_whose_later_answers_in_its_thread_is_answered_from_there() -> None:
    lane = _EarlyLane()
    await lane.connect()
    works, connection, start, started = lane.works, lane.connection, lane.start, lane.started
    next_frame = lane.next_frame

    # The answer goes out from the thread, which takes the outcome in full:
    # the loop is not woken for it (no `done`); what is left of the call
    # (its entry) goes when the loop next reads.
    start(1, b"early")
    await started(1)
    await asyncio.to_thread(works[b"early"].end_in_thread, b"yes")
    assert works[b"early"].taken
    frame = await next_frame()
    assert (frame.call, frame.message) == (1, b"yes")
    assert list(connection.answered_in_thread) == [connection.calls[1]]

    # A call over before its thread answers (its deadline passed) ends once,
    # with its status; what the thread has is dropped.
    start(2, b"late", timeout_us=20_000)
    frame = await next_frame()
    assert 1 not in connection.calls and not connection.answered_in_thread
    assert (frame.call, frame.status.code) == (2, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert works[b"late"].cancelled
    await asyncio.to_thread(works[b"late"].end_in_thread, b"too late")
    assert not works[b"late"].taken

    # A failure, or an awaitable, is left to the loop, which answers as before.
    start(3, b"refused")
    await started(3)
    refused = _lane.Refused(grpc.StatusCode.ABORTED, "no")
    await asyncio.to_thread(works[b"refused"].end_in_thread, None, refused)
    works[b"refused"].end(failure=refused)
    frame = await next_frame()
    assert (frame.call, frame.status.code) == (3, grpc.StatusCode.ABORTED.value[0])

    # With other calls in flight, the loop answers: it writes the answers of
    # the calls that end together in one write.
    start(4, b"one")
    start(5, b"two")
    await started(5)
    await asyncio.to_thread(works[b"one"].end_in_thread, b"1")
    assert not connection.calls[4]._answered
    works[b"one"].end(b"1")
    frame = await next_frame()
    assert (frame.call, frame.message) == (4, b"1")
    await asyncio.to_thread(works[b"two"].end_in_thread, b"2")  # alone now
    frame = await next_frame()
    assert (frame.call, frame.message) == (5, b"2")
    works[b"two"].end(b"2")

    # A frame larger than the socket takes at once: the thread writes what it
    # takes, the loop the rest; until the client has read it, later answers
    # wait for the loop, after it.
    big = b"x" * 600_000
    assert len(big) > lane.send_buffer
    start(6, b"big")
    await started(6)
    await asyncio.to_thread(works[b"big"].end_in_thread, big)
    assert connection.calls[6]._answered
    works[b"big"].end(big)
    start(7, b"after")
    await started(7)
    await asyncio.to_thread(works[b"after"].end_in_thread, b"after")
    assert not connection.calls[7]._answered
    works[b"after"].end(b"after")
    frames = [await next_frame(), await next_frame()]
    assert [(frame.call, len(frame.message)) for frame in frames] == [(6, len(big)), (7, 5)]
    assert frames[0].message == big

    # Nothing more: one answer per call.
    assert not connection.calls
    lane.writer.close()
    await lane.writer.wait_closed()
    with pytest.raises(asyncio.IncompleteReadError):
        await next_frame()


async def test_a_call_answered_in_its_thread_leaves_at_its_deadline_when_nothing_is_read() -> None:
    lane = _EarlyLane()
    await lane.connect()
    lane.start(1, b"quick", timeout_us=30_000)
    await lane.started(1)
    await asyncio.to_thread(lane.works[b"quick"].end_in_thread, b"done")
    frame = await lane.next_frame()
    assert (frame.call, frame.message) == (1, b"done")
    assert 1 in lane.connection.calls

    # The client sends nothing more: the call's deadline clears what is left
    # of it, with no status (it was answered).
    for _ in range(200):
        if not lane.connection.calls:
            break
        await asyncio.sleep(0.005)
    assert not lane.connection.calls
    assert not lane.connection.deadlines._ticks
    assert not lane.works[b"quick"].cancelled
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lane.reader.readexactly(1), 0.1)


async def test_the_workers_stop_does_not_wait_for_a_call_its_thread_answered() -> None:
    lane = _EarlyLane()
    await lane.connect()
    lane.start(1, b"quick")
    await lane.started(1)
    await asyncio.to_thread(lane.works[b"quick"].end_in_thread, b"done")
    frame = await lane.next_frame()
    assert (frame.call, frame.message) == (1, b"done")
    assert 1 in lane.connection.calls  # until the loop's next read

    # Its grace is for calls still at work: an answered one has none left.
    lane.server._server = _Closable()
    await asyncio.wait_for(lane.server.stop(30), 5)
    assert not lane.connection.calls
    with pytest.raises(asyncio.IncompleteReadError):
        await lane.next_frame()  # one answer: no status after it


async def test_a_threads_answer_cut_short_is_finished_before_its_connection_closes() -> None:
    big = b"x" * 600_000

    async def cut_short(lane: _EarlyLane) -> None:
        """Call 1's thread writes part of its answer; the rest waits for the
        loop, which has not run since (the thread ran on it here), and the
        call is answered: all that is left of it is its entry, which the
        loop clears when it next reads; nothing keeps the connection open."""
        await lane.connect()
        lane.start(1, b"big")
        await lane.started(1)
        lane.works[b"big"].end_in_thread(big)
        assert lane.works[b"big"].taken
        assert lane.connection._rest is not None
        assert list(lane.connection.answered_in_thread) == [lane.connection.calls[1]]

    # The worker stops: with no call in flight it closes the connection.
    lane = _EarlyLane()
    await cut_short(lane)
    lane.server._server = _Closable()
    await lane.server.stop(0)
    frame = await lane.next_frame()
    assert (frame.call, frame.message) == (1, big)
    assert not lane.connection.calls
    with pytest.raises(asyncio.IncompleteReadError):
        await lane.next_frame()  # one answer: no status after it

    # The client sends no more: the transport closes itself after telling the
    # connection (as asyncio's does when `eof_received` returns a false value).
    lane = _EarlyLane()
    await cut_short(lane)
    transport = lane.connection._transport
    assert transport is not None
    assert not lane.connection.eof_received()
    transport.close()
    frame = await lane.next_frame()
    assert (frame.call, frame.message) == (1, big)


async def test_a_thread_writes_only_when_the_loop_left_nothing_unsent() -> None:
    server = _answered_at_once("/test.S/M", lambda request: request, max_message_bytes=1 << 20)
    connection = _lane._Connection(server)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, ours)
    transport = connection._transport
    assert transport is not None
    received = bytearray()

    def frame(call: int, size: int) -> bytes:
        data = lane_pb2.LaneFrame(call=call, message=b"x" * size).SerializeToString()
        return HEADER.pack(len(data)) + data

    def thread_writes(data: bytes) -> bool:
        with connection.write_lock:
            return connection.write_from_thread(data)

    def read(size: int) -> None:
        """What the client reads, blocking, until it has `size` bytes more."""
        theirs.settimeout(10)
        wanted = len(received) + size
        while len(received) < wanted:
            received.extend(theirs.recv(wanted - len(received)))

    def calls() -> list[tuple[int, int]]:
        frames, data = [], bytes(received)
        while data:
            (length,) = HEADER.unpack_from(data)
            one = lane_pb2.LaneFrame.FromString(data[4 : 4 + length])
            frames.append((one.call, len(one.message)))
            data = data[4 + length :]
        return frames

    assert thread_writes(frame(1, 10))
    # The loop's write leaves bytes in the transport; the client then reads
    # what the socket holds, the loop not having run since: the socket has
    # room, the transport still has bytes to send. A thread does not write
    # before them, even when, from its thread, the transport's buffer looks
    # empty (Python 3.12's transports take a chunk out of it while the
    # socket sends it).
    connection._write(frame(2, 600_000))
    unsent = transport.get_write_buffer_size()
    assert unsent > 0
    read(len(frame(1, 10)) + len(frame(2, 600_000)) - unsent)
    transport.get_write_buffer_size = lambda: 0  # type: ignore[method-assign]
    assert not thread_writes(frame(3, 10))
    del transport.get_write_buffer_size
    await asyncio.to_thread(read, unsent)
    # Once the loop's next write leaves nothing unsent, threads write again.
    connection._write(frame(4, 10))
    assert thread_writes(frame(5, 10))
    await asyncio.to_thread(read, len(frame(4, 10)) + len(frame(5, 10)))
    assert calls() == [(1, 10), (2, 600_000), (4, 10), (5, 10)]
    connection.close()
    theirs.close()


async def test_a_call_whose_later_is_over_already_ends_at_once() -> None:
    def at_once(request: bytes) -> _Work:
        if request == b"fails":
            return _Work(finished=(None, _lane.Refused(grpc.StatusCode.ABORTED, "no")))
        return _Work(finished=(request.upper(), None))

    method = "/test.S/Over"
    server = _answered_at_once(method, at_once, max_message_bytes=1024)
    connection, transport = _connected(server)
    for call, request in ((1, b"yes"), (2, b"fails")):
        start = lane_pb2.LaneStart(method=method, message=request, timeout_us=10_000_000)
        frame = lane_pb2.LaneFrame(call=call, start=start).SerializeToString()
        connection.data_received(HEADER.pack(len(frame)) + frame)
    assert connection.calls == {}
    assert connection.deadlines._ticks == {}
    [[answered], [refused]] = transport.writes
    assert (answered.call, answered.message) == (1, b"YES")
    assert (refused.call, refused.status.code) == (2, grpc.StatusCode.ABORTED.value[0])


async def test_deadlines_share_a_timer_per_tick_and_never_expire_a_call_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    deadlines = _lane._Deadlines(loop)
    expired: list[tuple[int, float]] = []

    def expiring(call: int) -> Callable[[], None]:
        return lambda: expired.append((call, loop.time()))

    def broken() -> None:
        raise RuntimeError("a broken expiry")

    deadline = loop.time() + 0.02
    deadlines.arm(deadline, 0, broken)  # logged; the others of its tick still expire
    ticks = {call: deadlines.arm(deadline, call, expiring(call)) for call in (1, 2, 3)}
    ticks[4] = deadlines.arm(deadline + 0.05, 4, expiring(4))
    assert len(deadlines._ticks) == 2  # one timer for 1, 2 and 3, one for 4
    fourth_timer, _ = deadlines._ticks[ticks[4]]
    deadlines.disarm(ticks[2], 2)
    deadlines.disarm(ticks[4], 4)  # the last of its tick: its timer is cancelled
    assert fourth_timer.cancelled()
    [(_, calls)] = deadlines._ticks.values()
    assert sorted(calls) == [0, 1, 3]
    await asyncio.sleep(0.1)
    assert sorted(call for call, _ in expired) == [1, 3]
    assert all(at >= deadline for _, at in expired)
    assert "expiring call 0 failed" in caplog.text
    assert deadlines._ticks == {}
    deadlines.disarm(ticks[1], 1)  # after it expired: nothing to do


class _Closable:
    """Stands for the listening server `LaneServer.stop` closes."""

    def close(self) -> None:
        pass


def _answered_at_once(method: str, at_once: _lane.AtOnce, *, max_message_bytes: int) -> Any:
    """A lane server of one unary method, answered at once by `at_once`."""

    async def behaviour(request: bytes, context: Any) -> bytes:
        raise AssertionError("the lane answers with at_once")

    handler = grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=bytes, response_serializer=bytes
    )
    _lane.answer_at_once(behaviour, at_once)
    return _lane.LaneServer({method: handler}, max_message_bytes=max_message_bytes)


def _connected(server: Any) -> tuple[Any, _RecordingTransport]:
    """A connection to `server`, writing to a recording transport."""
    connection = _lane._Connection(server)
    transport = _RecordingTransport()
    connection.connection_made(transport)
    return connection, transport
