"""The threads of sync tools and Bridge functions: bounded, and the stuck ones counted and
reported through health."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import operator
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from conftest import AgentClient
from synapse_python import Worker, _threads
from synapse_python._threads import SyncThreads, any_busy, track_busy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_call_abandoned_while_it_runs_is_stuck_until_it_returns() -> None:
    changes: list[int] = []
    threads = SyncThreads(on_stuck=changes.append)
    started, release, blocked = _blocking()
    running = threads.submit(blocked)
    assert started.wait(10)
    assert running.cancel() is False  # a running thread cannot be stopped
    assert running.cancel() is False  # counted once
    assert threads.stuck == 1
    release.set()
    assert running.result(10) == "done"
    assert threads.stuck == 0
    assert changes == [1, 0]


def test_a_thread_running_a_call_is_busy_until_it_waits_for_the_next() -> None:
    # What the worker's event loop asks before it polls (`_busy_wait`).
    threads = SyncThreads()
    assert threads.busy == 0
    started, release, blocked = _blocking()
    running = threads.submit(blocked)
    assert started.wait(10)
    assert threads.busy == 1
    assert any_busy()
    release.set()
    assert running.result(10) == "done"
    deadline = time.monotonic() + 10
    while threads.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    assert threads.busy == 0  # waiting for a call: it wants no GIL


def test_busy_threads_are_counted_for_as_long_as_their_holder_lives() -> None:
    class Holder:
        busy = 0

    holder = Holder()
    track_busy(holder)
    (reference,) = [reference for reference in _threads._busy if reference() is holder]
    holder.busy = 2
    assert any_busy()
    del holder
    gc.collect()
    # Its weak reference went with it.
    assert reference not in _threads._busy


def test_a_call_cancelled_before_it_runs_never_runs() -> None:
    threads = SyncThreads(max_threads=1)
    release = threading.Event()
    first = threads.submit(release.wait, 10)
    waiting = threads.submit(lambda: pytest.fail("ran after its cancel"))
    assert waiting.cancel() is True
    release.set()
    assert first.result(10) is True
    assert threads.stuck == 0


def test_calls_beyond_max_threads_wait_for_a_thread() -> None:
    threads = SyncThreads(max_threads=2)
    inside = threading.Semaphore(0)
    release = threading.Event()
    peak = 0
    lock = threading.Lock()
    active = 0

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        inside.release()
        release.wait(10)
        with lock:
            active -= 1

    futures = [threads.submit(work) for _ in range(5)]
    assert inside.acquire(timeout=10) and inside.acquire(timeout=10)
    release.set()
    for future in futures:
        future.result(10)
    assert peak == 2


def _blocking() -> tuple[threading.Event, threading.Event, Callable[[], str]]:
    """A function that says it started, then blocks until released."""
    started, release = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait(10)
        return "done"

    return started, release, blocked


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_run_awaits_the_function_in_a_thread_in_a_copy_of_the_callers_context() -> None:
    threads = SyncThreads()
    _SEEN.set("caller")

    def work(a: int, *, b: int) -> tuple[int, str, bool]:
        seen = _SEEN.get()
        _SEEN.set("thread")  # not seen by the caller
        return a + b, seen, threading.current_thread() is threading.main_thread()

    assert await threads.run(work, 1, b=2) == (3, "caller", False)
    assert _SEEN.get() == "caller"

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await threads.run(fail)

    def stop() -> None:
        raise StopIteration("done")

    # A future cannot carry StopIteration: it is a RuntimeError, as in a task.
    with pytest.raises(RuntimeError, match="StopIteration"):
        await threads.run(stop)


async def test_start_gives_a_later_the_loop_ends_and_whose_cancel_abandons_the_call() -> None:
    changes: list[int] = []
    threads = SyncThreads(on_stuck=changes.append)
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[Any, BaseException | None, bool]] = []

    def done(result: Any, failure: BaseException | None) -> None:
        # Called on the loop's own thread, straight from it.
        outcomes.append((result, failure, asyncio.get_running_loop() is loop))

    threads.start(lambda a, b: a * b, 6, 7).then(done)
    threads.start(operator.truediv, 1, 0).then(done)
    await wait_for(lambda: len(outcomes) == 2)
    [(product, no_failure, on_loop), (nothing, failure, also_on_loop)] = sorted(
        outcomes, key=lambda outcome: outcome[1] is not None
    )
    assert (product, no_failure, on_loop) == (42, None, True)
    assert (nothing, also_on_loop) == (None, True)
    assert isinstance(failure, ZeroDivisionError)

    started, release, blocked = _blocking()
    running = threads.start(blocked)
    late: list[Any] = []
    running.then(lambda result, failure: late.append(result))
    assert await asyncio.to_thread(started.wait, 10)
    running.cancel()
    assert threads.stuck == 1
    release.set()
    await wait_for(lambda: threads.stuck == 0)
    await asyncio.sleep(0.05)
    assert late == []  # what an abandoned call returns is dropped
    assert changes == [1, 0]


async def test_a_later_hands_its_outcome_over_early_in_its_thread_then_to_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads = SyncThreads()
    loop_thread = threading.current_thread()
    seen: list[tuple[str, Any, type[BaseException] | None, bool]] = []
    lock = threading.Lock()

    def record(step: str) -> Callable[[Any, BaseException | None], None]:
        def hand(result: Any, failure: BaseException | None) -> None:
            with lock:
                seen.append(
                    (
                        step,
                        result,
                        type(failure) if failure else None,
                        threading.current_thread() is loop_thread,
                    )
                )

        return hand

    for count, function in enumerate((lambda: 42, lambda: 1 / 0), 1):
        call = threads.start(function)
        call.then_in_thread(record("early"))
        call.then(record("done"))
        await wait_for(lambda count=count: len(seen) == 2 * count)
    # Each outcome first in the worker's thread, then on the loop, both alike.
    assert seen == [
        ("early", 42, None, False),
        ("done", 42, None, True),
        ("early", None, ZeroDivisionError, False),
        ("done", None, ZeroDivisionError, True),
    ]

    # A call abandoned while it runs hands its outcome to neither.
    started, release, blocked = _blocking()
    running = threads.start(blocked)
    running.then_in_thread(record("early"))
    running.then(record("done"))
    assert await asyncio.to_thread(started.wait, 10)
    running.cancel()
    release.set()
    await wait_for(lambda: threads.stuck == 0)
    await asyncio.sleep(0.05)
    assert len(seen) == 4

    # An early hand-over that takes the outcome in full (it returns true):
    # no `done`, the loop is not woken for it.
    taken: list[Any] = []

    def take(result: Any, failure: BaseException | None) -> bool:
        taken.append(result)
        return True

    call = threads.start(lambda: "taken")
    call.then_in_thread(take)
    call.then(record("done"))
    await wait_for(lambda: taken == ["taken"])
    await asyncio.sleep(0.05)
    assert len(seen) == 4 and not threads._outcomes

    # An early hand-over that raises is logged; `done` still gets the outcome.
    def broken(result: Any, failure: BaseException | None) -> None:
        raise RuntimeError("a broken early callback")

    outcomes: list[Any] = []
    call = threads.start(lambda: "still")
    call.then_in_thread(broken)
    call.then(lambda result, failure: outcomes.append(result))
    await wait_for(lambda: outcomes == ["still"])
    assert "handing the outcome of" in caplog.text
    assert "a broken early callback" in caplog.text


async def test_a_done_that_raises_does_not_keep_the_outcomes_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads = SyncThreads(max_threads=1)
    release = threading.Event()
    outcomes: list[Any] = []

    def failing(result: Any, failure: BaseException | None) -> None:
        raise RuntimeError("a broken callback")

    first = threads.start(release.wait, 10)
    first.then(failing)
    second = threads.start(lambda: "second")
    second.then(lambda result, failure: outcomes.append(result))
    release.set()
    # Both outcomes wait for the loop, to be handed over together (the loop
    # is blocked meanwhile, on purpose).
    loop = asyncio.get_running_loop()
    _block_until(lambda: len(threads._outcomes.get(loop, ())) == 2)
    await wait_for(lambda: outcomes == ["second"])
    assert "handing back the outcome" in caplog.text


async def test_a_started_call_cancelled_before_it_runs_never_runs() -> None:
    threads = SyncThreads(max_threads=1)
    release = threading.Event()
    first = threads.start(release.wait, 10)
    outcomes: list[Any] = []
    first.then(lambda result, failure: outcomes.append(result))
    waiting = threads.start(lambda: pytest.fail("ran after its cancel"))
    waiting.then(lambda result, failure: outcomes.append("waiting"))
    waiting.cancel()
    release.set()
    await wait_for(lambda: outcomes == [True])
    assert await threads.run(lambda: "next") == "next"
    assert outcomes == [True]
    assert threads.stuck == 0


async def test_outcomes_that_come_back_together_wake_the_loop_once() -> None:
    threads = SyncThreads()
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback: Callable[..., object], *args: object) -> asyncio.Handle:
        wakes.append(callback)
        return call_soon_threadsafe(callback, *args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        calls = [asyncio.create_task(threads.run(pow, n, 2)) for n in range(8)]
        await asyncio.sleep(0)  # the calls are handed to the threads
        # The loop is blocked (no await) until every call's outcome is back.

        def handed_back() -> int:
            # Waiting for the loop, or each with a wake-up of its own.
            return max(len(getattr(threads, "_outcomes", {}).get(loop, ())), len(wakes))

        _block_until(lambda: handed_back() == 8)
        assert await asyncio.gather(*calls) == [n * n for n in range(8)]
        assert len(wakes) == 1
    finally:
        del loop.call_soon_threadsafe


async def test_a_run_cancelled_while_it_runs_is_stuck_until_it_returns() -> None:
    changes: list[int] = []
    threads = SyncThreads(on_stuck=changes.append)
    started, release, blocked = _blocking()
    call = asyncio.create_task(threads.run(blocked))
    assert await asyncio.to_thread(started.wait, 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert threads.stuck == 1
    release.set()
    await wait_for(lambda: threads.stuck == 0)
    assert changes == [1, 0]


async def test_a_run_cancelled_before_it_starts_never_runs() -> None:
    threads = SyncThreads(max_threads=1)
    release = threading.Event()
    ran: list[str] = []
    first = asyncio.create_task(threads.run(release.wait, 10))
    waiting = asyncio.create_task(threads.run(ran.append, "ran after its cancel"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await first is True
    # The one thread served the cancelled call too (by skipping it): it is free.
    assert await threads.run(lambda: "next") == "next"
    assert ran == []
    assert threads.stuck == 0


async def test_a_worker_past_its_stuck_threads_limit_reports_not_serving(tmp_path: Path) -> None:
    worker = Worker(max_stuck_threads=1)
    await worker.load_agent("stuck", "synapse_fixtures.faults:stuck_tool_agent")
    address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)

            async def health() -> int:
                request = health_pb2.HealthCheckRequest(service="")
                return (await client.health.Check(request, timeout=5)).status

            async def time_out() -> None:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await client.run_sync("stuck", "3", timeout=0.3)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            await time_out()
            await wait_for(lambda: worker.stuck_threads == 1)
            assert await health() == SERVING
            await time_out()
            await wait_for(lambda: worker.stuck_threads == 2)
            await wait_for_async(lambda: health(), NOT_SERVING)
            # The tools return at last: the worker is healthy again.
            await wait_for(lambda: worker.stuck_threads == 0, seconds=10)
            await wait_for_async(lambda: health(), SERVING)
    finally:
        await worker.stop(grace=0)


def _block_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Waits for `condition` without yielding: blocks the event loop, on purpose."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


async def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (a counter of threads, not of tasks)
            await asyncio.sleep(0.02)


async def wait_for_async(read: Callable[[], Awaitable[int]], expected: int) -> None:
    async with asyncio.timeout(5):
        while await read() != expected:  # noqa: ASYNC110 (polls the health service)
            await asyncio.sleep(0.02)


def _one_idle_thread(threads: SyncThreads) -> None:
    """Waits until the pool has one thread, idle."""
    assert threads.submit(lambda: None).result(10) is None
    deadline = time.monotonic() + 10
    while (threads._threads, threads._idle) != (1, 1) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert (threads._threads, threads._idle) == (1, 1)


async def test_calls_put_at_the_same_moment_each_get_a_thread() -> None:
    # As the lane starts the calls of one read: the second must not count on
    # the idle thread the first one takes, and wait behind a call that blocks.
    threads = SyncThreads(max_threads=4)
    await asyncio.to_thread(_one_idle_thread, threads)
    release = threading.Event()
    quick = asyncio.Event()
    threads.start(release.wait, 30).then(lambda result, failure: None)
    threads.start(lambda: "quick").then(lambda result, failure: quick.set())
    try:
        await asyncio.wait_for(quick.wait(), 5)
    finally:
        release.set()
    assert threads._threads == 2


def test_a_call_whose_thread_cannot_start_is_refused_and_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = SyncThreads(max_threads=1)
    start = threading.Thread.start
    refused: list[threading.Thread] = []
    ran: list[str] = []

    def refuse_once(thread: threading.Thread) -> None:
        if not refused:
            refused.append(thread)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_once)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        threads.submit(ran.append, "first")
    # The refused call is not run later, and the pool is not left full.
    assert threads.submit(lambda: "second").result(5) == "second"
    assert ran == []


def test_on_stuck_hears_the_changes_in_the_order_they_are_made() -> None:
    heard: list[int] = []
    started, release = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait(10)
        return "done"

    def on_stuck(stuck: int) -> None:
        if stuck == 1:
            # The call returns while the pool tells of it being stuck: its
            # return is told after.
            release.set()
            deadline = time.monotonic() + 0.5
            while 0 not in heard and time.monotonic() < deadline:
                time.sleep(0.001)
        heard.append(stuck)

    threads = SyncThreads(on_stuck=on_stuck)
    running = threads.submit(blocked)
    assert started.wait(10)
    running.cancel()
    assert running.result(10) == "done"
    deadline = time.monotonic() + 10
    while len(heard) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert heard == [1, 0]
    assert threads.stuck == 0


def test_outcomes_for_a_loop_closed_before_it_took_them_are_let_go() -> None:
    threads = SyncThreads()

    def outcome_for_a_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        returns = threading.Event()

        async def start() -> None:
            threads.start(returns.wait, 10).then(lambda result, failure: None)

        loop.run_until_complete(start())
        returns.set()  # the loop no longer runs: the outcome waits for it
        deadline = time.monotonic() + 10
        while loop not in threads._outcomes and time.monotonic() < deadline:
            time.sleep(0.001)
        assert loop in threads._outcomes
        return loop

    closed = outcome_for_a_loop()
    closed.close()  # its `_settle_all` never runs
    other = outcome_for_a_loop()  # the next outcome lets the closed loop's go
    assert closed not in threads._outcomes
    other.close()
