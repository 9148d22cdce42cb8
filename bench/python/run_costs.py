"""What pydantic-ai's own run costs in the conditions a worker meets, in one process.

    python bench/python/run_costs.py [--blocks N]

Two comparisons, each a median over N interleaved blocks of 100 runs (CPU time per
run, `time.process_time`), of `bench_agents`' TestModel agents:

* idle: runs back to back, as in-process pydantic-ai runs in a benchmark loop,
  against runs with 1 ms of sleep between them (`asyncio.sleep`), as a worker
  serving one call at a time sleeps between calls;
* tool: a one-tool run with the tool on the agent, against the same tool given
  to the run in `toolsets=` (how a worker gave a run its Elixir tools), and
  joined to the agent's own tools for the run with `Agent.override(tools=...)`
  (how it gives them now, see `synapse_python._client_tools`).

No transport and no Synapse code runs here: this is the floor the paths
benchmark's figures stand on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from bench_agents import PROMPT, minimal_agent, order_status_text, python_tool_agent
from pydantic_ai import Tool
from pydantic_ai.toolsets import FunctionToolset

BLOCK = 100


async def order_status(order_id: int) -> str:
    """The shipping status of an order."""
    return order_status_text(order_id)


def _variants() -> dict[str, dict[str, Callable[[], Awaitable[object]]]]:
    # Each built once, as a worker builds a run's tools once (from their JSON schema).
    toolset = FunctionToolset([Tool(order_status)])
    joined_tools = [*minimal_agent.toolsets[0].tools.values(), Tool(order_status)]  # type: ignore[attr-defined]

    async def back_to_back() -> object:
        return await minimal_agent.run(PROMPT)

    async def sleeping() -> object:
        result = await minimal_agent.run(PROMPT)
        await asyncio.sleep(0.001)
        return result

    async def on_agent() -> object:
        return await python_tool_agent.run(PROMPT)

    async def run_toolset() -> object:
        return await minimal_agent.run(PROMPT, toolsets=[toolset])

    async def joined() -> object:
        with minimal_agent.override(tools=joined_tools):
            return await minimal_agent.run(PROMPT)

    return {
        "idle": {"back to back": back_to_back, "1 ms of sleep between runs": sleeping},
        "tool": {
            "tool on the agent": on_agent,
            "tool in toolsets=": run_toolset,
            "tool joined with override(tools=)": joined,
        },
    }


async def _cpu_per_run(run: Callable[[], Awaitable[object]]) -> float:
    """µs of CPU per run over one block (the sleep itself costs no CPU)."""
    started = time.process_time()
    for _ in range(BLOCK):
        await run()
    return (time.process_time() - started) / BLOCK * 1e6


async def main(blocks: int) -> None:
    for name, contenders in _variants().items():
        for run in contenders.values():
            await _cpu_per_run(run)  # warm-up
        samples: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(blocks):
            for label, run in contenders.items():
                samples[label].append(await _cpu_per_run(run))
        base_label = next(iter(contenders))
        base = statistics.median(samples[base_label])
        print(f"== {name} (median of {blocks} blocks of {BLOCK} runs)")
        for label, values in samples.items():
            cpu = statistics.median(values)
            print(f"{label:>36}: {cpu:7.0f} µs CPU per run ({cpu / base:.2f} times {base_label})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    asyncio.run(main(parser.parse_args().blocks))
