"""A lane connection on two pipes (`proto/synapse/v1/lane.proto`, "Pipes").

A client may ask, in the `hello` it sends on the lane's socket, for the
connection's frames to go on pipes: the worker makes two, hands the client
the write end of the one it reads and the read end of the one it writes (one
byte on the socket, the descriptors as SCM_RIGHTS), and serves the same
`_lane._Connection` on its own ends (a connection whose hello asks for
threads as well is served by those threads instead: `_lane_blocking`). A
pipe's read and write cost each side less than a Unix socket's for the
same bytes (`bench/socket_readers.exs`), and a call on the lane is mostly
those.

asyncio serves a pipe with two transports, one each way; `Pipes` joins them
into the one transport a `_Connection` is written for. The socket stays
open, untouched, as long as the connection: the client ends the connection
by shutting it down (as it would a socket connection), and the worker's
end closes it too.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any


def hand_over(sock: Any) -> tuple[int, int]:
    """Makes the connection's two pipes and sends the client its ends on
    `sock` (the connection's socket, which asyncio's transport holds): the
    worker's ends, the one to read and the one to write. Raises `OSError`
    when the socket does not take them at once."""
    reads, to_worker = os.pipe()  # non-inheritable, as every descriptor Python makes
    from_worker, writes = os.pipe()
    try:
        # A socket object of its own for `sendmsg`, which the transport's
        # socket does not offer; its descriptor is a duplicate.
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:
            raw.setblocking(False)
            socket.send_fds(raw, [b"\0"], [to_worker, from_worker])
    except BaseException:
        os.close(reads)
        os.close(writes)
        raise
    finally:
        # The client holds them now (or nobody does): a pipe ends for its
        # reader once every write end is closed, so the worker keeps none.
        os.close(to_worker)
        os.close(from_worker)
    return reads, writes


async def serve(reads: int, writes: int, protocol: asyncio.Protocol) -> Pipes:
    """Serves `protocol` on the pipes `reads` and `writes` (which it then
    owns): its `connection_made` gets their `Pipes`."""
    loop = asyncio.get_running_loop()
    reading_file = os.fdopen(reads, "rb", buffering=0)
    try:
        writing_file = os.fdopen(writes, "wb", buffering=0)
    except BaseException:
        reading_file.close()
        os.close(writes)
        raise
    pipes = Pipes(protocol)
    try:
        # Writing first: the protocol may answer the first bytes it reads.
        writing, _ = await loop.connect_write_pipe(lambda: _Writing(pipes), writing_file)
        pipes.writing = writing
        # Its protocol's `connection_made` sets `pipes.reading`.
        await loop.connect_read_pipe(lambda: _Reading(pipes), reading_file)
    except BaseException:
        pipes.abort()
        reading_file.close()
        writing_file.close()
        raise
    return pipes


class Pipes(asyncio.Transport):
    """The two pipe transports of a connection, as the one transport of
    `protocol`: writes go to one, what the other reads goes to `protocol`;
    `protocol` hears of the connection's loss once, whichever side it came
    from, and the other side closes with it."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self.reading: asyncio.ReadTransport | None = None
        self.writing: asyncio.WriteTransport | None = None
        self._made = False
        self._lost = False
        self.on_lost: Callable[[], None] | None = None

    # ---- what the protocol calls ----

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.writing is not None:
            self.writing.write(data)

    def get_write_buffer_size(self) -> int:
        return self.writing.get_write_buffer_size() if self.writing is not None else 0

    def is_closing(self) -> bool:
        return self._lost or self.writing is None or self.writing.is_closing()

    def close(self) -> None:
        # The writer sends what it holds first, as a socket's transport does.
        if self.reading is not None:
            self.reading.close()
        if self.writing is not None:
            self.writing.close()

    def abort(self) -> None:
        # A read transport has nothing to drop: closing it is all.
        if self.reading is not None:
            self.reading.close()
        if self.writing is not None:
            self.writing.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # "pipe": the pipe written to, for the threads that write answers themselves.
        if self.writing is not None:
            return self.writing.get_extra_info(name, default)
        return default

    # ---- what the two transports' protocols call ----

    def made(self) -> None:
        if not self._made and not self._lost:
            self._made = True
            self._protocol.connection_made(self)

    def lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.close()
        if self._made:
            self._protocol.connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()


class _Writing(asyncio.BaseProtocol):
    """The protocol of the pipe the worker writes."""

    def __init__(self, pipes: Pipes) -> None:
        self._pipes = pipes

    def pause_writing(self) -> None:
        self._pipes._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._pipes._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # The client closed its end (the pipe broke), or the worker's end closed.
        self._pipes.lost(exc)


class _Reading(asyncio.Protocol):
    """The protocol of the pipe the worker reads."""

    def __init__(self, pipes: Pipes) -> None:
        self._pipes = pipes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called soon after the transport is made, before it reads anything.
        assert isinstance(transport, asyncio.ReadTransport)
        self._pipes.reading = transport
        self._pipes.made()

    def data_received(self, data: bytes) -> None:
        self._pipes._protocol.data_received(data)

    def eof_received(self) -> bool | None:
        # The client sends no more: as on a socket, the connection ends.
        self._pipes._protocol.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipes.lost(exc)
