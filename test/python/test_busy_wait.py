"""The worker's event loop polls a moment before it sleeps, where that pays (`_busy_wait`)."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from synapse_python import _busy_wait
from synapse_python._busy_wait import (
    BUSY_WAIT_ENV,
    DEFAULT_BUSY_WAIT_US,
    MAX_BUSY_WAIT_US,
    BusyWaitSelector,
    busy_wait_from_env,
)
from synapse_python._proto.synapse.v1 import agent_pb2

BUDGET = 100e-6


class _Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Platform(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """What the busy-wait selector asks of the platform's selector: each
    timeout, in order; `on_poll` runs before each poll (a timeout of 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.on_poll: Callable[[int], None] = lambda count: None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        if timeout == 0:
            self.on_poll(self.timeouts.count(0))
        return super().select(timeout)


class _Probe(BusyWaitSelector, _Platform):
    """A busy-wait selector over `_Platform` (next in the method order)."""


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair: the selector watches the first, the test writes to the second."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def _probe(
    ours: socket.socket, may_poll: Callable[[], bool] = lambda: True
) -> tuple[_Probe, _Clock]:
    clock = _Clock()
    probe = _Probe(BUDGET, may_poll=may_poll, clock=clock)
    probe.register(ours, selectors.EVENT_READ)
    return probe, clock


def _short_wait(probe: _Probe, pair: tuple[socket.socket, socket.socket]) -> None:
    """A wait that ends at once (the call was already there), then no record of it."""
    ours, theirs = pair
    theirs.send(b"x")
    assert probe.select(None)
    ours.recv(16)
    probe.timeouts.clear()


def _ticking(probe: _Probe, clock: _Clock, step: float) -> None:
    """Each poll takes `step` seconds from now on (and finds nothing)."""

    def tick(count: int) -> None:
        clock.now += step

    probe.on_poll = tick


def _hit(probe: _Probe, clock: _Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    """A wait whose second poll finds the call (a microsecond after the first)."""
    ours, theirs = pair

    def arrive(count: int) -> None:
        clock.now += 1e-6
        if count == 2:
            theirs.send(b"x")

    probe.on_poll = arrive
    assert probe.select(1.0)  # not forever: a selector that sleeps would wait
    assert probe.timeouts == [0, 0]
    ours.recv(16)
    probe.timeouts.clear()
    probe.on_poll = lambda count: None


def test_a_new_selector_sleeps_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    probe, _clock = _probe(pair[0])
    assert probe.select(0.001) == []
    assert probe.timeouts == [0.001]


def test_after_a_short_wait_it_polls_and_returns_what_a_poll_finds(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = pair
    probe, clock = _probe(ours)
    yielded: list[None] = []
    monkeypatch.setattr(_busy_wait, "_let_others_run", lambda: yielded.append(None))
    _short_wait(probe, pair)

    def arrive(count: int) -> None:
        clock.now += 1e-6
        if count == 3:
            theirs.send(b"y")

    probe.on_poll = arrive
    [(key, events)] = probe.select(1.0)
    assert key.fileobj is ours and events == selectors.EVENT_READ
    # Three polls and no sleep; between two polls, others go first.
    assert probe.timeouts == [0, 0, 0]
    assert len(yielded) == 2


def test_it_polls_for_its_budget_at_most_then_sleeps_for_the_rest_of_the_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    probe, clock = _probe(pair[0])
    _short_wait(probe, pair)
    _ticking(probe, clock, 30e-6)
    assert probe.select(0.002) == []
    *polls, sleep = probe.timeouts
    assert polls == [0, 0, 0, 0]  # 120 µs: past the budget
    assert sleep == pytest.approx(0.002 - 120e-6)


def test_a_timer_due_within_the_budget_ends_the_wait_without_a_sleep(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    probe, clock = _probe(pair[0])
    _short_wait(probe, pair)
    _ticking(probe, clock, 30e-6)
    assert probe.select(50e-6) == []
    assert probe.timeouts == [0, 0]


def test_after_three_empty_polls_in_a_row_it_sleeps_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    probe, clock = _probe(pair[0])
    _short_wait(probe, pair)
    _hit(probe, clock, pair)  # full credit
    _ticking(probe, clock, 60e-6)
    for _ in range(3):
        probe.timeouts.clear()
        assert probe.select(0.001) == []
        assert probe.timeouts[:2] == [0, 0] and probe.timeouts[-1] != 0
    probe.timeouts.clear()
    assert probe.select(0.001) == []
    assert probe.timeouts == [0.001]


def test_a_loop_that_works_longer_than_it_waits_sleeps_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    probe, clock = _probe(pair[0])
    _short_wait(probe, pair)
    _hit(probe, clock, pair)  # it waited 2 µs
    clock.now += 50e-6  # then worked for 50
    _ticking(probe, clock, 60e-6)
    assert probe.select(0.001) == []
    assert probe.timeouts == [0.001]


def test_it_never_polls_while_a_thread_of_the_worker_runs_user_code(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    busy = True
    probe, clock = _probe(pair[0], may_poll=lambda: not busy)
    _short_wait(probe, pair)
    _ticking(probe, clock, 60e-6)
    assert probe.select(0.001) == []
    assert probe.timeouts == [0.001]
    busy = False  # the thread returned
    probe.timeouts.clear()
    assert probe.select(0.001) == []
    assert probe.timeouts[:2] == [0, 0]


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        BusyWaitSelector(-1e-6)


def test_an_event_loop_on_it_serves_a_connection_and_polls_for_its_calls() -> None:
    """Real time, a real loop: an echo peer in a thread answering 200 calls."""
    polls: list[int] = []
    selector = _Probe(1e-3)
    selector.on_poll = polls.append
    loop = asyncio.SelectorEventLoop(selector)
    ours, theirs = socket.socketpair()

    def echo() -> None:
        with theirs:
            while data := theirs.recv(16):
                theirs.sendall(data)

    peer = threading.Thread(target=echo)
    peer.start()

    async def calls() -> list[bytes]:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        answers = []
        for index in range(200):
            writer.write(b"%03d" % index)
            answers.append(await reader.readexactly(3))
        writer.close()
        await writer.wait_closed()
        return answers

    try:
        answers = loop.run_until_complete(calls())
    finally:
        loop.close()
        peer.join()
    assert answers == [b"%03d" % index for index in range(200)]
    assert polls  # it polled for the echoes rather than sleep for each


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DEFAULT_BUSY_WAIT_US),
        ("", DEFAULT_BUSY_WAIT_US),
        ("0", 0),
        (" 250\n", 250),
        ("10000", MAX_BUSY_WAIT_US),
    ],
)
def test_the_budget_comes_from_the_environment(value: str | None, expected: int) -> None:
    environ = {} if value is None else {BUSY_WAIT_ENV: value}
    assert busy_wait_from_env(environ) == expected


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "10001", "²", "1e3"])
def test_a_budget_that_is_not_a_number_of_microseconds_is_refused(value: str) -> None:
    with pytest.raises(ValueError) as raised:
        busy_wait_from_env({BUSY_WAIT_ENV: value})
    assert str(raised.value) == (
        f"SYNAPSE_BUSY_WAIT_US must be an integer from 0 to 10000 (microseconds), got {value!r}"
    )


def test_the_default_and_the_maximum_are_the_wire_contracts() -> None:
    assert DEFAULT_BUSY_WAIT_US == agent_pb2.LIMIT_DEFAULT_BUSY_WAIT_US == 100
    assert MAX_BUSY_WAIT_US == agent_pb2.LIMIT_MAX_BUSY_WAIT_US == 10_000
