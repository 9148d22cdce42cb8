"""What the threads of a lane connection of sync calls (`_lane_threads`)
read and write, blocking: its socket, or the two pipes its hello asked for
(`proto/synapse/v1/lane.proto`, "Pipes").

Either way, one thread at a time reads, writes go under the connection's
own lock, and `shut` wakes a thread blocked in either: on a socket,
shutting it down does; a pipe has no such thing, so the threads of a
connection on pipes wait on the pipe and its socket together, and `shut`
shuts the socket down. The client ends such a connection the same way, by
shutting its socket down.
"""

from __future__ import annotations

import os
import select
import selectors
import socket

from synapse_python._busy_wait import BusyWaitSelector
from synapse_python._threads import any_busy


def _selector(busy_wait: float) -> BusyWaitSelector:
    # Polling is never worth the GIL a thread running user code wants.
    return BusyWaitSelector(busy_wait, may_poll=lambda: not any_busy())


class BlockingSocket:
    """A connection's socket (blocking), which its threads read and write.
    With a busy-wait budget the reading thread polls it that long before it
    sleeps (`_busy_wait`)."""

    def __init__(self, sock: socket.socket, busy_wait: float = 0.0) -> None:
        self._sock = sock
        self.selector: BusyWaitSelector | None = None
        if busy_wait:
            self.selector = _selector(busy_wait)
            self.selector.register(sock, selectors.EVENT_READ)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes, waited for; empty once the connection ended.
        Raises `OSError`."""
        if self.selector is not None:
            self.selector.select(None)
        return self._sock.recv(size)

    def write(self, data: bytes) -> None:
        """All of `data`, waiting for room. Raises `OSError` (the client left,
        or `shut`)."""
        self._sock.sendall(data)

    def write_now(self, data: bytes) -> None:
        """What of `data` goes without waiting (the connection closes next)."""
        try:
            self._sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def shut(self) -> None:
        """Ends the connection: a thread blocked reading or writing wakes."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client shut it already

    def close(self) -> None:
        """Lets the descriptor go: nobody reads or writes it any more."""
        if self.selector is not None:
            self.selector.close()
        self._sock.close()


class BlockingPipes:
    """A connection's two pipes (the worker's ends: `reads`, `writes`) and
    its socket, `control`, which carries nothing but the connection's end.
    Both pipes are made nonblocking: a thread waits for one and the socket
    together, and gives up once the socket is shut down or has anything to
    read (a client sends nothing more on it)."""

    def __init__(
        self, reads: int, writes: int, control: socket.socket, busy_wait: float = 0.0
    ) -> None:
        self._reads = reads
        self._writes = writes
        self._control = control
        os.set_blocking(reads, False)
        os.set_blocking(writes, False)
        self.selector = _selector(busy_wait)
        self.selector.register(reads, selectors.EVENT_READ)
        self.selector.register(control, selectors.EVENT_READ)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes, waited for; empty once the connection ended
        (either side shut its socket down, or the client closed its pipe).
        Raises `OSError`."""
        while True:
            for key, _ in self.selector.select(None):
                if key.fileobj is self._control:
                    return b""
            try:
                return os.read(self._reads, size)
            except BlockingIOError:
                continue  # nothing after all: wait again

    def write(self, data: bytes) -> None:
        """All of `data`, waiting for room. Raises `OSError` (the client left,
        or `shut`)."""
        try:
            written = os.write(self._writes, data)
        except BlockingIOError:
            written = 0
        if written == len(data):
            return  # most writes: the pipe had room for it all
        view = memoryview(data)[written:]
        while view:
            self._wait_for_room()
            try:
                view = view[os.write(self._writes, view) :]
            except BlockingIOError:
                pass

    def _wait_for_room(self) -> None:
        waiting = select.poll()
        waiting.register(self._writes, select.POLLOUT)
        waiting.register(self._control, select.POLLIN)
        for fd, _ in waiting.poll():
            if fd == self._control.fileno():
                raise BrokenPipeError("the lane connection ended")

    def write_now(self, data: bytes) -> None:
        """What of `data` goes without waiting (the connection closes next)."""
        try:
            os.write(self._writes, data)
        except OSError:
            pass

    def shut(self) -> None:
        """Ends the connection: the client sees its socket end, and a thread
        blocked reading or writing wakes (the socket reads as ended)."""
        try:
            self._control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client shut it already

    def close(self) -> None:
        """Lets the descriptors go: nobody reads or writes them any more. The
        client's reader sees its pipe end."""
        self.selector.close()
        os.close(self._reads)
        os.close(self._writes)
        self._control.close()
