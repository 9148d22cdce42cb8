"""A worker's event loop that polls a moment before it sleeps.

A process that sleeps between two calls pays to be woken for the next one:
the kernel's wake-up, and on a virtual machine the halted vCPU's exit and
re-entry, often more than a short call costs itself, on both sides (the
sender pays for waking the sleeper). When calls come back to back (a caller
with one call in flight, an Elixir tool's result coming back mid-run), the
next one arrives within tens of microseconds: polling for it that long,
instead of sleeping, saves the wake-up.

`BusyWaitSelector` does that where it is likely to pay, and only there:

* for at most its budget per wait, then it sleeps as before;
* once a wait has ended within the budget, and until three polls in a row
  have come up empty (a worker idle between bursts, or with no traffic at
  all, sleeps at once and spends nothing);
* while the loop waits at least as long as it works in between: a loop
  busy most of the time (many calls in flight) waits a few microseconds at
  a time while the cores are busy too, when a sleep costs little and
  polling would take a core from whoever makes the next call;
* never while a thread of the worker runs user code (a sync tool or Bridge
  function), which polling would take the GIL from; and between two polls
  it lets any thread waiting for its core go first (`sched_yield`).

The thread that reads a lane connection of sync Bridge calls
(`_lane_threads`) waits on one as well, under the same rules.

The BEAM's schedulers do the same before they sleep (`+sbwt`).
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable
from typing import Any

from synapse_python._proto.synapse.v1 import agent_pb2

BUSY_WAIT_ENV = "SYNAPSE_BUSY_WAIT_US"
DEFAULT_BUSY_WAIT_US: int = agent_pb2.LIMIT_DEFAULT_BUSY_WAIT_US
MAX_BUSY_WAIT_US: int = agent_pb2.LIMIT_MAX_BUSY_WAIT_US

_Events = list[tuple[selectors.SelectorKey, int]]


class BusyWaitSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector, polling for up to `budget` seconds
    before a wait that would block (see the module doc).

    `may_poll` says whether polling is allowed now (it is asked once per
    wait); `clock` is the time in seconds (monotonic).
    """

    def __init__(
        self,
        budget: float,
        may_poll: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if budget < 0:
            raise ValueError("the busy-wait budget must not be negative")
        self._budget = budget
        self._may_poll = may_poll
        self._clock = clock
        # Polls in a row that may still come up empty: full after one that
        # found something, one after a sleep that ended within the budget (its
        # length counts the wake-up polling saves: one is enough to try).
        self._credit = 0
        # When the last wait ended, and how long it was: the loop polls only
        # while it waits at least as long as it works in between.
        self._ended = 0.0
        self._waited = 0.0

    def select(self, timeout: float | None = None) -> _Events:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)  # a poll already: something is ready
        clock = self._clock
        started = clock()
        if self._credit and self._waited >= started - self._ended and self._may_poll():
            ready = self._poll(started, timeout)
        else:
            ready = super().select(timeout)
            if ready and self._budget and clock() - started < self._budget:
                self._credit = max(self._credit, 1)
        self._ended = clock()
        self._waited = self._ended - started
        return ready

    def _poll(self, started: float, timeout: float | None) -> _Events:
        """Polls for up to the budget, then waits for the rest of `timeout`."""
        clock = self._clock
        budget = self._budget if timeout is None else min(self._budget, timeout)
        until = started + budget
        while True:
            ready = super().select(0)
            if ready:
                self._credit = _FULL_CREDIT
                return ready
            now = clock()
            if now >= until:
                break
            _let_others_run()
        self._credit -= 1
        if timeout is not None:
            timeout -= now - started
            if timeout <= 0:
                return []  # a timer is due: the loop runs it
        return super().select(timeout)


_let_others_run: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
"""Between two polls: a thread waiting for this core (the BEAM's, making the
next call) goes first."""

_FULL_CREDIT = 3
"""Polls in a row that may come up empty once one found something: a burst
of calls survives a late one, and an idle worker stops polling after three."""


def busy_wait_from_env(environ: Any = os.environ) -> int:
    """The busy-wait budget in microseconds `SYNAPSE_BUSY_WAIT_US` asks for
    (the default when unset); a value that is not an integer from 0 to
    `MAX_BUSY_WAIT_US` is refused with a ValueError saying so."""
    raw = environ.get(BUSY_WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_WAIT_US
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_BUSY_WAIT_US:
        raise ValueError(
            f"{BUSY_WAIT_ENV} must be an integer from 0 to {MAX_BUSY_WAIT_US} "
            f"(microseconds), got {raw!r}"
        )
    return int(raw)
