"""The threads a worker runs sync user code in: tools, Bridge functions, pydantic-ai callbacks.

pydantic-ai runs a plain `def` tool in a thread, and the Bridge a plain `def`
function. When the call that waits for it ends first (its deadline passed, it
was cancelled), it stops waiting, but Python cannot stop a thread: the
function goes on until it returns, forever if it never does. `SyncThreads`
holds these threads so that they are bounded and counted:

* at most `max_threads` threads run functions; more calls wait for one;
* a call waits for a thread only when every thread is busy: calls put at the
  same moment each count on an idle thread of their own, or start one;
* a thread whose call was abandoned while still running is *stuck* until it
  returns; `on_stuck` hears of every change of their number, in order, from
  whichever thread it happens in (under the pool's lock: it must not call
  the pool);
* its threads are daemon threads: a stuck one never keeps the worker from
  exiting.

It is the executor the worker gives pydantic-ai (`Agent.using_thread_executor`),
coroutines await a function in it with `run` (the Bridge's sync functions on
the gRPC path), and code that must not wait in a task hands it over with
`start` (the same functions on the lane), whose `Later` has its callback
called straight from the loop, with no future in between. Either hands the
outcome back to the event loop in one `call_soon_threadsafe`:
no `concurrent.futures.Future` chained to an asyncio one, as
`asyncio.to_thread` does, whose callbacks and locks cost more CPU than the
hop itself, most of all with many calls in flight. Outcomes that come back
before the loop has run that callback join it: with many calls in flight
the loop is woken once for several of them, not once each. A `Later`'s
holder may also take the outcome in the thread itself (`then_in_thread`),
before the loop hears of it: the lane writes a Bridge call's answer from
there, and when that was all there was to do the loop is not woken at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Protocol

from synapse_python._awaitables import Later

logger = logging.getLogger("synapse_python.threads")

DEFAULT_MAX_THREADS = 40
"""As many as anyio's default thread limiter, which pydantic-ai uses otherwise."""

_IDLE_TIMEOUT = 60.0
"""Seconds an idle thread waits for work before it ends."""


class _ToolFuture(Future):  # type: ignore[type-arg]
    """A submitted call's future; cancelling it while it runs abandons its thread."""

    def __init__(self, threads: SyncThreads) -> None:
        super().__init__()
        self._threads = threads
        self.abandoned = False

    def cancel(self) -> bool:
        if super().cancel():
            return True
        self._threads._abandon(self)
        return False


