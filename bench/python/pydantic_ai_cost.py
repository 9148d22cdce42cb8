"""The scale benchmark's baseline: what its runs cost pydantic-ai alone.

    python bench/python/pydantic_ai_cost.py RUNS

Runs RUNS concurrent streamed runs of the scale benchmark's agent
(synapse_fixtures.agents:slow_stream_agent, 20 chunks, no delay) in this one
process, with no gRPC and no Synapse, and prints one JSON object: the CPU
time pydantic-ai spends per run. It is what two worker processes must spend
per run at the least, whatever carries the calls.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from synapse_fixtures.agents import slow_stream_agent


async def _one() -> None:
    async with slow_stream_agent.run_stream_events("20 0") as events:
        async for _ in events:
            pass


async def _measure(runs: int) -> dict[str, float]:
    await _one()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*[_one() for _ in range(runs)])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "runs": runs,
        "cpu_ms_per_run": cpu / runs * 1000,
        "wall_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_measure(int(sys.argv[1])))))
