"""The `Worker` API itself: health, message size limits, the private socket, stopping."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from conftest import AgentClient, Served
from synapse_python import Worker
from synapse_python._worker import AGENT_HEALTH_PREFIX


async def test_health_reports_serving(served: Served) -> None:
    for service in ("", "synapse.v1.AgentService"):
        response = await served.client.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_answers_for_each_loaded_agent(served: Served) -> None:
    # What a client checks to learn that a worker (restarted at the same
    # address) no longer hosts the agent it loaded there.
    check = health_pb2.HealthCheckRequest(service=f"{AGENT_HEALTH_PREFIX}echo")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.client.health.Check(check, timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    await served.client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")
    response = await served.client.health.Check(check, timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_message_size_limit_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNAPSE_MAX_MESSAGE_BYTES", "1024")
    worker = Worker()
    address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)
            await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.run_sync("echo", "x" * 2048)

            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await worker.stop(grace=0)


async def test_private_socket_directory_is_made_and_removed() -> None:
    async with Worker() as worker:
        address = await worker.start()
        socket = Path(address.removeprefix("unix:"))
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert worker.address == address

    assert worker.address is None
    assert not socket.parent.exists()
    await worker.stop()  # stopping again does nothing


async def test_rejects_bad_listen_addresses() -> None:
    worker = Worker()
    for listen, message in [
        ("http://localhost:1", "unix:PATH or tcp://HOST:PORT"),
        ("tcp://localhost", "tcp://HOST:PORT"),
        ("tcp://10.1.2.3:0", "non-loopback"),
        ("unix:/" + "x" * 200, "longer than"),
    ]:
        with pytest.raises(ValueError, match=message):
            await worker.start(listen)
