"""The Python side of `bench/lane.exs`: what Synapse's calls are measured against.

The module holds the two things every contender calls: a minimal pydantic-ai
agent on `TestModel` (no tools) and a trivial typed function, `add`. The
Bridge serves `add` (`mix synapse.gen.bridge lane_bench --function add`) and
Synapse runs `agent` (`agent: "lane_bench:agent"`); run as a script, it is
one of the baselines:

    python bench/python/lane_bench.py jsonl
        An Erlang Port's peer speaking JSON lines: reads `[id, a, b]` per line,
        answers `[id, add(a, b)]`, flushed per line, in arrival order, until EOF.

    python bench/python/lane_bench.py inprocess
        pydantic-ai in-process: reads commands `measure CONCURRENCY SECONDS`,
        runs `await agent.run(PROMPT)` in CONCURRENCY loops for SECONDS on one
        event loop and answers `p50_us calls_per_s cpu_us_per_call` on one line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

PROMPT = "hello"

agent = Agent(TestModel())

# `bench/split.exs --tools N` gives it Elixir tools, which its model calls
# none of (TestModel calls every tool by default).
uncalled_tools_agent = Agent(TestModel(call_tools=[]))


def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b


def _jsonl() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    loads, dumps = json.loads, json.dumps
    for line in stdin:
        call, a, b = loads(line)
        stdout.write(dumps([call, add(a, b)], separators=(",", ":")).encode() + b"\n")
        stdout.flush()
    return 0


async def _loops(concurrency: int, seconds: float) -> list[int]:
    samples: list[int] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            await agent.run(PROMPT)
            samples.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return samples


async def _measure(concurrency: int, seconds: float) -> tuple[float, float, float]:
    """As `LaneBench.measure` in bench/lane.exs: a warm-up, then the measured loops."""
    await _loops(concurrency, 0.3)
    cpu = time.process_time()
    started = time.perf_counter()
    samples = sorted(await _loops(concurrency, seconds))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    calls = len(samples)
    return samples[calls // 2] / 1000, calls / elapsed, cpu * 1e6 / calls


def _inprocess() -> int:
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        command, concurrency, seconds = line.split()
        if command != "measure":
            raise SystemExit(f"unknown command {command!r}")
        p50, rate, cpu = loop.run_until_complete(_measure(int(concurrency), float(seconds)))
        sys.stdout.write(f"{p50:.1f} {rate:.1f} {cpu:.1f}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    modes = {"jsonl": _jsonl, "inprocess": _inprocess}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        raise SystemExit(f"usage: {sys.argv[0]} {' | '.join(modes)}")
    sys.exit(modes[sys.argv[1]]())
