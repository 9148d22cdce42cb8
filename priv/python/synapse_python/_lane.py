"""The local lane (`proto/synapse/v1/lane.proto`): a worker's gRPC handlers on a second Unix socket.

A gRPC call costs far more than the work of a small call: an HTTP/2 stream,
headers both ways, and grpc.aio's per-call machinery. On the lane a call is
one length-prefixed `LaneFrame` each way (more for streams), many calls share
one connection, and each call is answered by the same `grpc.RpcMethodHandler`
the worker's grpc.aio server uses: the handler gets a `LaneContext`, which
implements the `grpc.aio.ServicerContext` our handlers use (`read`, `write`,
`abort` with the `synapse-error-bin` trailer, `time_remaining`, ...). So agent
runs, Elixir tool calls on the `Run` stream, probes, Bridge calls and health
checks behave the same on either path, errors included.

What each call keeps from gRPC:

* exactly one end: for a method with one response, its `message` frame or a
  `status`; for streamed responses, `message`s then one `status`;
* its deadline (`LaneStart.timeout_us`) cancels the handler's task and ends
  the call DEADLINE_EXCEEDED; the client's `cancel` cancels the task too;
* streamed responses wait for the client's credit (`context.write` returns
  once the client may take the message, as gRPC's flow control would), and
  for the socket to drain when the client reads slowly;
* messages over the worker's maximum size are refused both ways with
  RESOURCE_EXHAUSTED, as grpc does;
* a handler's unexpected exception ends its call UNKNOWN, and the connection
  breaking cancels every call on it.

A method whose behaviour is marked with `answer_at_once` (the Bridge's `on_loop`
functions: sync code that never waits) is answered in the callback that reads
its `start`, with no task, no deadline timer and no `LaneContext`: nothing could
interrupt it in a task either, and it ends its call with `Refused` rather than
`abort`. Its context variables are a copy, as a task's would be. It may hand
back a `Later` instead (the Bridge's sync functions, which run in a worker
thread): the call then waits for its outcome with no task and no future, its
deadline, a cancel or the connection's loss cancelling the work. Only when it
hands back an awaitable (it has to wait after all) does the call become one
like any other, in a task.

Deadlines are kept per connection in ticks of a millisecond, each with one
loop timer for all the calls whose deadline falls in it (rounded up: a call
may end up to a millisecond after its deadline): the calls of one read share
a timer, where a timer each cost more than a call answered at once.

Frames are written in batches: what the calls of one read answer at once goes
out in one write after it; otherwise the first frame of a loop iteration goes
out at once (a unary call's response, a status), and the rest of what the
iteration produces in one write after it. Streamed responses always wait for
that write: a stream's last response and its status, which its handler sends
as it returns, go out together (one wake-up of the client, not two).
With a bearer token configured, a connection's first frame must be a `hello`
carrying it, or the connection is closed.

A connection whose `hello` asks for pipes goes on serving its calls on two
pipes the worker hands the client over the socket (`_lane_pipes`): the same
frames, the same `_Connection`, a transport of two pipes in place of the
socket's. The socket then only marks the connection's life.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import logging
import math
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import grpc

from synapse_python import _auth, _lane_pipes
from synapse_python._awaitables import Later, is_awaitable
from synapse_python._errors import ERROR_METADATA_KEY
from synapse_python._lane_blocking import BlockingPipes, BlockingSocket
from synapse_python._lane_frames import (
    DEADLINE_EXCEEDED,
    FRAME_SLACK,
    HEADER,
    METHOD_NOT_FOUND,
    WORKER_STOPPING,
    LaneFrame,
    LaneStatus,
    ProtocolError,
    Refused,
    error_detail,
    frame_too_long,
    framed,
    too_large,
    unexpected,
)
from synapse_python._lane_threads import InThread
from synapse_python._lane_threads import Method as InThreadMethod
from synapse_python._lane_threads_core import CoreConnection, ThreadedConnection
from synapse_python._lane_threads_core import connection as threads_connection
from synapse_python._threads import SyncThreads

logger = logging.getLogger("synapse_python.lane")

Handlers = Mapping[str, grpc.RpcMethodHandler]
"""Method handlers by gRPC method path ("/package.Service/Method")."""

_Consumer = tuple[Callable[[Any], None], Callable[[], None], Callable[[Exception], None]]
"""Who takes a call's requests as they are read: see `LaneContext.hand_requests_to`."""

AtOnce = Callable[[Any], Any]
"""Answers a unary call without waiting: its request to the response; or to a
`Later` of it, when the work goes on elsewhere (a worker thread: no task waits
for it, its `done` answers); or to an awaitable of it when it has to wait
after all (the rest then runs in a task, as any call). Raises (or the `Later`
or awaitable ends with) `Refused` to end the call with another status, as
`abort` would."""

_AtOnceMethod = tuple[AtOnce, Callable[[bytes], Any], Callable[[Any], bytes], grpc.RpcMethodHandler]
"""A method answered at once: its `AtOnce`, request deserializer, response
serializer, and handler (for a call that has to wait after all)."""

