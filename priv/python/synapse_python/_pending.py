"""Requests one run sends the client and whose answers it awaits, by request id.

Client tools (`_client_tools`) and inline approvals (`_approvals`) both ask
the client something over the run's stream and wait: a request id is taken
("1", "2", ... per kind of request), a future registered under it, the
request sent, and the future awaited until the run's input hands the
answer to `answer`. The future is dropped when the wait ends in any way
(answered, or its task cancelled with the run), so nothing outlives the
run; `close` cancels any left over.

Everything runs on the event loop's thread: no lock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from synapse_python import _errors


class PendingRequests:
    """The requests of one kind (`what`, e.g. "tool requests") awaiting the client's answer."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._input_closed = False

    async def ask(self, send: Callable[[str], Awaitable[None]], refused: str) -> Any:
        """Send a request with `send(request_id)` and return its answer.

        Raises INVALID_ARGUMENT with `refused` when the client has half-closed
        (it can no longer answer).
        """
        if self._input_closed:
            raise _errors.invalid_argument(refused)
        request_id = str(next(self._ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await send(request_id)
            return await future
        finally:
            if self._pending.get(request_id) is future:
                del self._pending[request_id]
            future.cancel()  # a no-op once it has its result

    def answer(self, request_id: str, value: Any) -> bool:
        """Complete the request `request_id` with `value`; False when none is pending."""
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True

    def is_pending(self, request_id: str) -> bool:
        future = self._pending.get(request_id)
        return future is not None and not future.done()

    def input_closed(self) -> None:
        """The client half-closed: no answer can come any more.

        Raises INVALID_ARGUMENT if requests are pending; later requests raise it too.
        """
        self._input_closed = True
        if self._pending:
            pending = ", ".join(repr(request_id) for request_id in self._pending)
            raise _errors.invalid_argument(
                f"the client half-closed the Run with {self._what} unanswered: {pending}"
            )

    def close(self) -> None:
        """Cancel every pending request (the run is over)."""
        pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.cancel()
