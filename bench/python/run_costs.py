"""What pydantic-ai's own run costs in the conditions a worker meets, in one process.

    python bench/python/run_costs.py [--blocks N] [--groups idle,tool,worker]

Three comparisons, each a median over N interleaved blocks of 100 runs (CPU time per
run, `time.process_time`), of `bench_agents`' TestModel agents:

* idle: runs back to back, as in-process pydantic-ai runs in a benchmark loop,
  against runs with 1 ms of sleep between them (`asyncio.sleep`), as a worker
  serving one call at a time sleeps between calls;
* tool: a one-tool run with the tool on the agent, against the same tool given
  to the run in `toolsets=` (how a worker gave a run its Elixir tools), and
  joined to the agent's own tools for the run with `Agent.override(tools=...)`
  (how it gives them now, see `synapse_python._client_tools`);
* worker: what the worker's own code adds to a run, with no transport: a
  minimal run as `await agent.run(...)` against the same run made by the
  worker's `_run.Run` from its `RunRequest` (its last event returned, as a
  transport sends it), with and without the messages' JSON; and a one-tool
  run whose tool awaits its answer, set on the next turn of the event loop,
  against the worker's `Run` with that tool as a client tool, answered on
  the next turn as a transport's reader answers it. This group needs the
  worker's package (`priv/python`) on `PYTHONPATH`.

The idle and tool groups run no Synapse code: they are the floor the paths
benchmark's figures stand on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench_agents import (
    PROMPT,
    TOOL_DESCRIPTION,
    TOOL_PARAMETERS,
    minimal_agent,
    order_status_text,
    python_tool_agent,
)
from pydantic_ai import Tool
from pydantic_ai.toolsets import FunctionToolset

Variants = dict[str, Callable[[], Awaitable[object]]]

BLOCK = 100


async def order_status(order_id: int) -> str:
    """The shipping status of an order."""
    return order_status_text(order_id)


def _variants() -> dict[str, Variants]:
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


async def _worker_variants() -> Variants:
    """The worker's `Run` against pydantic-ai's run alone (see the module doc).

    Each contender's output is checked to be the same before anything is
    timed: the comparison is of the same run.
    """
    try:
        from synapse_python import _agents, _run
        from synapse_python._proto.synapse.v1 import agent_pb2
    except ImportError as exc:
        sys.exit(f"the worker group needs priv/python on PYTHONPATH: {exc}")

    registry = _agents.AgentRegistry()
    registry.put(await _agents.load("minimal", minimal_agent))
    loop = asyncio.get_running_loop()

    async def awaiting_status(order_id: int) -> str:
        """The shipping status of an order."""
        answer = loop.create_future()
        loop.call_soon(answer.set_result, order_status_text(order_id))
        return await answer

    own = list(minimal_agent.toolsets[0].tools.values())  # type: ignore[attr-defined]
    awaiting_tools = [*own, Tool(awaiting_status, name="order_status")]
    client_tool = agent_pb2.ToolDef(
        name="order_status",
        description=TOOL_DESCRIPTION,
        parameters_json=json.dumps(TOOL_PARAMETERS).encode(),
    )

    def worker_run(tools: list[Any], *, messages: bool) -> Callable[[], Awaitable[object]]:
        request = agent_pb2.RunRequest(
            agent_id="minimal", prompt=PROMPT, tools=tools, omit_messages=not messages
        )

        async def run() -> object:
            made: list[Any] = []

            async def send(event: Any) -> None:
                if event.WhichOneof("event") == "tool_request":
                    asked = event.tool_request
                    arguments = json.loads(asked.args_json)
                    result = agent_pb2.ToolResult(
                        request_id=asked.request_id,
                        return_json=json.dumps(order_status_text(**arguments)).encode(),
                    )
                    loop.call_soon(made[0].deliver, agent_pb2.RunInput(tool_result=result))

            made.append(_run.Run(registry, request, send, quiet=True))
            last = await made[0].execute()
            if last.WhichOneof("event") != "result":
                raise RuntimeError(f"the worker's run failed: {last}")
            return last.result.text

        return run

    async def alone() -> object:
        return (await minimal_agent.run(PROMPT)).output

    async def awaiting_tool() -> object:
        with minimal_agent.override(tools=awaiting_tools):
            return (await minimal_agent.run(PROMPT)).output

    variants: Variants = {
        "minimal: agent.run": alone,
        "minimal: the worker's Run": worker_run([], messages=True),
        "minimal: the worker's Run, messages: false": worker_run([], messages=False),
        "one tool: agent.run, tool awaiting": awaiting_tool,
        "one tool: the worker's Run, client tool": worker_run([client_tool], messages=True),
        "one tool: the worker's Run, messages: false": worker_run([client_tool], messages=False),
    }
    outputs = {label: await run() for label, run in variants.items()}
    firsts: dict[str, str] = {}
    for label, output in outputs.items():
        first = firsts.setdefault(_kind(label), label)
        if output != outputs[first]:
            raise RuntimeError(f"{label} answered {output!r}, {first} {outputs[first]!r}")
    return variants


def _kind(label: str) -> str:
    """A contender's kind of run ("minimal: ..." is "minimal"), compared to
    the first contender of its kind; a label with no kind is of the group's."""
    return label.split(": ", 1)[0] if ": " in label else ""


async def _cpu_per_run(run: Callable[[], Awaitable[object]]) -> float:
    """µs of CPU per run over one block (the sleep itself costs no CPU)."""
    started = time.process_time()
    for _ in range(BLOCK):
        await run()
    return (time.process_time() - started) / BLOCK * 1e6


GROUPS = ("idle", "tool", "worker")


async def main(blocks: int, groups: list[str]) -> None:
    every = _variants()
    if "worker" in groups:
        every["worker"] = await _worker_variants()
    for name in groups:
        contenders = every[name]
        for run in contenders.values():
            await _cpu_per_run(run)  # warm-up
        samples: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(blocks):
            for label, run in contenders.items():
                samples[label].append(await _cpu_per_run(run))
        print(f"== {name} (median of {blocks} blocks of {BLOCK} runs)")
        bases: dict[str, tuple[str, float]] = {}
        for label, values in samples.items():
            cpu = statistics.median(values)
            base_label, base = bases.setdefault(_kind(label), (label, cpu))
            print(f"{label:>44}: {cpu:7.0f} µs CPU per run ({cpu / base:.2f} times {base_label})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument(
        "--groups",
        default=",".join(GROUPS),
        help="the comparisons to run, comma-separated (default: all)",
    )
    args = parser.parse_args()
    chosen = [group for group in args.groups.split(",") if group]
    if unknown := [group for group in chosen if group not in GROUPS]:
        parser.error(f"unknown groups {unknown}; the groups are {', '.join(GROUPS)}")
    asyncio.run(main(args.blocks, chosen))
