"""The connection of `_lane_threads`, its bookkeeping in native code.

`ThreadedConnection` in `_lane_threads` keeps each call's entry, its
deadline, the watcher's view and the frames in Python, under a lock taken
twice a call: most of what a call of a small function costs the worker
there. `CoreConnection` serves the same connection the same way (the module
doc of `_lane_threads` holds for it: the same threads, the same watcher,
every status in the same words) with that bookkeeping in `_lane_core`, a
native module built with the NIF: the threads still read the connection,
run the functions and write the answers here. Where `_lane_core` was not
built or does not load (a worker's package copied elsewhere), `connection`
answers `ThreadedConnection`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc

from synapse_python._lane_blocking import BlockingPipes, BlockingSocket
from synapse_python._lane_frames import (
    DEADLINE_EXCEEDED,
    WORKER_STOPPING,
    ProtocolError,
    status_frame,
)
from synapse_python._lane_threads import (
    IDLE_TIMEOUT,
    QUIET_TICKS,
    READ_BYTES,
    TICK,
    Drained,
    Method,
    ServedByThreads,
    ThreadedConnection,
    protocol_error,
    refusal,
    run_call,
)
from synapse_python._threads import SyncThreads, track_busy

try:
    from synapse_python import _lane_core
except ImportError as exc:  # not built, or built for another platform
    _lane_core = None  # type: ignore[assignment]
    UNAVAILABLE: str | None = str(exc)
else:
    UNAVAILABLE = None

logger = logging.getLogger("synapse_python.lane")


class CoreConnection(ServedByThreads):
    """One client's connection of sync calls, served by threads of its own
    with `_lane_core`'s bookkeeping (see the module doc); the interface of
    `ThreadedConnection`."""

    def __init__(
        self,
        ends: BlockingSocket | BlockingPipes,
        methods: Mapping[str, Method],
        *,
        known: Collection[str],
        pool: SyncThreads,
        max_message_bytes: int,
        stopping: Callable[[], bool],
        closed: Callable[[CoreConnection], None],
    ) -> None:
        assert _lane_core is not None, UNAVAILABLE
        super().__init__(ends, dict(methods), pool, max_message_bytes, closed)
        # Futures of `drained`, settled on the loop once no call is left.
        self._drained = Drained(self._loop)
        self._core = _lane_core.Core(
            list(self._methods),
            list(known),
            max_message_bytes=max_message_bytes,
            max_frame=self._max_frame,
            max_threads=pool.max_threads,
            tick=TICK,
            quiet_ticks=QUIET_TICKS,
            idle_timeout=IDLE_TIMEOUT,
            count_stuck=pool.count_stuck,
            # Nothing the core holds holds this connection: the pair is
            # freed by reference counting once the connection is let go.
            settle_drained=self._drained.settle,
            protocol_error=functools.partial(protocol_error, max_frame=self._max_frame),
        )
        if stopping():
            self._core.refuse_new()
        track_busy(self)

    @property
    def busy(self) -> int:
        """Threads running a call (a moment's view): they may want the GIL."""
        return self._core.busy

    @property
    def threads(self) -> int:
        """Threads serving the connection (a moment's view)."""
        return self._core.threads

    def drained(self) -> asyncio.Future[None]:
        """Done once no call is left (those read have ended). On the loop."""
        drained = self._drained.add()
        if not self._core.want_drained():
            self._drained.settle()
        return drained

    def _first_thread(self) -> None:
        self._add_threads(1)

    def refuse_new(self) -> None:
        """The worker stops: calls read from now on are refused UNAVAILABLE."""
        self._core.refuse_new()

    def stop(self, reason: str = WORKER_STOPPING) -> None:
        """Ends every call UNAVAILABLE (`reason`), abandoning those running,
        and the connection. On the loop, once the worker's grace is over:
        their statuses go out only if the connection takes them at once (a
        client that does not read sees the connection close instead)."""
        calls = self._core.stop()
        ended = b"".join(
            status_frame(call, grpc.StatusCode.UNAVAILABLE, reason) for call, _ in calls
        )
        for _, method in calls:
            logger.info("%s cancelled: %s", method, reason)
        self._write_ended(ended)
        self._close()

    # ---- the threads ----

    def _add_threads(self, count: int, *, reserved: bool = False) -> None:
        """Starts `count` threads (reserved from the core already, or not)."""
        for _ in range(count):
            if not reserved and not self._core.reserve_thread():
                return
            thread = threading.Thread(target=self._serve, name="synapse-lane-sync", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                # The system refused a thread: the calls wait for those there are.
                logger.warning("cannot start a thread for a lane connection: %s", exc)
                self._core.thread_failed()

    def _serve(self) -> None:
        core = self._core
        methods = self._methods
        context = self._context
        loop = self._loop
        max_bytes = self.max_message_bytes
        work: Any = None
        # A frame that ended a call has been written: counted with the next
        # thing to do, under one taking of the core's mutex.
        written = False
        try:
            while True:
                work = core.next(written)
                written = False
                if work is None:
                    return
                if work is True:
                    self._read()
                    work = None
                    continue
                call, method, message = work
                data, ended = run_call(
                    methods[method], call, method, message, context, loop, max_bytes
                )
                frame = core.finish(call, data, ended)
                work = None
                if frame is not None:
                    written = True
                    self._write(frame)
        except BaseException:
            # Our own failure, never the function's (`run_call` holds those):
            # the connection cannot be trusted to answer any more.
            logger.exception("a thread serving a lane connection failed")
            core.thread_failed(reading=work is True, written=written)
            self._close()

    def _read(self) -> None:
        """Reads what the connection has (waiting for it), and hands it to the core."""
        data, self._handed = self._handed, b""
        if not data:
            try:
                data = self._ends.read(READ_BYTES)
            except OSError as exc:
                logger.debug("reading a lane connection failed: %s", exc)
        if not data:  # the client left, or we stop
            self._core.read_nothing()
            self._close()
            return
        try:
            taken = self._core.take(data)
        except ProtocolError as exc:
            logger.warning("closing a lane connection: %s", exc)
            self._close()
            return
        if taken is not None:
            refused, cancelled = taken
            for method in cancelled:
                logger.info("%s cancelled: the client cancelled or left", method)
            if refused:
                self._ended_written(
                    b"".join(
                        refusal(call, reason, method, size, self.max_message_bytes)
                        for call, reason, method, size in refused
                    )
                )
        if self._core.closed:
            self._close()

    def _watch(self) -> None:
        """The watcher (see the module doc of `_lane_threads`)."""
        core = self._core
        while core.watch():
            time.sleep(TICK)
            expired, more = core.check()
            if more:
                self._add_threads(more, reserved=True)
            if expired:
                for _, method in expired:
                    logger.info("%s cancelled: %s", method, DEADLINE_EXCEEDED[1])
                self._ended_written(
                    b"".join(status_frame(call, *DEADLINE_EXCEEDED) for call, _ in expired)
                )

    # ---- the socket or pipes ----

    def _ended_written(self, data: bytes) -> None:
        """Writes `data`, frames that end calls (counted as one in the core
        when they were made), then counts them written: `drained` is
        settled only once they are."""
        try:
            self._write(data)
        finally:
            self._core.written()

    def _close(self) -> None:
        """Takes no more frames (see `_lane_core.Core.close`); the
        connection shut (a thread blocked reading it wakes: it calls this
        again) and, once nobody reads it, closed."""
        self._let_go(*self._core.close())


Connection = type[CoreConnection] | type[ThreadedConnection]


def connection() -> Connection:
    """The connection class a worker serves its threads' connections with:
    `CoreConnection` where `_lane_core` loads, else `ThreadedConnection`."""
    return ThreadedConnection if _lane_core is None else CoreConnection
