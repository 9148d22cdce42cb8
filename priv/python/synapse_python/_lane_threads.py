"""A lane connection that the worker's threads read and answer themselves (`LaneHello.threads`).

The Bridge's sync functions run in worker threads. A call of one on a
connection the event loop reads wakes two sleeping threads: a pool thread to
run it, and the loop again for the next call; on a virtual machine each
wake-up costs tens of microseconds of CPU, several times the call itself.
The client sends those calls on a connection of their own instead, whose
hello says so, and the loop hands the connection over to threads here
(its socket, or the two pipes the hello asked for: `_lane_blocking`), which
read it themselves: one thread reads (a blocking read), runs the calls it
read one after the other, writing each answer as it has it, then reads
again. A lone caller's call wakes that one thread, as a Port's process is
woken for it; calls read together run back to back, with no wake-up.

A call that takes long must not hold the others up: a watcher thread,
ticking every millisecond while calls come (it sleeps once none has for a
while), sees when every thread has been running its call for a tick while a
call waits or nobody reads, and has another thread take over: an idle one,
or a new one, up to the pool's `max_threads`. It also keeps the calls'
deadlines, to within a tick as the loop's connections do: a call still
waiting when its deadline passes is not run, one running is abandoned.
With every thread running a call, nobody reads: later calls wait in the
socket or pipe, as they would for a thread of the pool, and the client
keeps their deadlines (it cancels a call whose deadline passed; read with
its start, the cancel keeps it from running).

Each call keeps what a call of a sync function has on the loop's
connections: exactly one end (its response, or a status: the `Refused` its
function's failure is turned into, UNKNOWN for an unexpected exception,
RESOURCE_EXHAUSTED for a message over the maximum size, DEADLINE_EXCEEDED,
UNAVAILABLE when the worker stops); the client's cancel abandons it, and so
do the connection's loss and the worker's stop. A call abandoned while its
function runs leaves its thread stuck until the function returns, counted
with the pool's (`SyncThreads.stuck`), and what it returns is dropped.
Functions run in a copy of the context of the connection's loop callbacks,
as they do in the pool's threads.

`_lane_threads_core.CoreConnection` serves the same connection the same
way with its bookkeeping in native code; a worker takes it where its
module is built, and this one elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Container, Mapping
from typing import Any

import grpc

from synapse_python._awaitables import is_awaitable
from synapse_python._lane_blocking import BlockingPipes, BlockingSocket
from synapse_python._lane_frames import (
    DEADLINE_EXCEEDED,
    FRAME_SLACK,
    HEADER,
    METHOD_NOT_FOUND,
    WORKER_STOPPING,
    LaneFrame,
    ProtocolError,
    Refused,
    frame_too_long,
    framed,
    status_frame,
    too_large,
    unexpected,
)
from synapse_python._threads import SyncThreads, track_busy

logger = logging.getLogger("synapse_python.lane")

InThread = Callable[[Any], Any]
"""Answers a unary call in the thread that read it: its request to its
response; raises `Refused` to end the call with another status. It may
return an awaitable (a decorator hid a coroutine function): the thread then
waits for it on the event loop."""

Method = tuple[InThread, Callable[[bytes], Any], Callable[[Any], bytes]]
"""A method answered by the threads: its `InThread`, request deserializer
and response serializer."""

TICK = 0.001
"""The watcher's tick, in seconds: how long a call may run before another
thread takes over the rest, and the resolution of the deadlines."""

QUIET_TICKS = 50
"""Ticks with no call started and none running after which the watcher
sleeps until a call starts (being woken costs the thread that starts it)."""

READ_BYTES = 256 * 1024
"""The most one read takes from the connection."""

IDLE_TIMEOUT = 60.0
"""Seconds an idle thread waits for work before it ends (as the pool's)."""

_READ = object()
"""What a thread is handed when it is its turn to read the connection."""


class _Call:
    """A call read from the connection: waiting for a thread, then running."""

    __slots__ = ("abandoned", "deadline", "id", "message", "method", "started")

    def __init__(self, call_id: int, method: str, message: bytes, deadline: float | None) -> None:
        self.id = call_id
        self.method = method
        self.message = message
        self.deadline = deadline
        # When a thread began to run it (monotonic), for the watcher.
        self.started = 0.0
        # Ended while its function ran: its thread is stuck until it returns.
        self.abandoned = False


class ServedByThreads:
    """What a connection of sync calls served by threads does the same
    whichever keeps its bookkeeping: its socket or pipes, written under one
    lock and let go of once; its watcher thread started with it; its end
    told to the loop. Made on the event loop."""

    def __init__(
        self,
        ends: BlockingSocket | BlockingPipes,
        methods: Mapping[str, Method],
        pool: SyncThreads,
        max_message_bytes: int,
        closed: Callable[[Any], None],
    ) -> None:
        self._ends = ends
        self._methods = methods
        self._pool = pool
        self.max_message_bytes = max_message_bytes
        self._max_frame = max_message_bytes + FRAME_SLACK
        self._on_closed = closed
        self._loop = asyncio.get_running_loop()
        # The functions' context: that of the loop's callbacks, copied per call.
        self._context = contextvars.copy_context()
        # Every write to the connection, and its closing, under this lock.
        self._write_lock = threading.Lock()
        self._ends_closed = False
        # Touched only by the thread reading: what the loop read after the
        # hello, to take before reading more.
        self._handed = b""

    def begin(self, data: bytes) -> None:
        """Serves the connection, starting with `data`, what the loop read
        after the hello. On the loop: nothing here waits."""
        self._handed = data
        try:
            threading.Thread(target=self._watch, name="synapse-lane-watch", daemon=True).start()
        except RuntimeError as exc:  # the system refused a thread: nothing could serve it
            logger.error("cannot serve a lane connection of sync calls: %s", exc)
            self._close()
            return
        self._first_thread()

    def _watch(self) -> None:
        raise NotImplementedError

    def _first_thread(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _write_ended(self, ended: bytes) -> None:
        """Writes `ended`, the statuses of the calls a stop ends, if the
        connection takes them at once (it closes next). On the loop, which
        waits a moment for a thread's write, never for a client that does
        not read (that thread's write may never end)."""
        if ended and self._write_lock.acquire(timeout=TICK * 50):
            try:
                if not self._ends_closed:
                    # What it does not take is cut short: the connection closes next.
                    self._ends.write_now(ended)
            finally:
                self._write_lock.release()

    def _write(self, data: bytes) -> None:
        """Writes `data` (whole frames), unless the connection is closed."""
        if not data:
            return
        with self._write_lock:
            if self._ends_closed:
                return
            try:
                self._ends.write(data)
            except OSError as exc:  # the client left: its read says so
                logger.debug("writing to a lane connection failed: %s", exc)

    def _let_go(self, first: bool, release: bool) -> None:
        """What `_close` does past the bookkeeping: the connection shut
        (`first`: a thread blocked reading it wakes, and calls `_close`
        again), closed (`release`, once nobody reads it), and its end told
        to the loop."""
        if first:
            self._ends.shut()
        if release:
            with self._write_lock:
                # No thread writes on the descriptors after this (nor on whatever reuses them).
                self._ends_closed = True
                self._ends.close()
        if first:
            try:
                self._loop.call_soon_threadsafe(self._on_closed, self)
            except RuntimeError:
                pass  # the loop is closed: so is the worker


class ThreadedConnection(ServedByThreads):
    """One client's connection of sync calls, served by threads of its own
    (see the module doc). Made on the event loop, which hands it the socket
    or pipes and what it read after the hello (`begin`); `stop` ends it
    from there."""

    def __init__(
        self,
        ends: BlockingSocket | BlockingPipes,
        methods: Mapping[str, Method],
        *,
        known: Container[str],
        pool: SyncThreads,
        max_message_bytes: int,
        stopping: Callable[[], bool],
        closed: Callable[[ThreadedConnection], None],
    ) -> None:
        super().__init__(ends, methods, pool, max_message_bytes, closed)
        # Every method of the worker, to say why one not answered here is refused.
        self._known = known
        self._max_threads = pool.max_threads
        self._stopping = stopping
        self._lock = threading.Lock()
        # Idle threads wait here for a call to run or their turn to read.
        self._work = threading.Condition(self._lock)
        # The watcher waits here while no call comes.
        self._calls_come = threading.Condition(self._lock)
        # Touched only by the thread reading: what it has of a frame.
        self._buffer = bytearray()
        self._waiting: collections.OrderedDict[int, _Call] = collections.OrderedDict()
        self._running: dict[int, _Call] = {}
        # Writes of frames that end calls, taken under the lock and not yet
        # done: the calls have not ended for `drained` until they are (the
        # stop that follows it closes the connection).
        self._ending = 0
        self._reading = False
        self._threads = 0
        self._idle = 0
        self._started = 0  # calls started so far, for the watcher to see them come
        self._watcher_sleeps = False
        # Futures of `drained`, settled on the loop once no call is left.
        self._drained = Drained(self._loop)
        self._closed = False  # no more frames are taken; the threads end
        # The descriptors are let go of once closed and nobody reads them.
        self._released = False
        track_busy(self)

    @property
    def busy(self) -> int:
        """Threads running a call (a moment's view): they may want the GIL."""
        return len(self._running)

    @property
    def threads(self) -> int:
        """Threads serving the connection (a moment's view)."""
        return self._threads

    def drained(self) -> asyncio.Future[None]:
        """Done once no call is left (those read have ended). On the loop."""
        with self._lock:
            if self._has_calls():
                return self._drained.add()
        drained = self._loop.create_future()
        drained.set_result(None)
        return drained

    def _first_thread(self) -> None:
        with self._lock:
            self._add_thread()

    def refuse_new(self) -> None:
        """The worker stops: nothing to do here, where each call read asks
        `stopping` as it comes."""

    def stop(self, reason: str = WORKER_STOPPING) -> None:
        """Ends every call UNAVAILABLE (`reason`), abandoning those running,
        and the connection. On the loop, once the worker's grace is over:
        their statuses go out only if the socket takes them at once (a
        client that does not read sees the connection close instead)."""
        with self._lock:
            running = [call for call in self._running.values() if not call.abandoned]
            calls = [*self._waiting.values(), *running]
            self._waiting.clear()
            for call in self._running.values():
                self._abandon(call)
            ended = b"".join(
                status_frame(call.id, grpc.StatusCode.UNAVAILABLE, reason) for call in calls
            )
        for call in calls:
            logger.info("%s cancelled: %s", call.method, reason)
        self._write_ended(ended)
        self._close()

    # ---- the threads ----

    def _add_thread(self) -> None:
        """Starts a thread (under the lock), unless there are `max_threads`."""
        if self._threads >= self._max_threads or self._closed:
            return
        thread = threading.Thread(target=self._serve, name="synapse-lane-sync", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            # The system refused a thread: the calls wait for those there are.
            logger.warning("cannot start a thread for a lane connection: %s", exc)
            return
        self._threads += 1

    def _serve(self) -> None:
        work: _Call | object | None = None
        # A frame that ended a call has been written: counted down with the
        # next thing to do, under one taking of the lock (per call, each
        # taking is a good part of what a call costs the worker).
        written = False
        try:
            while True:
                with self._lock:
                    if written:
                        written = False
                        self._count_written()
                    work = self._next()
                if work is None:
                    return
                if work is _READ:
                    self._read()
                else:
                    frame = self._run(work)  # type: ignore[arg-type]
                    if frame is not None:
                        written = True
                        self._write(frame)
                work = None
        except BaseException:
            # Our own failure, never the function's (`_run` holds those): the
            # connection cannot be trusted to answer any more.
            logger.exception("a thread serving a lane connection failed")
            with self._lock:
                self._threads -= 1
                if work is _READ:
                    self._reading = False
                if written:
                    self._count_written()
            self._close()

    def _next(self) -> _Call | object | None:
        """Under the lock: the next call for this thread to run, or `_READ`
        when it is to read, waited for while there is neither; None when the
        thread is to end (the connection closed, or it was idle too long)."""
        while not self._closed:
            if self._waiting:
                _, call = self._waiting.popitem(last=False)
                call.started = time.monotonic()
                self._running[call.id] = call
                self._started += 1
                if self._watcher_sleeps:
                    self._watcher_sleeps = False
                    self._calls_come.notify()
                return call
            if not self._reading:
                self._reading = True
                return _READ
            self._idle += 1
            woken = self._work.wait(IDLE_TIMEOUT)
            self._idle -= 1
            if not woken and not self._waiting and self._reading:
                break  # another thread reads: this one is not needed
        self._threads -= 1
        return None

    def _read(self) -> None:
        """Reads what the connection has (waiting for it), and takes its frames."""
        data, self._handed = self._handed, b""
        if not data:
            try:
                data = self._ends.read(READ_BYTES)
            except OSError as exc:
                logger.debug("reading a lane connection failed: %s", exc)
        refused = b""
        try:
            frames = self._frames(data) if data else None
        except ProtocolError as exc:
            logger.warning("closing a lane connection: %s", exc)
            frames = None
        with self._lock:
            self._reading = False
            if frames is not None and not self._closed:
                try:
                    refused = self._take(frames)
                except ProtocolError as exc:
                    logger.warning("closing a lane connection: %s", exc)
                    frames = None
                if refused:
                    self._ending += 1
        if refused:
            self._ended_written(refused)
        if frames is None or self._closed:  # the client left, broke the protocol, or we stop
            self._close()

    def _frames(self, data: bytes) -> list[Any]:
        """The whole frames `data` completes (the rest waits for more)."""
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        frames = []
        offset = 0
        # Released before the buffer is resized (an exported buffer cannot be).
        with memoryview(buffer) as view:
            while size - offset >= 4:
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self._max_frame:
                    raise protocol_error("too_long", length, self._max_frame)
                end = offset + 4 + length
                if end > size:
                    break
                try:
                    frames.append(LaneFrame.FromString(view[offset + 4 : end]))
                except Exception as exc:
                    raise protocol_error("unparsable", exc, self._max_frame) from None
                offset = end
        del buffer[:offset]
        return frames

    def _take(self, frames: list[Any]) -> bytes:
        """Under the lock: the calls `frames` start wait for a thread, their
        cancels abandon them; the statuses of the calls refused at once."""
        refused = []
        now = time.monotonic()  # the calls of one read came together
        for frame in frames:
            kind = frame.WhichOneof("body")
            if kind == "start":
                status = self._admit(frame.call, frame.start, now)
                if status is not None:
                    refused.append(status)
            elif kind == "cancel":
                self._cancel(frame.call)
            elif kind in ("message", "half_close", "credit", "hello"):
                pass  # a unary call has its request; a second hello changes nothing
            else:
                raise protocol_error("no_known_body", kind, self._max_frame)
        return b"".join(refused)

    def _admit(self, call_id: int, start: Any, now: float) -> bytes | None:
        """Under the lock: a call started (read at `now`), left waiting for a
        thread; or the status it is refused with."""
        if call_id in self._waiting or call_id in self._running:
            raise protocol_error("started_twice", call_id, self._max_frame)
        method = start.method
        if method not in self._methods:
            reason = "not_threaded" if method in self._known else "unknown"
            return refusal(call_id, reason, method, 0, self.max_message_bytes)
        if self._stopping():
            return refusal(call_id, "stopping", method, 0, self.max_message_bytes)
        message = start.message
        if len(message) > self.max_message_bytes:
            return refusal(call_id, "too_large", method, len(message), self.max_message_bytes)
        timeout_us = start.timeout_us
        deadline = now + timeout_us / 1e6 if timeout_us else None
        self._waiting[call_id] = _Call(call_id, method, message, deadline)
        return None

    def _cancel(self, call_id: int) -> None:
        """Under the lock: the client cancelled a call; it expects nothing more."""
        call = self._waiting.pop(call_id, None) or self._running.get(call_id)
        if call is None or call.abandoned:
            return  # ended already
        if call.id in self._running:
            self._abandon(call)
        logger.info("%s cancelled: the client cancelled or left", call.method)
        self._settle_drained()

    def _has_calls(self) -> bool:
        """Under the lock: whether a call read has not ended (one abandoned
        has: it only holds its thread)."""
        return (
            bool(self._waiting)
            or self._ending > 0
            or any(not call.abandoned for call in self._running.values())
        )

    def _settle_drained(self) -> None:
        """Under the lock, where calls end: settles `drained`'s futures once none is left."""
        if self._drained.wanted and not self._has_calls():
            self._drained.settle()

    def _abandon(self, call: _Call) -> None:
        """Under the lock: nobody waits for a running call any more; its
        thread is stuck until its function returns."""
        if not call.abandoned:
            call.abandoned = True
            self._pool.count_stuck(1)

    def _run(self, call: _Call) -> bytes | None:
        """Runs `call`: the frame that ends it, counted in `_ending`, for the
        thread to write; None when it was abandoned meanwhile."""
        data, ended = run_call(
            self._methods[call.method],
            call.id,
            call.method,
            call.message,
            self._context,
            self._loop,
            self.max_message_bytes,
        )
        frame = data if ended else framed(LaneFrame(call=call.id, message=data))
        with self._lock:
            # Whoever takes the call out of `_running` ends it, exactly once.
            del self._running[call.id]
            if call.abandoned:
                self._pool.count_stuck(-1)
                self._settle_drained()
                return None
            self._ending += 1
        return frame

    def _watch(self) -> None:
        """The watcher (see the module doc)."""
        quiet = 0
        seen = -1
        while True:
            with self._lock:
                if self._closed:
                    return
                if self._running or self._waiting or self._started != seen:
                    quiet = 0
                    seen = self._started
                else:
                    quiet += 1
                if quiet >= QUIET_TICKS:
                    self._watcher_sleeps = True
                    while self._watcher_sleeps and not self._closed:
                        self._calls_come.wait()
                    quiet = 0
                    continue
            time.sleep(TICK)
            with self._lock:
                ended = self._check(time.monotonic())
                if ended:
                    self._ending += 1
            if ended:
                self._ended_written(ended)

    def _check(self, now: float) -> bytes:
        """Under the lock, once a tick: the calls whose deadline passed end;
        a thread takes over when every thread is held up by a call that
        has run for a tick while there is something to do."""
        expired = []
        for calls in (self._waiting, self._running):
            for call in [call for call in calls.values() if call.deadline and call.deadline <= now]:
                if calls is self._waiting:
                    del self._waiting[call.id]
                elif call.abandoned:
                    continue  # ended already: it only holds its thread
                else:
                    self._abandon(call)
                logger.info("%s cancelled: %s", call.method, DEADLINE_EXCEEDED[1])
                expired.append(status_frame(call.id, *DEADLINE_EXCEEDED))
        # Those calls end for `drained` once their statuses are written.
        to_do = len(self._waiting) + (0 if self._reading else 1)
        if to_do:
            # A thread neither idle, reading nor running a call is on its
            # way to the next thing to do: nothing is held up while one is.
            on_their_way = (
                self._threads - self._idle - len(self._running) - (1 if self._reading else 0)
            )
            if on_their_way == 0 and all(
                now - call.started >= TICK for call in self._running.values()
            ):
                woken = min(to_do, self._idle)
                self._work.notify(woken)
                for _ in range(to_do - woken):
                    self._add_thread()
        return b"".join(expired)

    # ---- the socket or pipes ----

    def _ended_written(self, data: bytes) -> None:
        """Writes `data`, frames that end calls (counted in `_ending` when
        they were made), then counts them ended: `drained` is settled only
        once they are written."""
        try:
            self._write(data)
        finally:
            with self._lock:
                self._count_written()

    def _count_written(self) -> None:
        """Under the lock: frames counted in `_ending` have been written;
        `drained` is settled if they were the last."""
        self._ending -= 1
        if self._drained.wanted:
            self._settle_drained()

    def _close(self) -> None:
        """Takes no more frames; calls still waiting are dropped, those
        running abandoned (the client expects nothing more), the connection
        shut (a thread blocked reading it wakes: it calls this again) and,
        once nobody reads it, closed."""
        with self._lock:
            first = not self._closed
            if first:
                self._closed = True
                self._waiting.clear()
                for call in self._running.values():
                    self._abandon(call)
                self._settle_drained()
                self._work.notify_all()
                self._calls_come.notify_all()
            # Never while a thread reads it: a descriptor could be reused
            # under it.
            release = not self._reading and not self._released
            self._released = self._released or release
        self._let_go(first, release)


def run_call(
    method: Method,
    call_id: int,
    name: str,
    message: bytes,
    context: contextvars.Context,
    loop: asyncio.AbstractEventLoop,
    max_message_bytes: int,
) -> tuple[bytes, bool]:
    """Runs a call of `method` (named `name`) on `message`, in a copy of
    `context`: its response message and False, or the frame of the status
    it ends with and True (the function refused it, failed, or answered
    over `max_message_bytes`)."""
    answer, deserialize, serialize = method
    try:
        response = context.copy().run(answer, deserialize(message))
        if is_awaitable(response):  # a decorator hid a coroutine function
            response = asyncio.run_coroutine_threadsafe(_awaited(response), loop).result()
        data: bytes = serialize(response)
    except Refused as refused:
        return status_frame(call_id, refused.code, refused.details, refused.detail), True
    except Exception as exc:
        logger.error("%s failed", name, exc_info=exc)
        return status_frame(call_id, *unexpected(exc)), True
    if len(data) > max_message_bytes:
        details = too_large("Sent", len(data), max_message_bytes)
        return status_frame(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED, details), True
    return data, False


def refusal(call_id: int, reason: str, method: str, size: int, max_message_bytes: int) -> bytes:
    """The frame of the status a call is refused with as it is read, for
    `reason`: its method is a known one not run by the threads
    ("not_threaded"), an unknown one ("unknown"), the worker stops
    ("stopping"), or its request of `size` bytes is over the maximum
    ("too_large")."""
    if reason == "not_threaded":
        details = f"{method} is not a sync function run by the worker's threads"
        return status_frame(call_id, grpc.StatusCode.FAILED_PRECONDITION, details)
    if reason == "unknown":
        return status_frame(call_id, grpc.StatusCode.UNIMPLEMENTED, METHOD_NOT_FOUND)
    if reason == "stopping":
        return status_frame(call_id, grpc.StatusCode.UNAVAILABLE, WORKER_STOPPING)
    if reason == "too_large":
        details = too_large("Received", size, max_message_bytes)
        return status_frame(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
    raise ValueError(f"no refusal {reason!r}")


def protocol_error(kind: str, detail: object, max_frame: int) -> ProtocolError:
    """How the client broke the protocol, for `kind`: a frame's length over
    `max_frame` ("too_long", `detail` the length), a frame that does not
    parse ("unparsable", why), a call started twice ("started_twice", its
    id), a frame with no body a client sends ("no_known_body", what it has)."""
    if kind == "too_long":
        return frame_too_long(int(str(detail)), max_frame)
    if kind == "unparsable":
        return ProtocolError(f"a frame that does not parse: {detail}")
    if kind == "started_twice":
        return ProtocolError(f"call {detail} started twice")
    if kind == "no_known_body":
        return ProtocolError(f"a frame with no known body ({detail})")
    raise ValueError(f"no protocol error {kind!r}")


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class Drained:
    """The futures of a connection's `drained`, settled on its loop once no
    call is left."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def wanted(self) -> bool:
        """Whether a future waits to be settled (a moment's view)."""
        return bool(self._waiters)

    def add(self) -> asyncio.Future[None]:
        """A new future, settled by the next `settle`. On the loop."""
        waiter = self._loop.create_future()
        with self._lock:
            self._waiters.append(waiter)
        return waiter

    def settle(self) -> None:
        """Settles every future so far: no call is left. From any thread."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            try:
                self._loop.call_soon_threadsafe(_settle, waiter)
            except RuntimeError:
                pass  # the loop is closed: nobody waits


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # its wait may have been cancelled
        waiter.set_result(None)