_TICKS_PER_SECOND = 1000
"""The resolution of the calls' deadlines: a millisecond."""

_AT_ONCE = "_synapse_lane_at_once"
_IN_THREAD = "_synapse_lane_in_thread"


def answer_at_once(behaviour: Callable[..., Any], at_once: AtOnce) -> None:
    """Lets the lane answer the calls of a unary method whose behaviour (the
    `unary_unary` of its handler) is `behaviour` with `at_once` instead, in
    the callback that reads them; gRPC still calls `behaviour`."""
    setattr(behaviour, _AT_ONCE, at_once)


def answer_in_thread(behaviour: Callable[..., Any], in_thread: InThread) -> None:
    """Lets the lane answer the calls of a unary method whose behaviour is
    `behaviour` with `in_thread`, in the worker thread that reads them, on a
    connection whose hello asks for threads (`_lane_threads`); elsewhere the
    method is called as before."""
    setattr(behaviour, _IN_THREAD, in_thread)


class LaneServer:
    """Serves `handlers` on a Unix socket, for as long as it runs."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        max_message_bytes: int,
        token: _auth.BearerToken | None = None,
        threads: SyncThreads | None = None,
        busy_wait: float = 0.0,
    ) -> None:
        self._handlers = dict(handlers)
        # The methods answered at once: their `AtOnce`, request deserializer,
        # response serializer and handler, looked up once here rather than per call.
        self._at_once: dict[str, _AtOnceMethod] = {
            method: (at_once, handler.request_deserializer, handler.response_serializer, handler)
            for method, handler in self._handlers.items()
            if (at_once := getattr(handler.unary_unary, _AT_ONCE, None)) is not None
        }
        # The methods the threads of a threads connection answer, likewise.
        self._in_thread: dict[str, InThreadMethod] = {
            method: (in_thread, handler.request_deserializer, handler.response_serializer)
            for method, handler in self._handlers.items()
            if (in_thread := getattr(handler.unary_unary, _IN_THREAD, None)) is not None
        }
        # Whose bound and stuck count the threads connections' threads share.
        self._threads = threads if threads is not None else SyncThreads()
        self._threaded: set[ThreadedConnection | CoreConnection] = set()
        # Seconds the reading thread of a threads connection polls before it sleeps.
        self._busy_wait = busy_wait
        self._max_message_bytes = max_message_bytes
        self._token = token
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._path: str | None = None
        self.stopping = False

    async def start(self, path: str) -> None:
        """Listen on `path` (created 0600; its directory should be 0700)."""
        loop = asyncio.get_running_loop()
        previous = os.umask(0o177)
        try:
            self._server = await loop.create_unix_server(self._connection, path)
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        self._path = path

    def _connection(self) -> _Connection:
        return _Connection(self)

    def hand_over(self, sock: socket.socket, data: bytes, pipes: tuple[int, int] | None) -> None:
        """Serves the connection of `sock` with threads (its hello asked for
        them), starting with `data`, what was read after the hello; on
        `pipes` (the worker's ends, to read and to write) if it has them."""
        if self.stopping:
            _let_go(sock, pipes)  # its client sees the connection end, as a new one would
            return
        try:
            ends = (
                BlockingSocket(sock, self._busy_wait)
                if pipes is None
                else BlockingPipes(*pipes, sock, self._busy_wait)
            )
        except BaseException:
            _let_go(sock, pipes)  # no descriptor left for the selector, say
            raise
        threaded = threads_connection()(
            ends,
            self._in_thread,
            known=self._handlers,
            pool=self._threads,
            max_message_bytes=self._max_message_bytes,
            stopping=lambda: self.stopping,
            closed=self._threaded.discard,
        )
        self._threaded.add(threaded)
        threaded.begin(data)

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections and calls; give those in flight `grace` seconds, then cancel."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping = True
        for threaded in self._threaded:
            threaded.refuse_new()
        server.close()
        calls = [call for connection in self._connections for call in connection.calls.values()]
        tasks = [call.task for call in calls if call.task is not None]
        threaded = list(self._threaded)
        if grace:
            waits = [connection.drained() for connection in threaded]
            if tasks or waits:
                await asyncio.wait([*tasks, *waits], timeout=grace)
            for wait in waits:
                wait.cancel()
        for call in calls:
            call.stop(WORKER_STOPPING)
        for connection in threaded:
            connection.stop(WORKER_STOPPING)
        if tasks:
            await asyncio.wait(tasks)
        for connection in list(self._connections):
            connection.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)


def _let_go(sock: socket.socket, pipes: tuple[int, int] | None) -> None:
    """Closes a connection's socket, and its pipes if it has them."""
    sock.close()
    for fd in pipes or ():
        os.close(fd)


