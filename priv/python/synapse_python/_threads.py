"""The threads a worker runs sync tools (and other sync callbacks of pydantic-ai) in.

pydantic-ai runs a plain `def` tool in a thread. When its run ends first (its
deadline passed, it was cancelled), the run stops waiting, but Python cannot
stop a thread: the tool goes on until it returns, forever if it never does.
`ToolThreads` is the executor the worker gives pydantic-ai
(`Agent.using_thread_executor`) so that such threads are bounded and counted:

* at most `max_threads` threads run callbacks; more calls wait for one;
* a thread whose call was abandoned by its run while still running is *stuck*
  until it returns; `on_stuck` hears of every change of their number, from
  whichever thread it happens in;
* its threads are daemon threads: a stuck one never keeps the worker from
  exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

DEFAULT_MAX_THREADS = 40
"""As many as anyio's default thread limiter, which pydantic-ai uses otherwise."""

_IDLE_TIMEOUT = 60.0
"""Seconds an idle thread waits for work before it ends."""

_Work = tuple["_ToolFuture", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _ToolFuture(Future):  # type: ignore[type-arg]
    """A call's future; cancelling it while it runs abandons its thread (see `ToolThreads`)."""

    def __init__(self, threads: ToolThreads) -> None:
        super().__init__()
        self._threads = threads
        self.abandoned = False

    def cancel(self) -> bool:
        if super().cancel():
            return True
        self._threads._abandon(self)
        return False


class ToolThreads(Executor):
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
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._stuck = 0
        self._shut_down = False

    @property
    def stuck(self) -> int:
        """Threads still running a call whose run no longer waits for it."""
        return self._stuck

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[type-arg]
        future = _ToolFuture(self)
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run a tool after the worker stopped")
            self._work.put((future, fn, args, kwargs))
            if self._idle == 0 and self._threads < self._max_threads:
                self._threads += 1
                threading.Thread(target=self._serve, name="synapse-tool", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and let idle threads end; never waits for a stuck one."""
        with self._lock:
            self._shut_down = True
            threads = self._threads
        for _ in range(threads):
            self._work.put(None)

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                work = self._work.get(timeout=_IDLE_TIMEOUT)
            except queue.Empty:
                work = None
            with self._lock:
                self._idle -= 1
                if work is None:
                    # Work put while this thread was deciding to go is still served.
                    if self._work.empty() or self._shut_down:
                        self._threads -= 1
                        return
                    continue
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                del work, fn, args, kwargs
            self._finished(future)

    def _abandon(self, future: _ToolFuture) -> None:
        with self._lock:
            if future.abandoned or not future.running():
                return
            future.abandoned = True
            self._stuck += 1
            stuck = self._stuck
        self._notify(stuck)

    def _finished(self, future: _ToolFuture) -> None:
        with self._lock:
            if not future.abandoned:
                return
            self._stuck -= 1
            stuck = self._stuck
        self._notify(stuck)

    def _notify(self, stuck: int) -> None:
        if self._on_stuck is not None:
            self._on_stuck(stuck)
