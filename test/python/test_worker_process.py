"""`python -m synapse_python.worker` as the process manager runs it, and the health service."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from conftest import AgentClient

REPO = Path(__file__).resolve().parents[2]
SERVICE = "synapse.v1.AgentService"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    stderr_path: Path

    async def ready_address(self) -> str:
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line.startswith(b"SYNAPSE_READY "), (line, self.stderr())
        return line.decode().removeprefix("SYNAPSE_READY ").rstrip("\n")

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.process.wait(), 15)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@asynccontextmanager
async def worker_process(
    tmp_path: Path, *args: str, pythonpath: str | None = None
) -> AsyncIterator[WorkerProcess]:
    default_path = os.pathsep.join(
        [str(REPO / "priv" / "python"), str(REPO / "test" / "support" / "python")]
    )
    env = {**os.environ, "PYTHONPATH": pythonpath or default_path}
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "synapse_python.worker",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        yield WorkerProcess(process, stderr_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_default_socket_readiness_and_sigterm(tmp_path: Path) -> None:
    async with worker_process(
        tmp_path,
        "--agent",
        "echo=synapse_fixtures.agents:echo_agent",
        "--agent",
        "slow=synapse_fixtures.agents:slow_agent",
        "--grace",
        "0.5",
    ) as worker:
        address = await worker.ready_address()
        socket = Path(address.removeprefix("unix:"))
        assert address.startswith("unix:/")
        assert socket.name == "worker.sock"
        assert socket.parent.name.startswith("synapse-")
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert mode(socket.parent) == 0o700
        assert mode(socket) == 0o600

        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)
            # Right after the readiness line, without waiting for the channel to get ready.
            for service in ("", SERVICE):
                health = await client.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert health.status == SERVING
            assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"

            in_flight = client.run_sync_call("slow", "60", timeout=60)
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await in_flight
            assert raised.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
            assert await worker.exit_code() == 0, worker.stderr()

        assert time.monotonic() - signalled < 5
        assert not socket.exists()
        assert not socket.parent.exists()
        assert await worker.process.stdout.read() == b""
        assert "RunSync cancelled (agent 'slow')" in worker.stderr()


async def test_given_unix_socket_and_sigint(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    socket = directory / "worker.sock"

    async with worker_process(tmp_path, "--listen", f"unix:{socket}") as worker:
        assert await worker.ready_address() == f"unix:{socket}"
        assert mode(socket) == 0o600
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            client = AgentClient(channel)
            await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")
            assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"

        worker.process.send_signal(signal.SIGINT)
        assert await worker.exit_code() == 0, worker.stderr()

    assert not socket.exists()
    assert directory.is_dir()  # not ours to remove


async def test_tcp_port_zero_announces_the_bound_port(tmp_path: Path) -> None:
    async with worker_process(tmp_path, "--listen", "tcp://127.0.0.1:0") as worker:
        address = await worker.ready_address()
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        assert (host, port.isdigit(), port != "0") == ("127.0.0.1", True, True)
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            health = await AgentClient(channel).health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
            )
            assert health.status == SERVING

        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.stderr()


async def test_refuses_non_loopback_tcp_without_allow_remote(tmp_path: Path) -> None:
    async with worker_process(tmp_path, "--listen", "tcp://0.0.0.0:0") as worker:
        assert await worker.exit_code() == 2
        assert await worker.process.stdout.read() == b""
        assert "--allow-remote" in worker.stderr()


async def test_an_agent_that_does_not_load_stops_the_worker_before_readiness(
    tmp_path: Path,
) -> None:
    async with worker_process(
        tmp_path, "--agent", "broken=synapse_fixtures.broken_import:agent"
    ) as worker:
        assert await worker.exit_code() == 1
        assert await worker.process.stdout.read() == b""
        assert "RuntimeError: boom at import" in worker.stderr()
