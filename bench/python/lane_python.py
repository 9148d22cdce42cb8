"""The worker's Python side of a Bridge call on the lane, with no BEAM.

    PYTHONPATH=priv/python:bench/python python bench/python/lane_python.py \\
        --how on_loop|thread|threads [--batch 16] [--batches 1000] [--rounds 15]

Generates the bridge of `lane_bench.add` (with `"on_loop": true`, or as a sync
function runs by default: in a worker thread) into a temporary directory,
serves it on a lane connection whose transport counts what it is asked to
write, and feeds that connection `--batch` calls per read, as a worker reads
them from the BEAM under load. For each of `--rounds` rounds of `--batches`
reads it takes the CPU time of the process (its threads included), and
answers one JSON line:

* `cpu_us_per_call`: the median over rounds, and `cpu_us_per_call_min`;
* `python_calls_per_call`: Python function calls per call on the event
  loop's thread (`cProfile`, one more round). Unlike time, this does not
  move with the machine's load: it is the figure to compare two versions of
  the worker's code on a noisy machine.

No socket, no system call per frame: what it measures is the lane's and the
Bridge's own Python, the floor under a call's cost in the worker.

`--how threads` is the path a generated client takes by default: the
connection the worker's threads read themselves (`_lane_threads`), on its
two pipes. A process of its own (forked) plays the client: it writes
`--batch` calls at once and reads their answers before it writes the next.
The CPU time is the serving process's, taken with the connection's busy
wait off, so that it counts the work of the calls and their system calls,
not polling; `python_calls_per_call` counts the calls the connection's
threads make (a profile function on every thread).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import json
import multiprocessing
import os
import pstats
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from synapse_python import _lane
from synapse_python._bridge import _generate
from synapse_python._proto.synapse.v1 import lane_pb2
from synapse_python._threads import SyncThreads

_HEADER = struct.Struct(">I")


class _Answers(asyncio.Transport):
    """A transport that counts the frames it is asked to write, and says when
    a number of them has come."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self._expected = 0
        self._done: asyncio.Future[None] | None = None

    def expect(self, count: int) -> asyncio.Future[None]:
        self._expected = self.frames + count
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view, offset = memoryview(data), 0
        while offset < len(view):
            (length,) = _HEADER.unpack_from(view, offset)
            offset += 4 + length
            self.frames += 1
        if self._done is not None and self.frames >= self._expected:
            self._done.set_result(None)
            self._done = None

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0  # everything is taken at once, as by a socket that keeps up


def _bridge(how: str, directory: Path) -> Any:
    """The bridge service of `lane_bench.add`, generated into `directory` and loaded."""
    config = directory / "bridge.json"
    options = {"on_loop": True} if how == "on_loop" else {}
    config.write_text(json.dumps({"module": "lane_bench", "functions": {"add": options}}))
    generated = _generate.generate(config=config)
    written = _generate.write(directory, generated.files)
    [server] = [path for path in written if path.suffix == ".py"]
    sys.path.insert(0, str(directory))
    return importlib.import_module(server.stem).SERVICE


def _served(how: str) -> tuple[_lane.LaneServer, str, bytes]:
    """A lane server of `lane_bench.add`'s bridge (see `_bridge`; busy wait
    off, the server's default), its method and a request of it."""
    with tempfile.TemporaryDirectory() as directory:
        service = _bridge(how, Path(directory))
    _, table = service.handlers(SyncThreads())
    [method] = table
    function = service.ir.functions[0]
    request = service._codec.message_class(function.request)(a=20, b=22).SerializeToString()
    return _lane.LaneServer(table, max_message_bytes=4 << 20), method, request


def _starts(method: str, request: bytes, first: int, count: int) -> bytes:
    """The framed starts of calls `first` to `first + count - 1`, as one read."""
    frames = []
    for call in range(first, first + count):
        start = lane_pb2.LaneStart(method=method, message=request, timeout_us=10_000_000)
        frame = lane_pb2.LaneFrame(call=call, start=start).SerializeToString()
        frames.append(_HEADER.pack(len(frame)) + frame)
    return b"".join(frames)


