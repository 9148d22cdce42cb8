"""The path benchmarks' gRPC baseline: Python's own grpc.aio client calling a worker's
`RunSync` and `Run` RPCs directly, with no BEAM in between.

    PYTHONPATH=<synapse_python's dir>:bench/python python bench/python/grpc_runs.py \
        latency --case CASE --address A --calls N [--worker-pids P,...]
    ... throughput --case CASE --address A --concurrency C --seconds S [--warmup-seconds S]

The client first loads its own copy of the case's agent into each worker
(`LoadAgent`, from `bench_agents`, which the worker finds on its Python path), then
calls it: `minimal` and `python_tool` with one `RunSync` per run; `elixir_tool` with
one `Run` stream per run whose client tool `order_status` this client answers, doing
the Elixir tool's work in Python. `A` is `unix:PATH`, or several comma-separated (a
pool, called round-robin).

`latency` times `N` sequential runs after `N / 10` unmeasured ones; `throughput`
runs `C` loops with one run in flight each for `S` seconds after a warm-up. Both
answer one JSON object on stdout with this client's CPU time per run
(`cpu_us_per_call`) and the workers' (`worker_cpu_us_per_call`, from
`/proc/PID/stat` of `--worker-pids`). Every run is bounded by `--max-seconds`
(default 300): past it the process exits with code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from bench_agents import PROMPT, TOOL_DESCRIPTION, TOOL_PARAMETERS, order_status_text
from bench_measure import (
    concurrent_loops,
    cpu_per_call,
    latency_summary,
    own_cpu_seconds,
    proc_cpu_seconds,
)

from synapse_python._proto.synapse.v1 import agent_pb2

SERVICE = "/synapse.v1.AgentService/"
AGENT_ID = "bench_grpc"
AGENT_REFS = {
    "minimal": "bench_agents:minimal_agent",
    "python_tool": "bench_agents:python_tool_agent",
    "elixir_tool": "bench_agents:minimal_agent",
}
TOOL = agent_pb2.ToolDef(
    name="order_status",
    description=TOOL_DESCRIPTION,
    parameters_json=json.dumps(TOOL_PARAMETERS).encode(),
)


class Worker:
    """One channel to one worker, with the callables of the RPCs used."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.load_agent = self.channel.unary_unary(
            SERVICE + "LoadAgent",
            request_serializer=agent_pb2.LoadAgentRequest.SerializeToString,
            response_deserializer=agent_pb2.LoadAgentResponse.FromString,
        )
        self.run_sync = self.channel.unary_unary(
            SERVICE + "RunSync",
            request_serializer=agent_pb2.RunRequest.SerializeToString,
            response_deserializer=agent_pb2.RunResult.FromString,
        )
        self.run = self.channel.stream_stream(
            SERVICE + "Run",
            request_serializer=agent_pb2.RunInput.SerializeToString,
            response_deserializer=agent_pb2.RunEvent.FromString,
        )


async def run_sync(worker: Worker) -> agent_pb2.RunResult:
    return await worker.run_sync(agent_pb2.RunRequest(agent_id=AGENT_ID, prompt=PROMPT))


async def run_with_client_tool(worker: Worker) -> agent_pb2.RunResult:
    """A `Run` stream whose `order_status` tool requests this client answers."""
    call = worker.run()
    await call.write(
        agent_pb2.RunInput(
            start=agent_pb2.RunRequest(agent_id=AGENT_ID, prompt=PROMPT, tools=[TOOL], quiet=True)
        )
    )
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            raise RuntimeError("the Run stream ended without a result")
        match event.WhichOneof("event"):
            case "tool_request":
                request = event.tool_request
                value = order_status_text(**json.loads(request.args_json))
                await call.write(
                    agent_pb2.RunInput(
                        tool_result=agent_pb2.ToolResult(
                            request_id=request.request_id, return_json=json.dumps(value).encode()
                        )
                    )
                )
            case "result":
                await call.done_writing()
                return event.result


def caller(case: str, workers: list[Worker]) -> Callable[[], Awaitable[agent_pb2.RunResult]]:
    """One run per call, on the workers in turn."""
    turn = itertools.cycle(workers)
    one = run_with_client_tool if case == "elixir_tool" else run_sync
    return lambda: one(next(turn))


async def latency(case: str, workers: list[Worker], args: argparse.Namespace) -> dict[str, Any]:
    call = caller(case, workers)
    for _ in range(max(args.calls // 10, len(workers))):
        await call()
    clock = time.perf_counter_ns
    samples = []
    cpu, worker_cpu = own_cpu_seconds(), proc_cpu_seconds(args.worker_pids)
    for _ in range(args.calls):
        started = clock()
        await call()
        samples.append(clock() - started)
    cpu, worker_cpu = own_cpu_seconds() - cpu, proc_cpu_seconds(args.worker_pids) - worker_cpu
    return latency_summary(samples) | {
        "cpu_us_per_call": cpu_per_call(cpu, args.calls),
        "worker_cpu_us_per_call": cpu_per_call(worker_cpu, args.calls),
    }


async def throughput(case: str, workers: list[Worker], args: argparse.Namespace) -> dict[str, Any]:
    call = caller(case, workers)

    async def loops(seconds: float) -> int:
        return await concurrent_loops(call, args.concurrency, time.monotonic() + seconds)

    await loops(args.warmup_seconds)
    cpu, worker_cpu = own_cpu_seconds(), proc_cpu_seconds(args.worker_pids)
    started = time.monotonic()
    calls = await loops(args.seconds)
    elapsed = time.monotonic() - started
    cpu, worker_cpu = own_cpu_seconds() - cpu, proc_cpu_seconds(args.worker_pids) - worker_cpu
    return {
        "concurrency": args.concurrency,
        "calls": calls,
        "seconds": elapsed,
        "calls_per_s": calls / elapsed,
        "cpu_us_per_call": cpu_per_call(cpu, calls),
        "worker_cpu_us_per_call": cpu_per_call(worker_cpu, calls),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workers = [Worker(address) for address in args.address.split(",")]
    try:
        for worker in workers:
            await worker.load_agent(
                agent_pb2.LoadAgentRequest(agent_id=AGENT_ID, ref=AGENT_REFS[args.case])
            )
        if args.command == "latency":
            return await latency(args.case, workers, args)
        return await throughput(args.case, workers, args)
    finally:
        for worker in workers:
            await worker.channel.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=300.0)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("latency", "throughput"):
        command = commands.add_parser(name)
        command.add_argument("--case", choices=sorted(AGENT_REFS), required=True)
        command.add_argument("--address", required=True)
        command.add_argument(
            "--worker-pids",
            type=lambda s: [int(p) for p in s.split(",") if p],
            default=[],
        )
    commands.choices["latency"].add_argument("--calls", type=int, required=True)
    commands.choices["throughput"].add_argument("--concurrency", type=int, required=True)
    commands.choices["throughput"].add_argument("--seconds", type=float, required=True)
    commands.choices["throughput"].add_argument("--warmup-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)

    watchdog = threading.Timer(args.max_seconds, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    result = asyncio.run(measure(args))
    print(json.dumps({"client": "grpcio", "case": args.case, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
