"""The in-process baseline of the path benchmarks: pydantic-ai (or the Bridge's
function) called from Python itself, with nothing in between.

    python bench/python/inprocess.py latency --case CASE --calls N [--pause-us P]
    python bench/python/inprocess.py throughput --case CASE --concurrency C \
        --processes P --seconds S

CASE is `minimal` (`await minimal_agent.run` in a loop on one event loop),
`python_tool` (the agent with one Python tool), `elixir_tool` (Synapse's Elixir tool
case done in Python: the same agent with a Python tool doing the same work, i.e.
`python_tool`), `stream` (`stream_agent`'s run streamed with `run_stream_events`, its
text deltas collected) or `add` (a plain call of the Bridge benchmark's `add` in a
loop).

`latency` times `N` sequential calls after `N / 10` unmeasured ones; with
`--pause-us`, the process waits that long before each call (outside its timing),
as a worker serving calls that arrive one at a time sleeps between them: a
process woken for each call spends more CPU on it than one in a tight loop (its
caches and the core are no longer its own), and that is part of what a process
across a boundary pays, whoever its caller is. `throughput`
starts `P` processes (forked once everything is imported), each running
`C / P` concurrent loops (`asyncio.gather`) of one call in flight each, for `S`
seconds after an unmeasured warm-up, all measured over the same window; `add` runs
one plain loop per process. Both answer one JSON object on stdout, with this
process's CPU time per call (`cpu_us_per_call`; the children's, with `P` processes).
Every run is bounded by `--max-seconds` (default 300): past it the process exits
with code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from bench_add import add
from bench_agents import (
    PROMPT,
    STREAM_TEXT,
    minimal_agent,
    python_tool_agent,
    stream_agent,
    stream_text_deltas,
)
from bench_measure import concurrent_loops, cpu_per_call, latency_summary, own_cpu_seconds

AGENTS = {"minimal": minimal_agent, "python_tool": python_tool_agent}
AGENTS["elixir_tool"] = python_tool_agent
AGENTS["stream"] = stream_agent


async def _streamed() -> None:
    deltas: list[str] = []
    await stream_text_deltas(stream_agent, PROMPT, deltas.append)
    if "".join(deltas) != STREAM_TEXT:
        raise RuntimeError(f"the streamed text differs: {''.join(deltas)!r}")


def run_call(case: str) -> Callable[[], Awaitable[Any]]:
    if case == "stream":
        return _streamed
    agent = AGENTS[case]
    return lambda: agent.run(PROMPT)


async def latency(case: str, calls: int, pause_us: int = 0) -> dict[str, Any]:
    clock = time.perf_counter_ns
    pause = pause_us / 1e6
    samples = []
    if case == "add":
        for i in range(max(calls // 10, 1)):
            add(i, 1)
        cpu = own_cpu_seconds()
        for i in range(calls):
            started = clock()
            add(i, 1)
            samples.append(clock() - started)
    else:
        call = run_call(case)
        for _ in range(max(calls // 10, 1)):
            if pause:
                await asyncio.sleep(pause)
            await call()
        cpu = own_cpu_seconds()
        for _ in range(calls):
            if pause:
                await asyncio.sleep(pause)
            started = clock()
            await call()
            samples.append(clock() - started)
    cpu = own_cpu_seconds() - cpu
    return latency_summary(samples) | {"cpu_us_per_call": cpu_per_call(cpu, calls)}


def add_loop(until: float) -> int:
    n = 0
    while time.monotonic() < until:
        for i in range(1000):
            add(i, 1)
        n += 1000
    return n


def one_process(
    case: str, concurrency: int, seconds: float, warmup: float, start: Any, out: Connection
) -> None:
    """A process's share: warm up, wait for the others, measure, send the figures."""

    def measure(until: float) -> int:
        if case == "add":
            return add_loop(until)
        return asyncio.run(concurrent_loops(run_call(case), concurrency, until))

    measure(time.monotonic() + warmup)
    start.wait()
    cpu = own_cpu_seconds()
    started = time.monotonic()
    calls = measure(started + seconds)
    out.send((calls, time.monotonic() - started, own_cpu_seconds() - cpu))
    out.close()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    per_process, rest = divmod(args.concurrency, args.processes)
    if rest or per_process == 0:
        raise SystemExit("--concurrency must be a multiple of --processes")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(args.processes)
    pipes, children = [], []
    for _ in range(args.processes):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=one_process,
            args=(args.case, per_process, args.seconds, args.warmup_seconds, start, sender),
        )
        child.start()
        sender.close()
        pipes.append(receiver)
        children.append(child)
    figures = [pipe.recv() for pipe in pipes]
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"a measuring process exited with {child.exitcode}")
    calls = sum(f[0] for f in figures)
    elapsed = max(f[1] for f in figures)
    cpu = sum(f[2] for f in figures)
    return {
        "concurrency": args.concurrency,
        "processes": args.processes,
        "calls": calls,
        "seconds": elapsed,
        "calls_per_s": calls / elapsed,
        "cpu_seconds": cpu,
        "cpu_us_per_call": cpu_per_call(cpu, calls),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=300.0)
    commands = parser.add_subparsers(dest="command", required=True)
    lat = commands.add_parser("latency")
    lat.add_argument("--case", choices=[*AGENTS, "add"], required=True)
    lat.add_argument("--calls", type=int, required=True)
    lat.add_argument("--pause-us", type=int, default=0)
    thr = commands.add_parser("throughput")
    thr.add_argument("--case", choices=[*AGENTS, "add"], required=True)
    thr.add_argument("--concurrency", type=int, required=True)
    thr.add_argument("--processes", type=int, default=1)
    thr.add_argument("--seconds", type=float, required=True)
    thr.add_argument("--warmup-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)

    watchdog = threading.Timer(args.max_seconds, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    if args.command == "latency":
        result = asyncio.run(latency(args.case, args.calls, args.pause_us))
    else:
        result = throughput(args)
    print(json.dumps({"client": "inprocess", "case": args.case, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