async def _measure(how: str, batch: int, batches: int, rounds: int) -> dict[str, Any]:
    server, method, request = _served(how)
    connection = _lane._Connection(server)
    answers = _Answers()
    connection.connection_made(answers)
    next_call = 1

    def reads(count: int) -> list[bytes]:
        nonlocal next_call
        made = []
        for _ in range(count):
            made.append(_starts(method, request, next_call, batch))
            next_call += batch
        return made

    async def serve(data: list[bytes]) -> None:
        for read in data:
            answered = answers.expect(batch)
            connection.data_received(read)
            await answered

    await serve(reads(batches // 2))  # warm-up
    per_call = []
    for _ in range(rounds):
        data = reads(batches)
        started = time.process_time()
        await serve(data)
        per_call.append((time.process_time() - started) * 1e6 / (batches * batch))
    data = reads(batches)
    profile = cProfile.Profile()
    profile.enable()
    await serve(data)
    profile.disable()
    calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    per_call.sort()
    return {
        "how": how,
        "batch": batch,
        "cpu_us_per_call": round(per_call[len(per_call) // 2], 2),
        "cpu_us_per_call_min": round(per_call[0], 2),
        "python_calls_per_call": round(calls / (batches * batch), 1),
    }


async def _measure_threads(batch: int, batches: int, rounds: int) -> dict[str, Any]:
    server, method, request = _served("threads")
    per_call = []
    for round_ in range(rounds + 2):  # a warm-up, the rounds, one profiled
        profiled = round_ == rounds + 1
        counted = [0]

        def count(_frame: Any, event: str, _arg: Any, counted: list[int] = counted) -> None:
            if event == "call":
                counted[0] += 1

        if profiled:
            threading.setprofile(count)
        started = time.process_time()
        await _serve_threads(server, method, request, batch, batches)
        spent = time.process_time() - started
        threading.setprofile(None)  # type: ignore[arg-type]
        if profiled:
            calls = counted[0]
        elif round_ > 0:
            per_call.append(spent * 1e6 / (batches * batch))
    per_call.sort()
    return {
        "how": "threads",
        "batch": batch,
        "cpu_us_per_call": round(per_call[len(per_call) // 2], 2),
        "cpu_us_per_call_min": round(per_call[0], 2),
        "python_calls_per_call": round(calls / (batches * batch), 1),
    }


async def _serve_threads(
    server: _lane.LaneServer, method: str, request: bytes, batch: int, batches: int
) -> None:
    """One connection served by threads until its client has had its calls
    answered and closed it."""
    to_worker, from_client = os.pipe()
    to_client, from_worker = os.pipe()
    ours, theirs = socket.socketpair()
    client = multiprocessing.get_context("fork").Process(
        target=_client, args=(from_client, to_client, method, request, batch, batches)
    )
    client.start()
    os.close(from_client)
    os.close(to_client)
    theirs.close()
    server.hand_over(ours, b"", (to_worker, from_worker))
    [connection] = server._threaded
    # Closed once the client has closed its pipe (on the loop, by a thread).
    closed = asyncio.Event()
    discard = connection._on_closed

    def on_closed(gone: Any) -> None:
        discard(gone)
        closed.set()

    connection._on_closed = on_closed
    await closed.wait()
    client.join()
    assert client.exitcode == 0, client.exitcode
    assert connection._ends_closed


def _client(writes: int, reads: int, method: str, request: bytes, batch: int, batches: int) -> None:
    """The client's process: `batches` times `batch` calls, each written at
    once and answered before the next; then it closes its pipe."""
    buffer = bytearray()
    for first in range(1, batches * batch, batch):
        os.write(writes, _starts(method, request, first, batch))
        answered = 0
        while answered < batch:
            data = os.read(reads, 1 << 16)
            if not data:
                os._exit(1)  # the worker ended the connection
            buffer += data
            while len(buffer) >= 4:
                (length,) = _HEADER.unpack_from(buffer, 0)
                if len(buffer) < 4 + length:
                    break
                if (
                    lane_pb2.LaneFrame.FromString(bytes(buffer[4 : 4 + length])).WhichOneof("body")
                    != "message"
                ):
                    os._exit(2)  # a call not answered with its response
                del buffer[: 4 + length]
                answered += 1
    os.close(writes)
    os._exit(0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--how", choices=["on_loop", "thread", "threads"], required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.how == "threads":
        result = asyncio.run(_measure_threads(args.batch, args.batches, args.rounds))
    else:
        result = asyncio.run(_measure(args.how, args.batch, args.batches, args.rounds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