class _Call(Later):
    """A call awaited by a coroutine (`SyncThreads.run`: its `waiter`), or
    handed back by `SyncThreads.start` (a `Later`: its `done`); its flags
    change under the pool's lock."""

    __slots__ = (
        "abandoned",
        "args",
        "context",
        "done",
        "early",
        "fn",
        "kwargs",
        "loop",
        "running",
        "threads",
        "waiter",
    )

    def __init__(
        self,
        threads: SyncThreads,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[Any] | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.threads = threads
        self.loop = loop
        self.waiter = waiter
        self.done: Callable[[Any, BaseException | None], None] | None = None
        self.early: Callable[[Any, BaseException | None], bool] | None = None
        # The caller's context variables, as `asyncio.to_thread` gives them.
        self.context = contextvars.copy_context()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.running = False
        # Its caller no longer waits: it is not run, or, if running, stuck.
        self.abandoned = False

    def then(self, done: Callable[[Any, BaseException | None], None]) -> None:
        self.done = done

    def then_in_thread(self, early: Callable[[Any, BaseException | None], bool]) -> None:
        self.early = early

    def cancel(self) -> None:
        self.threads._abandon(self)


class Busy(Protocol):
    """Threads of this process that run user code (a pool, the lane's threads)."""

    @property
    def busy(self) -> int:
        """How many of them are running a call (or about to take one)."""
        ...


_busy: set[weakref.ref[Busy]] = set()
"""Every pool of this process, and every other holder of threads running
user code, for `any_busy`: weak references, each of which removes itself
once its holder is gone. (Not a `WeakSet`, whose iteration, in Python,
cost several times this whole check, which runs before each poll of the
worker's selectors.)"""


def track_busy(threads: Busy) -> None:
    """Counts `threads` in `any_busy`, for as long as they are referenced."""
    _busy.add(weakref.ref(threads, _busy.discard))


def any_busy() -> bool:
    """Whether a thread of any pool of this process (or of the lane's) is
    running a call (or about to take one), and so may want the GIL."""
    for reference in tuple(_busy):  # a copy: another thread may add one
        threads = reference()
        if threads is not None and threads.busy:
            return True
    return False


_Outcome = tuple[_Call, Any, BaseException | None]
"""A call, and what its function returned or raised."""

_Work = tuple[_ToolFuture, Callable[..., Any], tuple[Any, ...], dict[str, Any]] | _Call


class SyncThreads(Executor):
    """A bounded pool of daemon threads that counts the stuck ones (see the module doc)."""

    def __init__(
        self,
        max_threads: int = DEFAULT_MAX_THREADS,
        on_stuck: Callable[[int], None] | None = None,
    ) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._max_threads = max_threads
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        # Signalled for each call put while a thread waits, and at shutdown.
        self._ready = threading.Condition(self._lock)
        self._work: collections.deque[_Work] = collections.deque()
        self._threads = 0
        # Threads waiting for a call, and how many of them a call put since
        # counts on (signalled, not yet awake): a call counts on an idle
        # thread only if one is left that no other call counts on.
        self._idle = 0
        self._wakeups = 0
        self._stuck = 0
        self._shut_down = False
        # Outcomes on their way back to each event loop, handed over in one
        # `call_soon_threadsafe` for all those that finish before it runs.
        self._outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        track_busy(self)

    @property
    def busy(self) -> int:
        """Threads not waiting for a call: running one, or about to take one
        (read without the lock: a moment's view)."""
        return self._threads - self._idle

    @property
    def stuck(self) -> int:
        """Threads still running a call that nobody waits for any more."""
        return self._stuck

    @property
    def max_threads(self) -> int:
        """The most threads that run functions at once."""
        return self._max_threads

    def count_stuck(self, change: int) -> None:
        """Counts a thread that is not the pool's but runs its worker's
        functions (the lane's threads) as stuck (`change` 1) or no longer
        (-1), with the pool's own: `on_stuck` hears of it the same way."""
        with self._lock:
            self._stuck += change
            self._notify()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[type-arg]
        future = _ToolFuture(self)
        self._put((future, fn, args, kwargs))
        return future

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in one of the threads, in a copy of the caller's context.

        Cancelling the awaiting task abandons the call: one still waiting for
        a thread never runs; one running is stuck until it returns, and what
        it returns is dropped.
        """
        loop = asyncio.get_running_loop()
        call = _Call(self, loop, loop.create_future(), fn, args, kwargs)
        self._put(call)
        try:
            return await call.waiter
        except asyncio.CancelledError:
            self._abandon(call)
            raise

    def start(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Later:
        """`fn(*args, **kwargs)` in one of the threads, in a copy of the caller's
        context: a `Later` whose `done` the running loop calls with what it
        returns or raises, with no future or scheduled callback in between.

        Its `cancel` abandons the call, as cancelling `run`'s task does.
        """
        call = _Call(self, asyncio.get_running_loop(), None, fn, args, kwargs)
        self._put(call)
        return call

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and let idle threads end (once the calls put
        before are served); never waits for a stuck one."""
        with self._lock:
            self._shut_down = True
            self._ready.notify_all()

    def _put(self, work: _Work) -> None:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run a function after the worker stopped")
            self._work.append(work)
            if self._idle > self._wakeups:
                self._wakeups += 1
                self._ready.notify()
            elif self._threads < self._max_threads:
                thread = threading.Thread(target=self._serve, name="synapse-sync", daemon=True)
                try:
                    thread.start()
                except BaseException:
                    # No thread (the system refused one): nor the call.
                    self._work.pop()
                    raise
                self._threads += 1

    def _serve(self) -> None:
        while (work := self._next()) is not None:
            if isinstance(work, _Call):
                self._call(work)
            else:
                self._submitted(*work)
            del work

    def _next(self) -> _Work | None:
        """The next call for this thread, waited for while there is none;
        None when the thread is to end (idle too long, or the pool shut down)."""
        with self._lock:
            while not self._work:
                if self._shut_down:
                    break
                self._idle += 1
                signalled = self._ready.wait(_IDLE_TIMEOUT)
                self._idle -= 1
                # However it woke, it is no longer idle: a call counting on it
                # is taken by whichever thread looks first.
                self._wakeups = min(self._wakeups, self._idle)
                if not signalled and not self._work:
                    break
            else:
                return self._work.popleft()
            self._threads -= 1
            return None

    def _submitted(
        self,
        future: _ToolFuture,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            del fn, args, kwargs
        self._finished(future)

    def _call(self, call: _Call) -> None:
        with self._lock:
            if call.abandoned:
                return
            call.running = True
        try:
            result, failure = call.context.run(call.fn, *call.args, **call.kwargs), None
        except BaseException as exc:
            result, failure = None, as_failure(exc)
        if self._finished(call):
            return
        if call.early is not None:
            try:
                if call.early(result, failure):
                    return  # taken in full here: the loop is not woken for it
            except Exception:
                # The loop still hands the outcome to `done`.
                logger.exception("handing the outcome of %r over early failed", call.fn)
        loop = call.loop
        if loop.is_closed():
            return  # nobody waits any more
        with self._lock:
            outcomes = self._outcomes.get(loop)
            if outcomes is not None:
                outcomes.append((call, result, failure))
                return
            # Those of a loop closed before it ran `_settle_all` wait for nobody.
            for closed in [other for other in self._outcomes if other.is_closed()]:
                del self._outcomes[closed]
            self._outcomes[loop] = [(call, result, failure)]
        try:
            loop.call_soon_threadsafe(self._settle_all, loop)
        except RuntimeError:
            # The loop is closed: nobody waits any more.
            with self._lock:
                self._outcomes.pop(loop, None)

    def _settle_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: the outcomes that came back for it since it was last woken."""
        with self._lock:
            outcomes = self._outcomes.pop(loop, [])
        for call, result, failure in outcomes:
            if call.waiter is not None:
                _settle(call.waiter, result, failure)
            elif call.done is not None and not call.abandoned:
                try:
                    call.done(result, failure)
                except Exception:
                    # As asyncio does for a future's callback: the outcomes
                    # after it are still handed over.
                    logger.exception("handing back the outcome of %r failed", call.fn)

    def _abandon(self, work: _ToolFuture | _Call) -> None:
        """Nobody waits for `work` any more: one not started never will be, one running is stuck."""
        with self._lock:
            if isinstance(work, _Call):
                running = work.running  # cleared by `_finished`, under this lock
            elif work.running():
                running = True
            else:
                return  # done: its thread may be on its way into `_finished`
            if work.abandoned:
                return
            work.abandoned = True
            if not running:
                return
            self._stuck += 1
            self._notify()

    def _finished(self, work: _ToolFuture | _Call) -> bool:
        """`work` returned: true when nobody waited for it any more (its thread was stuck)."""
        with self._lock:
            if isinstance(work, _Call):
                work.running = False
            if not work.abandoned:
                return False
            self._stuck -= 1
            self._notify()
        return True

    def _notify(self) -> None:
        """Tells `on_stuck` the number of stuck threads; under the lock, so
        that it hears the changes in the order they were made."""
        if self._on_stuck is None:
            return
        try:
            self._on_stuck(self._stuck)
        except Exception:
            # The pool's thread goes on, and so does the call it ran.
            logger.exception("on_stuck failed")


def _settle(waiter: asyncio.Future[Any], result: Any, failure: BaseException | None) -> None:
    """Hand a call's outcome to the coroutine awaiting it, unless it stopped waiting."""
    if waiter.cancelled():
        return
    if failure is None:
        waiter.set_result(result)
    else:
        waiter.set_exception(failure)


def as_failure(exc: BaseException) -> Exception:
    """What a function run by `run` or `start` raised, as its caller is handed
    it: an exception, or a RuntimeError saying what was raised when that
    would mean something else there: StopIteration (an asyncio future
    cannot hold it; tasks turn it into a RuntimeError too), and what is not
    an Exception: a CancelledError (the call would look cancelled, and
    never end), SystemExit (the worker would stop), KeyboardInterrupt."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    return RuntimeError(f"the function raised {type(exc).__name__}: {exc}")
