"""Python's own grpc.aio client as a benchmark baseline: a worker's Echo and EchoStream.

    PYTHONPATH=priv/python python bench/python/grpc_client.py latency \
        --address A --calls N --warmup W --payload BYTES
    ... throughput --address A --concurrency C --seconds S --payload BYTES [--warmup-seconds S]
    ... stream --address A --count N --payload BYTES --repeat R [--warmup R]

`A` is `unix:PATH` or `tcp://HOST:PORT`, or several comma-separated (a pool: calls go
round-robin over them, one channel each). Every subcommand also takes `--max-seconds`
(default 300): past it the process exits with code 3. The result is one JSON object on
stdout, the same as `tonic-echo`'s with `"client": "grpcio"`; errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Sequence

import grpc

from synapse_python._proto.synapse.v1 import agent_pb2, probe_pb2

ECHO = "/synapse.v1.ProbeService/Echo"
ECHO_STREAM = "/synapse.v1.ProbeService/EchoStream"
MAX_MESSAGE = agent_pb2.LIMIT_DEFAULT_MAX_MESSAGE_BYTES


class Client:
    """One channel to one worker, with its two callables."""

    def __init__(self, address: str) -> None:
        if address.startswith("unix:"):
            target = address
        elif address.startswith("tcp://"):
            target = address.removeprefix("tcp://")
        else:
            raise ValueError(
                f"unsupported address {address!r}: expected unix:PATH or tcp://HOST:PORT"
            )
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )
        self.echo = self.channel.unary_unary(
            ECHO,
            request_serializer=probe_pb2.EchoRequest.SerializeToString,
            response_deserializer=probe_pb2.EchoReply.FromString,
            _registered_method=True,
        )
        self.echo_stream = self.channel.unary_stream(
            ECHO_STREAM,
            request_serializer=probe_pb2.EchoStreamRequest.SerializeToString,
            response_deserializer=probe_pb2.EchoReply.FromString,
            _registered_method=True,
        )


async def echo(client: Client, request: probe_pb2.EchoRequest) -> None:
    reply = await client.echo(request)
    if len(reply.payload) != len(request.payload):
        raise RuntimeError("Echo answered a different payload")


def micros(ns: int) -> float:
    return round(ns / 1000, 3)


def percentile(sorted_ns: list[int], p: float) -> int:
    """Nearest-rank percentile of sorted, non-empty samples (as tonic-echo computes it)."""
    rank = math.ceil(p * len(sorted_ns))
    return sorted_ns[min(max(rank, 1), len(sorted_ns)) - 1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def latency(clients: list[Client], args: argparse.Namespace) -> dict[str, object]:
    request = probe_pb2.EchoRequest(payload=b"x" * args.payload)
    for i in range(max(args.warmup, len(clients))):
        await echo(clients[i % len(clients)], request)
    samples = []
    clock = time.perf_counter_ns
    for i in range(args.calls):
        client = clients[i % len(clients)]
        start = clock()
        await echo(client, request)
        samples.append(clock() - start)
    samples.sort()
    return {
        "calls": args.calls,
        "p50_us": micros(percentile(samples, 0.50)),
        "p99_us": micros(percentile(samples, 0.99)),
        "mean_us": round(sum(samples) / len(samples) / 1000, 3),
        "min_us": micros(samples[0]),
        "max_us": micros(samples[-1]),
    }


async def loops(
    clients: list[Client], concurrency: int, seconds: float, request: probe_pb2.EchoRequest
) -> int:
    """`concurrency` loops, one call in flight each, until `seconds` pass; answers the calls."""
    deadline = time.monotonic() + seconds

    async def loop(k: int) -> int:
        calls = 0
        while time.monotonic() < deadline:
            await echo(clients[(k + calls) % len(clients)], request)
            calls += 1
        return calls

    return sum(await asyncio.gather(*(loop(k) for k in range(concurrency))))


async def throughput(clients: list[Client], args: argparse.Namespace) -> dict[str, object]:
    request = probe_pb2.EchoRequest(payload=b"x" * args.payload)
    for client in clients:
        await echo(client, request)
    if args.warmup_seconds > 0:
        await loops(clients, args.concurrency, args.warmup_seconds, request)
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    calls = await loops(clients, args.concurrency, args.seconds, request)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_before
    return {
        "concurrency": args.concurrency,
        "calls": calls,
        "seconds": round(elapsed, 6),
        "calls_per_s": round(calls / elapsed, 3),
        "cpu_seconds": round(cpu, 6),
        "cpu_us_per_call": round(cpu * 1e6 / max(calls, 1), 3),
    }


async def one_stream(
    client: Client, request: probe_pb2.EchoStreamRequest
) -> tuple[float, float, float]:
    """One EchoStream: microseconds to the first reply, per reply after it, to the end."""
    clock = time.perf_counter_ns
    start = clock()
    first = last = start
    received = 0
    async for reply in client.echo_stream(request):
        last = clock()
        if received == 0:
            first = last
        received += 1
        if len(reply.payload) != len(request.payload):
            raise RuntimeError("EchoStream answered a different payload")
    end = clock()
    if received != request.count:
        raise RuntimeError(f"EchoStream answered {received} replies, not {request.count}")
    per_event = micros(last - first) / (request.count - 1) if request.count > 1 else 0.0
    return micros(first - start), per_event, micros(end - start)


async def stream(clients: list[Client], args: argparse.Namespace) -> dict[str, object]:
    request = probe_pb2.EchoStreamRequest(payload=b"x" * args.payload, count=args.count)
    for i in range(max(args.warmup, len(clients))):
        await one_stream(clients[i % len(clients)], request)
    runs = [await one_stream(clients[i % len(clients)], request) for i in range(args.repeat)]
    first, per_event, total = zip(*runs, strict=True)
    return {
        "count": args.count,
        "repeat": args.repeat,
        "first_event_us": round(statistics.median(first), 3),
        "per_event_us": round(statistics.median(per_event), 3),
        "total_us": round(statistics.median(total), 3),
    }


COMMANDS = {"latency": latency, "throughput": throughput, "stream": stream}


async def run(args: argparse.Namespace) -> dict[str, object]:
    clients = [Client(address.strip()) for address in args.address.split(",")]
    try:
        result = await COMMANDS[args.command](clients, args)
    finally:
        for client in clients:
            await client.channel.close()
    return {"client": "grpcio", "workers": len(clients), "payload": args.payload, **result}


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = main.add_subparsers(dest="command", required=True)

    def command(name: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name)
        sub.add_argument("--address", required=True)
        sub.add_argument("--payload", type=int, default=64)
        sub.add_argument("--max-seconds", type=float, default=300.0)
        return sub

    sub = command("latency")
    sub.add_argument("--calls", type=positive, default=1000)
    sub.add_argument("--warmup", type=int, default=100)
    sub = command("throughput")
    sub.add_argument("--concurrency", type=positive, default=1)
    sub.add_argument("--seconds", type=float, default=5.0)
    sub.add_argument("--warmup-seconds", type=float, default=0.5)
    sub = command("stream")
    sub.add_argument("--count", type=positive, default=1000)
    sub.add_argument("--repeat", type=positive, default=10)
    sub.add_argument("--warmup", type=int, default=1)
    return main


def watchdog(limit: float) -> None:
    """Ends the process (exit code 3) once `limit` seconds have passed."""

    def give_up() -> None:
        print(f"grpc_client: gave up after {limit:.1f} s (--max-seconds)", file=sys.stderr)
        os._exit(3)

    timer = threading.Timer(limit, give_up)
    timer.daemon = True
    timer.start()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    watchdog(args.max_seconds)
    try:
        result = asyncio.run(run(args))
    except (grpc.RpcError, RuntimeError, ValueError) as exc:
        print(f"grpc_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
