"""What the kernel's side of a local transport costs: a small message's round
trip between two processes over a Unix socket pair (the lane's transport)
and over two pipes (a Port's), each side blocking in `read`, rounds
alternated.

    python bench/python/transport_roundtrip.py [--calls N] [--rounds R]

Run it as is (the two processes wherever the kernel puts them) and under
`taskset -c 0` (both on one CPU, where a round trip is the CPU both sides
spend on it). Prints one JSON line per round and transport: the wall time
and each side's CPU time per round trip, in µs. Nothing of Synapse's is in
it: the floor under a call's cost that the choice of transport sets.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

_MESSAGE = b"x" * 40
_WARM_UP = 2_000


def _ends(transport: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(read, write) descriptors of the caller, then of the answerer."""
    if transport == "pipe":
        to_answerer_read, to_answerer_write = os.pipe()
        to_caller_read, to_caller_write = os.pipe()
        return (to_caller_read, to_answerer_write), (to_answerer_read, to_caller_write)
    caller, answerer = socket.socketpair()
    caller_fd, answerer_fd = caller.detach(), answerer.detach()
    return (caller_fd, caller_fd), (answerer_fd, answerer_fd)


def _answer(read_fd: int, write_fd: int, report_fd: int) -> None:
    """Echoes what it reads until the caller stops; writes its CPU seconds to `report_fd`."""
    started = time.process_time()
    while data := os.read(read_fd, 65536):
        os.write(write_fd, data)
    os.write(report_fd, repr(time.process_time() - started).encode())


def _round(transport: str, calls: int) -> dict[str, float | str]:
    (read_fd, write_fd), (their_read, their_write) = _ends(transport)
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the answerer: only its own ends open, so it sees the caller's end
        for fd in {read_fd, write_fd, report_read}:
            os.close(fd)
        _answer(their_read, their_write, report_write)
        os._exit(0)
    for fd in {their_read, their_write, report_write}:
        os.close(fd)
    for _ in range(_WARM_UP):
        os.write(write_fd, _MESSAGE)
        os.read(read_fd, 65536)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        os.write(write_fd, _MESSAGE)
        os.read(read_fd, 65536)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # The answerer stops at the end of its input: close the pipe it reads,
    # or half-close the socket (whose one descriptor the caller still reads).
    still_open = {read_fd, report_read}
    if transport == "pipe":
        os.close(write_fd)
    else:
        socket.socket(fileno=os.dup(write_fd)).shutdown(socket.SHUT_WR)
        still_open.add(write_fd)
    answerer_cpu = float(os.read(report_read, 64).decode())
    os.waitpid(pid, 0)
    for fd in still_open:
        os.close(fd)
    return {
        "transport": "unix socket pair" if transport == "socket" else "two pipes",
        "wall_us": round(wall / calls * 1e6, 2),
        "caller_cpu_us": round(cpu / calls * 1e6, 2),
        # The answerer's warm-up is in its time: spread over every round trip it made.
        "answerer_cpu_us": round(answerer_cpu / (calls + _WARM_UP) * 1e6, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for _ in range(args.rounds):
        for transport in ("pipe", "socket"):
            print(json.dumps(_round(transport, args.calls)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