class _Deadlines:
    """A connection's calls' deadlines: a loop timer per tick (a millisecond)
    some deadline falls in, which expires that tick's calls; cancelled once
    none of them is left."""

    __slots__ = ("_loop", "_ticks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ticks: dict[int, tuple[asyncio.TimerHandle, dict[int, Callable[[], None]]]] = {}

    def arm(self, deadline: float, call_id: int, expire: Callable[[], None]) -> int:
        """Have `expire` called at `deadline` (loop time), or within a tick
        after it; the tick, to `disarm` it with."""
        tick = math.ceil(deadline * _TICKS_PER_SECOND)
        armed = self._ticks.get(tick)
        if armed is None:
            timer = self._loop.call_at(tick / _TICKS_PER_SECOND, self._expire, tick)
            self._ticks[tick] = (timer, {call_id: expire})
        else:
            armed[1][call_id] = expire
        return tick

    def disarm(self, tick: int, call_id: int) -> None:
        armed = self._ticks.get(tick)
        if armed is None:
            return
        timer, calls = armed
        calls.pop(call_id, None)
        if not calls:
            del self._ticks[tick]
            timer.cancel()

    def _expire(self, tick: int) -> None:
        armed = self._ticks.pop(tick, None)
        if armed is None:
            return
        for call_id, expire in list(armed[1].items()):
            try:
                expire()
            except Exception:
                # As a timer of its own would: the others still expire.
                logger.exception("expiring call %d failed", call_id)


class _Connection(asyncio.Protocol):
    """One client's connection: frames in, calls dispatched, frames out in batches."""

    def __init__(self, server: LaneServer) -> None:
        self._server = server
        self._handlers = server._handlers
        self._at_once = server._at_once
        self.max_message_bytes = server._max_message_bytes
        self._max_frame = server._max_message_bytes + FRAME_SLACK
        self._authorized = server._token is None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._needed = 0
        self._outgoing: list[bytes] = []
        self._batching = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        # Every write to the socket is made under this lock: the loop's, and
        # those of worker threads answering their calls (`write_from_thread`).
        self.write_lock = threading.Lock()
        # The socket's descriptor, for those threads; what one of them could
        # not write of a frame, which goes out before anything else.
        self._fd = -1
        self._rest: list[bytes] | None = None
        # Whether the transport held bytes it had not yet sent when the loop
        # last wrote to it: set on the loop, read by those threads, which
        # must not write before such bytes. Only the loop reads the
        # transport's buffer: the loop drains it outside of our lock, and a
        # thread reading it meanwhile may see it empty while a chunk is
        # between the buffer and the socket (Python 3.12's transports).
        # Once drained it stays set until the loop writes again: a thread's
        # answer then waits for the loop, which writes it and looks again.
        self._backlog = False
        self.calls: dict[int, LaneContext | _Pending] = {}
        # Calls a worker thread answered in full (`_Pending._answer_in_thread`):
        # what is left of them (their entry, their deadline) is cleared by the
        # loop when it next reads, with no wake-up of its own for each.
        self.answered_in_thread: collections.deque[_Pending] = collections.deque()
        self.deadlines = _Deadlines(self._loop)
        # Once the hello asked for pipes: the connection they carry, which
        # this one (the socket's) ends with, and which ends this one.
        self._piped: _Connection | None = None
        # Of a connection on pipes: the socket's, which ends with it.
        self._control: _Connection | None = None
        # Whether a call was started: a hello asking for pipes comes before.
        self._began = False

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # The descriptor written to: the socket's, or the pipe's (`_lane_pipes`).
        written = transport.get_extra_info("socket") or transport.get_extra_info("pipe")
        self._fd = written.fileno() if written is not None else -1
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        piped, self._piped = self._piped, None
        if piped is not None:
            piped.close()
        with self.write_lock:
            # Before the transport closes the socket: no thread writes on
            # its descriptor after this (nor on whatever reuses it).
            self._transport = None
            self._fd = -1
            self._rest = None
        self._outgoing.clear()
        self.answered_in_thread.clear()
        for call in list(self.calls.values()):
            call.stop(None)
        self.calls.clear()
        self._resume()

    def eof_received(self) -> None:
        # The transport closes itself on return (the client sends no more).
        with self.write_lock:
            self._hand_rest_over()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._resume()

    def data_received(self, data: bytes) -> None:
        if self._piped is not None:
            # The client sends nothing on the socket once it has its pipes.
            logger.warning("closing a lane connection: bytes on its socket after its pipes")
            self.close()
            return
        answered = self.answered_in_thread
        while answered:
            answered.popleft().forget()
        # What the calls answer at once goes out in one write, after them.
        batching, self._batching = self._batching, True
        try:
            self._read(data)
        finally:
            if not batching:
                self._flush()

    def _read(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            # The rest of a frame: parse once it is complete, not at every chunk.
            buffer += data
            if len(buffer) < self._needed:
                return
            data = bytes(buffer)
            buffer.clear()
        view = memoryview(data)
        size = len(data)
        offset = 0
        needed = 4
        try:
            while size - offset >= 4:
                (length,) = HEADER.unpack_from(data, offset)
                if length > self._max_frame:
                    raise frame_too_long(length, self._max_frame)
                end = offset + 4 + length
                if end > size:
                    needed = 4 + length
                    break
                frame = LaneFrame.FromString(view[offset + 4 : end])
                offset = end
                kind = frame.WhichOneof("body")
                if kind == "start" and self._authorized:
                    # Most frames: straight to the call, a Python frame fewer.
                    self._start(frame.call, frame.start)
                else:
                    self._dispatch(frame, kind)
                    if kind == "hello" and frame.hello.threads:
                        self._hand_over(view[offset:size], pipes=frame.hello.pipes)
                        return
                    if kind == "hello" and frame.hello.pipes:
                        self._to_pipes(size - offset)
                        return
        except Exception as exc:  # a broken client: drop it, never the worker
            logger.warning("closing a lane connection: %s", exc)
            self.close()
            return
        if offset < size:
            buffer += view[offset:]
            self._needed = needed

    def _hand_over(self, rest: memoryview, *, pipes: bool) -> None:
        """The connection's hello asked for threads: they serve its socket
        from now on (`_lane_threads`), starting with `rest`, what was read
        after the hello; this transport lets go of it. If the hello asked
        for pipes too, the client gets its ends of two pipes first, and the
        threads serve the worker's, with the socket for the connection's end."""
        transport = self._transport
        if self._began or self._outgoing or transport is None:
            raise ProtocolError("a hello asking for threads after calls")
        sock = transport.get_extra_info("socket")
        if pipes and rest:
            raise ProtocolError("bytes on the socket after a hello asking for pipes")
        fds = _lane_pipes.hand_over(sock) if pipes else None
        try:
            # A descriptor of its own: the transport closes the one it has.
            duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        except BaseException:
            for fd in fds or ():
                os.close(fd)
            raise
        duplicate.setblocking(True)
        self._server.hand_over(duplicate, bytes(rest), fds)
        transport.abort()

    def _to_pipes(self, left: int) -> None:
        """The connection's hello asked for pipes: hands the client its ends
        of two pipes, and serves the connection on the worker's from now on;
        this socket stays open as long as they are. `left`: how many bytes
        were read after the hello, which must be none."""
        transport = self._transport
        if self._began or self._outgoing or transport is None:
            raise ProtocolError("a hello asking for pipes after calls")
        if left:
            raise ProtocolError("bytes on the socket after a hello asking for pipes")
        reads, writes = _lane_pipes.hand_over(transport.get_extra_info("socket"))
        piped = _Connection(self._server)
        # Already authorized, by the hello on the socket.
        piped._authorized = True
        piped._control = self
        self._piped = piped
        task = self._loop.create_task(_lane_pipes.serve(reads, writes, piped))
        task.add_done_callback(piped._served)

    def _served(self, task: asyncio.Task[_lane_pipes.Pipes]) -> None:
        """The pipes are served (or could not be): from now on, their end
        ends the socket's connection too."""
        control = self._control
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.warning("closing a lane connection: %s", task.exception())
            if control is not None:
                control.close()
            return
        pipes = task.result()
        if control is not None:
            pipes.on_lost = control.close
            if control._transport is None:  # it ended meanwhile
                pipes.close()
            elif pipes.is_closing():  # so did they
                control.close()

    # ---- frames in ----

    def _dispatch(self, frame: Any, kind: str | None) -> None:
        if not self._authorized:
            self._hello(frame if kind == "hello" else None)
            return
        if kind == "start":
            self._start(frame.call, frame.start)
            return
        call = self.calls.get(frame.call)
        if kind == "message":
            if call is not None:
                call.received(frame.message)
        elif kind == "credit":
            if call is not None:
                call.credited(frame.credit)
        elif kind == "cancel":
            if call is not None:
                call.stop(None)
        elif kind == "half_close":
            if call is not None:
                call.received(None)
        elif kind == "hello":
            pass  # a token that is not required is not checked
        else:
            raise ProtocolError(f"a frame with no known body ({kind})")

    def _hello(self, frame: Any) -> None:
        token = self._server._token
        authorization = frame.hello.authorization if frame is not None else ""
        scheme, presented = authorization[:7], authorization[7:]
        if token is None or scheme.lower() != "bearer " or not token.matches(presented.encode()):
            raise ProtocolError("missing or invalid bearer token")
        self._authorized = True

    def _start(self, call_id: int, start: Any) -> None:
        self._began = True
        if call_id in self.calls:
            raise ProtocolError(f"call {call_id} started twice")
        method = start.method
        at_once = self._at_once.get(method)
        if at_once is not None and not self._server.stopping:
            # Answered in this callback (see `answer_at_once`): the common
            # case written out here, since each Python call is a good part
            # of what such a call costs.
            answer, deserialize, serialize, handler = at_once
            message = start.message
            if len(message) > self.max_message_bytes:
                self._too_large(call_id, "Received", message)
                return
            context = contextvars.copy_context()
            try:
                response = context.run(answer, deserialize(message))
            except Exception as exc:
                self.answer_failed(call_id, method, exc)
                return
            if isinstance(response, Later):
                # Its work goes on elsewhere (a worker thread): no task waits for it.
                _Pending(self, call_id, handler, start, context, response, serialize)
            else:
                self.answer(call_id, handler, start, context, response, serialize)
            return
        handler = self._handlers.get(method)
        if handler is None:
            self.send_status(call_id, grpc.StatusCode.UNIMPLEMENTED, METHOD_NOT_FOUND)
            return
        if self._server.stopping:
            self.send_status(call_id, grpc.StatusCode.UNAVAILABLE, WORKER_STOPPING)
            return
        call = LaneContext(self, call_id, handler, start)
        self.calls[call_id] = call
        call.begin()

    def answer(
        self,
        call_id: int,
        handler: Any,
        start: Any,
        context: contextvars.Context,
        response: Any,
        serialize: Callable[[Any], bytes],
        deadline: float | None = None,
    ) -> None:
        """Ends a call answered at once with its `response`; when that is
        awaitable (it has to wait after all), the call becomes one like any
        other, in a task, its deadline `deadline` if it already has one."""
        if is_awaitable(response):
            call = LaneContext(self, call_id, handler, start)
            self.calls[call_id] = call
            call.await_response(response, context, deadline)
            return
        try:
            data = serialize(response)
        except Exception as exc:
            self.answer_failed(call_id, start.method, exc)
            return
        if len(data) > self.max_message_bytes:
            self._too_large(call_id, "Sent", data)
        else:
            self.send(LaneFrame(call=call_id, message=data))

    def _too_large(self, call_id: int, direction: str, message: bytes) -> None:
        """Ends a call whose `message` is over the maximum size RESOURCE_EXHAUSTED, as grpc does."""
        details = too_large(direction, len(message), self.max_message_bytes)
        self.send_status(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    def answer_failed(self, call_id: int, method: str, exc: BaseException) -> None:
        """Ends a call answered at once that failed: with the status it was
        `Refused`, or, as a handler's unexpected exception, UNKNOWN."""
        if isinstance(exc, Refused):
            self.send_status(call_id, exc.code, exc.details, exc.detail)
        else:
            logger.error("%s failed", method, exc_info=exc)
            self.send_status(call_id, *unexpected(exc))

    # ---- frames out ----

    def send(self, frame: Any, *, at_once: bool = True) -> None:
        """Writes `frame`: now if it is the first of this loop iteration and
        `at_once`, else with the rest of the iteration's frames after it."""
        if self._transport is None:
            return
        data = frame.SerializeToString()
        if self._batching or not at_once:
            self._outgoing.append(HEADER.pack(len(data)))
            self._outgoing.append(data)
        else:
            # The first frame of a loop iteration goes out at once (a lone
            # call waits for nothing); the next ones wait for the end of the
            # iteration and go out together.
            self._write(HEADER.pack(len(data)) + data)
        if not self._batching:
            self._batching = True
            self._loop.call_soon(self._flush)

    def send_status(
        self, call_id: int, code: grpc.StatusCode, message: str, detail: bytes = b""
    ) -> None:
        self.send(
            LaneFrame(
                call=call_id,
                status=LaneStatus(code=code.value[0], message=message, detail=detail),
            )
        )

    def _flush(self) -> None:
        self._batching = False
        outgoing, self._outgoing = self._outgoing, []
        if outgoing:
            self._write(b"".join(outgoing))

    def _write(self, data: bytes) -> None:
        """Writes `data`, on the loop: after the rest of a thread's frame, if any."""
        with self.write_lock:
            if self._rest is not None:
                self._rest.append(data)
            elif self._transport is not None:
                self._transport.write(data)
                self._backlog = self._transport.get_write_buffer_size() > 0

    def write_from_thread(self, data: bytes) -> bool:
        """Writes the frame `data` from a worker thread, now, unless something
        waits to be written before it; the caller holds `write_lock`. False
        when it cannot (the loop then writes the answer, as it would have).

        The socket is non-blocking: what it does not take at once goes out
        first from the loop, before any other frame.
        """
        transport = self._transport
        if (
            transport is None
            or self._fd < 0
            or self._rest is not None
            or self._backlog
            or transport.is_closing()
        ):
            return False
        try:
            sent = os.write(self._fd, data)
        except OSError:  # it took nothing (BlockingIOError), or the peer is gone
            return False
        if sent < len(data):
            self._rest = [data[sent:]]
            try:
                self._loop.call_soon_threadsafe(self._write_rest)
            except RuntimeError:
                pass  # the loop is closed: so is the connection
        return True

    def _write_rest(self) -> None:
        with self.write_lock:
            self._hand_rest_over()

    def _hand_rest_over(self) -> None:
        """On the loop, holding `write_lock`: the rest of a thread's frame, and
        the frames that wait for it, to the transport (which sends what it
        has been given before it closes)."""
        rest, self._rest = self._rest, None
        if rest and self._transport is not None:
            self._transport.write(b"".join(rest))
            self._backlog = self._transport.get_write_buffer_size() > 0

    async def drained(self) -> None:
        """Returns once the socket takes more (at once, unless the client reads slowly)."""
        if not self._paused:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.shield(self._drained)

    def _resume(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def close(self) -> None:
        with self.write_lock:
            # A thread's frame cut short is finished first, not torn: a
            # closing transport drops what it is given after `close`.
            self._hand_rest_over()
            transport = self._transport
        if transport is not None:
            transport.close()


class _Pending:
    """A call answered at once whose response a `Later` gives (a function in a
    worker thread). No task waits for it: the `Later`'s `done` answers, or
    the thread itself (`_answer_in_thread`). Its deadline, a cancel, the
    connection's loss and the worker's stop cancel the work, as they would
    a handler's task, and end the call as they would."""

    def __init__(
        self,
        connection: _Connection,
        call_id: int,
        handler: Any,
        start: Any,
        context: contextvars.Context,
        later: Later,
        serialize: Callable[[Any], bytes],
    ) -> None:
        self._connection = connection
        self._id = call_id
        self._handler = handler
        self._start = start
        self._context = context
        # Until the call ends: the `Later` holds this call's callbacks, and
        # a reference back from here would keep both alive in a cycle that
        # only the garbage collector frees (a collection per few hundred calls).
        self._later: Later | None = later
        self._serialize = serialize
        self._ended = False
        # Answered from the worker thread (`_answer_in_thread`).
        self._answered = False
        # Made only when the worker's stop waits for the call.
        self._stopped: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._tick: int | None = None
        if start.timeout_us:
            self._deadline = connection._loop.time() + start.timeout_us / 1e6
            self._tick = connection.deadlines.arm(self._deadline, call_id, self._expire)
        # In the connection's calls before `done` can come, even at once.
        connection.calls[call_id] = self
        later.then_in_thread(self._answer_in_thread)
        later.then(self._done)

    @property
    def task(self) -> asyncio.Future[None]:
        """What the worker's stop waits for, as for a handler's task: done once the call ended."""
        if self._stopped is None:
            self._stopped = self._connection._loop.create_future()
            if self._ended or self._answered:
                self._stopped.set_result(None)
        return self._stopped

    def received(self, message: bytes | None) -> None:
        """A unary call's half-close; it has its one request already."""

    def credited(self, count: int) -> None:
        """A unary call's one response needs no credit."""

    def stop(self, reason: str | None) -> None:
        """The client cancelled or left (`None`), or the worker stops."""
        self._end(None if reason is None else (grpc.StatusCode.UNAVAILABLE, reason))

    def _expire(self) -> None:
        self._tick = None
        self._end(DEADLINE_EXCEEDED)

    def _end(self, status: tuple[grpc.StatusCode, str] | None) -> None:
        """Ends the call before its response came, with `status` unless the
        client expects nothing more; the work is abandoned (and said so, as a
        handler's cancelled task is)."""
        with self._connection.write_lock:  # against `_answer_in_thread`
            if self._ended:
                return
            answered = self._answered
            self._ended = True
        later = self._later
        self.forget()
        if answered:
            return  # its thread answered it: nothing was left to cancel
        if later is not None:
            later.cancel()
        why = "the client cancelled or left" if status is None else status[1]
        logger.info("%s cancelled: %s", self._start.method, why)
        if status is not None:
            self._connection.send_status(self._id, *status)

    def _answer_in_thread(self, result: Any, failure: BaseException | None) -> bool:
        """In the worker thread that has the response: writes the answer from
        there, saving the loop's wake-up and the hand-over of the GIL before
        it goes out. Only a response that needs nothing more (the loop's
        `_done` answers the others, and any call this finds ended or cannot
        write for), and exactly one answer: the call's end and this claim it
        under the connection's write lock. True when it answered: the loop
        is then not woken for the call; what is left of it (its entry, its
        deadline) waits in `answered_in_thread` for the loop's next read
        (which comes before any frame the answer leads the client to send),
        its deadline or its end."""
        connection = self._connection
        if failure is not None or is_awaitable(result) or len(connection.calls) > 1:
            # With other calls in flight, the loop writes the answers of
            # those that end together in one write, a wake-up of the
            # client's reader for them all: a lone call waits for nothing.
            return False
        try:
            data = self._serialize(result)
        except Exception:
            return False  # the loop's answer says why
        if len(data) > connection.max_message_bytes:
            return False
        frame = framed(LaneFrame(call=self._id, message=data))
        with connection.write_lock:
            if self._ended or not connection.write_from_thread(frame):
                return False
            self._answered = True
            connection.answered_in_thread.append(self)
        return True

    def _done(self, result: Any, failure: BaseException | None) -> None:
        if self._answered:
            self.forget()  # what is left: its entry and its deadline
            return
        if self._ended:
            return
        self.forget()
        connection = self._connection
        if failure is not None:
            connection.answer_failed(self._id, self._start.method, failure)
        else:
            connection.answer(
                self._id,
                self._handler,
                self._start,
                self._context,
                result,
                self._serialize,
                self._deadline,
            )

    def forget(self) -> None:
        """The call has ended: it leaves its connection and its deadline, and
        lets go of its `Later` (which holds its callbacks: see `__init__`)."""
        self._ended = True
        self._later = None
        if self._tick is not None:
            self._connection.deadlines.disarm(self._tick, self._id)
            self._tick = None
        if self._connection.calls.get(self._id) is self:
            del self._connection.calls[self._id]
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)


class LaneContext(grpc.aio.ServicerContext):  # type: ignore[misc]
    """One call on the lane, as the servicer context its handler gets."""

    def __init__(self, connection: _Connection, call_id: int, handler: Any, start: Any) -> None:
        self._connection = connection
        self._id = call_id
        self._handler = handler
        self._method: str = start.method
        self._first: bytes = start.message
        self._credit: int = start.credit
        self._timeout = start.timeout_us / 1e6 if start.timeout_us else None
        self._deadline: float | None = None
        self._tick: int | None = None
        self._inputs: collections.deque[bytes | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._detail = b""
        self._ended = False
        self._cancelled = False
        # The status a cancelled handler ends with: None when the client
        # cancelled or left, and expects nothing more.
        self._cancel_status: tuple[grpc.StatusCode, str] | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        # Who takes the requests as they are read (`hand_requests_to`), if anyone.
        self._consumer: _Consumer | None = None
        self.task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Runs the handler, in a task of its own."""
        self._arm_deadline()
        self.task = self._connection._loop.create_task(self._run())

    def await_response(
        self, response: Awaitable[Any], context: contextvars.Context, deadline: float | None
    ) -> None:
        """Awaits the response of a call answered at once that had to wait
        after all (its deadline `deadline`, when it was already set)."""
        self._first = b""
        self._arm_deadline(deadline)
        self.task = self._connection._loop.create_task(self._run(response), context=context)

    def _arm_deadline(self, deadline: float | None = None) -> None:
        if self._timeout is not None:
            loop = self._connection._loop
            self._deadline = deadline if deadline is not None else loop.time() + self._timeout
            self._tick = self._connection.deadlines.arm(self._deadline, self._id, self._expire)

    # ---- what the connection tells the call ----

    def received(self, message: bytes | None) -> None:
        """A request (None: the client's half-close)."""
        if message is not None and len(message) > self._connection.max_message_bytes:
            self._cancel((grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large("Received", message)))
            return
        if self._consumer is not None:
            self._consume(self._consumer, message)
            return
        self._inputs.append(message)
        self._wake()

    def hand_requests_to(
        self,
        deliver: Callable[[Any], None],
        closed: Callable[[], None],
        broken: Callable[[Exception], None],
    ) -> Callable[[], None]:
        """Hands each request still to come to `deliver`, and the client's
        half-close to `closed`, in the callback that reads it: what a task
        looping on `read` would do, without the task and its wake-up per
        request. Returns what stops it (requests then wait for `read`).

        The first exception stops it too, and is handed to `broken`, whose
        handler is the one to end the call (nothing will come from its
        client any more): a request that does not deserialize (the client
        broke the protocol), or one `deliver` or `closed` raises (they are
        meant to handle their own); both logged.
        """
        consumer = self._consumer = (deliver, closed, broken)
        while self._inputs and self._consumer is consumer:
            message = self._inputs.popleft()
            if message is None:
                self._inputs.appendleft(None)  # stays at EOF for `read`
            self._consume(consumer, message)
        return self._stop_consuming

    def _stop_consuming(self) -> None:
        self._consumer = None

    def _consume(self, consumer: _Consumer, message: bytes | None) -> None:
        deliver, closed, broken = consumer
        try:
            if message is None:
                self._consumer = None
                if not self._inputs:
                    self._inputs.append(None)  # stays at EOF for `read`
                closed()
                return
            try:
                request = self._handler.request_deserializer(message)
            except Exception as exc:
                logger.warning("%s: a request that does not deserialize: %s", self._method, exc)
                failure = exc
            else:
                deliver(request)
                return
        except Exception as exc:
            logger.exception("%s: handing over a request or the half-close failed", self._method)
            failure = exc
        self._consumer = None
        try:
            broken(failure)
        except Exception:
            logger.exception("%s: telling the handler its requests broke failed", self._method)

    def credited(self, count: int) -> None:
        self._credit += count
        self._wake()

    def stop(self, reason: str | None) -> None:
        """Cancel the handler: the client cancelled or left (`None`), or the worker stops."""
        if reason is None:
            self._cancel(None)
        else:
            self._cancel((grpc.StatusCode.UNAVAILABLE, reason))

    def _expire(self) -> None:
        self._tick = None
        self._cancel(DEADLINE_EXCEEDED)

    def _cancel(self, status: tuple[grpc.StatusCode, str] | None) -> None:
        if self._ended or self._cancelled:
            return
        self._cancelled = True
        self._cancel_status = status
        if self.task is not None:
            self.task.cancel()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._connection._loop.create_future()
        await self._waiter

    # ---- running the handler ----

    async def _run(self, pending: Awaitable[Any] | None = None) -> None:
        """Runs the handler, or awaits the response `pending` of one answered at once."""
        try:
            if pending is None:
                await self._call()
            else:
                self._respond(await pending)
        except (asyncio.CancelledError, Exception) as exc:
            self._failed(exc)
        finally:
            self._finish()

    async def _call(self) -> None:
        handler = self._handler
        if handler.request_streaming:
            first, self._first = self._first, b""
            if len(first) > self._connection.max_message_bytes:
                self._refuse(first)
            request: Any = self._requests()  # they come in `message` frames
        else:
            request = self._request()
        if handler.unary_unary is not None:
            self._respond(await handler.unary_unary(request, self))
        elif handler.stream_unary is not None:
            self._respond(await handler.stream_unary(request, self))
        else:
            behaviour = handler.unary_stream or handler.stream_stream
            produced = behaviour(request, self)
            if inspect.isasyncgen(produced):
                async for response in produced:
                    await self.write(response)
            else:
                await produced
            self._end()

    def _request(self) -> Any:
        """The call's one request, read."""
        first, self._first = self._first, b""
        if len(first) > self._connection.max_message_bytes:
            self._refuse(first)
        return self._handler.request_deserializer(first)

    def _refuse(self, message: bytes) -> NoReturn:
        """Ends the call: `message` is over the maximum size."""
        self._set_status(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large("Received", message))
        raise grpc.aio.AbortError()

    def _failed(self, exc: BaseException) -> None:
        """Ends the call as the way its handler failed says."""
        if isinstance(exc, grpc.aio.AbortError):  # abort(), or a message over the size limit
            self._end()
        elif isinstance(exc, Refused):  # the awaitable of a call answered at once
            self._set_status(exc.code, exc.details, exc.detail)
            self._end()
        elif isinstance(exc, asyncio.CancelledError):
            if self._cancel_status is None:
                self._ended = True  # the client cancelled or left: it expects nothing
            else:
                self._set_status(*self._cancel_status)
                self._end()
        else:
            logger.error("%s failed", self._method, exc_info=exc)
            self._set_status(*unexpected(exc))
            self._end()

    def _respond(self, response: Any) -> None:
        """Sends the one response of a unary method (or its failure)."""
        if self._code is not grpc.StatusCode.OK:
            self._end()
            return
        data = self._handler.response_serializer(response)
        if len(data) > self._connection.max_message_bytes:
            self._set_status(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large("Sent", data))
            self._end()
            return
        self._ended = True
        self._connection.send(LaneFrame(call=self._id, message=data))

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._connection.send_status(self._id, self._code, self._details, self._detail)

    def _finish(self) -> None:
        self._ended = True
        if self._tick is not None:
            self._connection.deadlines.disarm(self._tick, self._id)
            self._tick = None
        self._connection.calls.pop(self._id, None)
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("a done callback of %s failed", self._method)

    def _too_large(self, direction: str, message: bytes) -> str:
        return too_large(direction, len(message), self._connection.max_message_bytes)

    def _set_status(self, code: grpc.StatusCode, details: str, detail: bytes = b"") -> None:
        """The call's end status; the first failure decided stays (as with grpc's abort)."""
        if self._code is grpc.StatusCode.OK:
            self._code, self._details, self._detail = code, details, detail

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            request = await self.read()
            if request is grpc.aio.EOF:
                return
            yield request

    # ---- grpc.aio.ServicerContext ----

    async def read(self) -> Any:
        while not self._inputs:
            if self._ended:
                return grpc.aio.EOF
            await self._wait()
        message = self._inputs.popleft()
        if message is None:
            self._inputs.appendleft(None)  # stays at EOF
            return grpc.aio.EOF
        return self._handler.request_deserializer(message)

    async def write(self, message: Any) -> None:
        if self._ended:
            raise RuntimeError("the call is over")
        while self._credit <= 0:
            await self._wait()
        data = self._handler.response_serializer(message)
        if len(data) > self._connection.max_message_bytes:
            self._set_status(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large("Sent", data))
            raise grpc.aio.AbortError()
        self._credit -= 1
        # With the iteration's other frames: a stream's last response and its
        # status, sent as the handler returns, then reach the client together.
        self._connection.send(LaneFrame(call=self._id, message=data), at_once=False)
        await self._connection.drained()

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        self._set_status(code, details, error_detail(trailing_metadata))
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        detail = error_detail(trailing_metadata)
        if detail:
            self._detail = detail

    def trailing_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return ((ERROR_METADATA_KEY, self._detail),) if self._detail else ()

    async def send_initial_metadata(self, initial_metadata: Iterable[tuple[str, Any]]) -> None:
        pass  # the lane carries none

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._connection._loop.time())

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._ended

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def peer(self) -> str:
        return "lane"

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def set_compression(self, compression: grpc.Compression) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass
