"""Measurement helpers shared by the path benchmarks' Python contenders.

Latency summaries use the nearest rank, as `bench/support/paths_support.ex` does; CPU
time is read from `getrusage` for the measuring process and from `/proc/PID/stat` for
the processes it calls (a worker), so both sides of a call are accounted for.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from collections.abc import Awaitable, Callable, Iterable

_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_ns: list[int], p: float) -> int:
    """Nearest-rank percentile of sorted, non-empty samples."""
    rank = math.ceil(p * len(sorted_ns))
    return sorted_ns[min(max(rank, 1), len(sorted_ns)) - 1]


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99, mean and min of samples in nanoseconds, in microseconds."""
    ordered = sorted(samples_ns)
    return {
        "calls": len(ordered),
        "p50_us": percentile(ordered, 0.50) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
        "mean_us": sum(ordered) / len(ordered) / 1000,
        "min_us": ordered[0] / 1000,
    }


def own_cpu_seconds(children: bool = False) -> float:
    """User + system time of this process (and of its waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system time of other processes, from /proc (clock-tick resolution)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def cpu_per_call(cpu_seconds: float, calls: int) -> float:
    """Microseconds of CPU per call."""
    return cpu_seconds * 1e6 / max(calls, 1)


async def concurrent_loops(
    call: Callable[[], Awaitable[object]], concurrency: int, until: float
) -> int:
    """`concurrency` loops awaiting `call()`, one in flight each, until the monotonic
    clock reaches `until`; answers the calls made."""

    async def loop() -> int:
        n = 0
        while time.monotonic() < until:
            await call()
            n += 1
        return n

    return sum(await asyncio.gather(*(loop() for _ in range(concurrency))))
