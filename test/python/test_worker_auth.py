"""TCP workers: TLS and the bearer token, over real TLS connections."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import synapse_fixtures.bridge_types as bt
from bridge_support import FIXTURE, BridgeClient
from conftest import (
    MAKE_TEST_CERT,
    TOKEN,
    AgentClient,
    RunFailed,
    TlsFiles,
    error_detail,
    tls_channel,
)
from synapse_python import Worker
from synapse_python._auth import BearerToken, TlsCredentials
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

SERVICE = "synapse.v1.AgentService"
SERVING = health_pb2.HealthCheckResponse.SERVING
REFUSED = "missing or invalid bearer token"


@pytest.fixture
async def secured(tls_files: TlsFiles) -> AsyncIterator[tuple[Worker, str]]:
    worker = Worker(tls_cert=tls_files.cert, tls_key=tls_files.key, token=TOKEN)
    await worker.load_agent("echo", "synapse_fixtures.agents:echo_agent")
    address = await worker.start("tcp://127.0.0.1:0")
    yield worker, address
    await worker.stop(grace=0)


def assert_refused(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert error.details() == REFUSED
    detail = error_detail(error)
    assert (kind_name(detail.kind), detail.message, detail.type) == ("unauthenticated", REFUSED, "")


async def every_kind_of_call(channel: grpc.aio.Channel) -> None:
    """Unary (health, LoadAgent, RunSync), server-streaming (Watch) and bidirectional (Run)."""
    client = AgentClient(channel)
    for service in ("", SERVICE):
        health = await client.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert health.status == SERVING
    watch = client.health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert (await watch.read()).status == SERVING
    watch.cancel()
    await client.load_agent("echo2", ref="synapse_fixtures.agents:echo_agent")
    assert (await client.run_sync("echo2", "hi")).text == "success (no tool calls)"
    events = await client.run("echo", "hi")
    assert events[-1].result.text == "success (no tool calls)"


async def test_right_token_over_tls_serves_every_kind_of_call(
    secured: tuple[Worker, str], tls_files: TlsFiles
) -> None:
    worker, address = secured
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    assert (host, port.isdigit(), port != "0") == ("127.0.0.1", True, True)
    assert worker.address == address

    async with tls_channel(address, tls_files, TOKEN) as channel:
        await every_kind_of_call(channel)
    # The server name in the certificate is localhost too.
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=tls_files.cert_pem),
        grpc.access_token_call_credentials(TOKEN),
    )
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        await every_kind_of_call(channel)


async def test_the_token_as_plain_metadata_and_a_lowercase_scheme(
    secured: tuple[Worker, str], tls_files: TlsFiles
) -> None:
    async with tls_channel(secured[1], tls_files) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for value in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
            response = await health.Check(
                health_pb2.HealthCheckRequest(), metadata=(("authorization", value),), timeout=5
            )
            assert response.status == SERVING


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", TOKEN[:-1]])
async def test_no_token_or_a_wrong_one_is_refused_on_every_kind_of_call(
    secured: tuple[Worker, str], tls_files: TlsFiles, token: str | None
) -> None:
    async with tls_channel(secured[1], tls_files, token) as channel:
        client = AgentClient(channel)
        calls = {
            "Check": lambda: client.health.Check(health_pb2.HealthCheckRequest(), timeout=5),
            "Watch": lambda: client.health.Watch(health_pb2.HealthCheckRequest(), timeout=5).read(),
            "LoadAgent": lambda: client.load_agent("x", ref="synapse_fixtures.agents:echo_agent"),
            "RunSync": lambda: client.run_sync("echo", "hi"),
            # The client has not even sent its first message.
            "Run": lambda: client.run_call().read(),
            "unknown": lambda: channel.unary_unary("/no.such.Service/Method")(b"", timeout=5),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call()
            assert_refused(raised.value), name


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", TOKEN),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", f"Bearer  {TOKEN}"),),
        (("authorization", f"Bearer {TOKEN} "),),
        (("authorization", "Bearer"),),
        (("authorization", ""),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
        (("x-token", TOKEN),),
    ],
    ids=[
        "no scheme",
        "basic",
        "two spaces",
        "trailing space",
        "scheme only",
        "empty",
        "right and wrong",
        "right twice",
        "other key",
    ],
)
async def test_malformed_authorization_is_refused(
    secured: tuple[Worker, str], tls_files: TlsFiles, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with tls_channel(secured[1], tls_files) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5)
        assert_refused(raised.value)


async def test_a_plaintext_client_cannot_talk_to_the_tls_port(
    secured: tuple[Worker, str],
) -> None:
    async with grpc.aio.insecure_channel(secured[1].removeprefix("tcp://")) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=5,
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def other_tls(tmp_path: Path) -> TlsFiles:
    """Another self-signed certificate, which the worker does not use."""
    subprocess.run([str(MAKE_TEST_CERT), str(tmp_path)], check=True, capture_output=True)
    return TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem")


async def test_a_client_that_does_not_trust_the_certificate_fails(
    secured: tuple[Worker, str], other_tls: TlsFiles
) -> None:
    async with tls_channel(secured[1], other_tls, TOKEN) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_bridge_services_need_the_token_too(bridge_dir: Path, tls_files: TlsFiles) -> None:
    worker = Worker(tls_cert=tls_files.cert_pem, tls_key=tls_files.key.read_bytes(), token=TOKEN)
    worker.load_bridge(FIXTURE)
    address = await worker.start("tcp://127.0.0.1:0")
    try:
        async with tls_channel(address, tls_files, TOKEN) as channel:
            client = BridgeClient(channel, bridge_dir, FIXTURE)
            assert await client.call("big_numbers", x=3) == bt.big_numbers(3)
        async with tls_channel(address, tls_files, "wrong") as channel:
            client = BridgeClient(channel, bridge_dir, FIXTURE)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.call("big_numbers", x=3)
            assert_refused(raised.value)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.stream("count_up", start=0, stop=2)
            assert_refused(raised.value)
    finally:
        await worker.stop(grace=0)


async def test_a_token_on_a_unix_socket_is_enforced(tmp_path: Path) -> None:
    async with Worker(token=TOKEN) as worker:
        address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert_refused(raised.value)
            response = await health.Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=5,
            )
            assert response.status == SERVING


async def test_the_token_appears_in_no_log_error_or_repr(
    secured: tuple[Worker, str], tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    worker, address = secured
    caplog.set_level(logging.DEBUG)
    seen: list[str] = [repr(worker), str(worker)]
    wrong = TOKEN[:-1]
    async with tls_channel(address, tls_files, wrong) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await AgentClient(channel).run_sync("echo", "hi")
        assert_refused(raised.value)
        seen += [str(raised.value), repr(raised.value), repr(raised.value.trailing_metadata())]
        seen.append(str(error_detail(raised.value)))
    async with tls_channel(address, tls_files, TOKEN) as channel:
        client = AgentClient(channel)
        assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"
        with pytest.raises(RunFailed) as failed:  # an error past the check
            await client.run_sync("nobody", "hi")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        seen += [str(failed.value), repr(failed.value.failure)]

    assert "refused /synapse.v1.AgentService/RunSync from ipv4:127.0.0.1:" in caplog.text
    seen += [caplog.text, *(repr(vars(record)) for record in caplog.records)]
    token = BearerToken(TOKEN)
    seen += [repr(token), str(token), repr(TlsCredentials.load(tls_files.cert, tls_files.key))]
    for text in seen:
        assert TOKEN not in text
        assert wrong not in text
        assert "PRIVATE KEY" not in text


def test_bearer_token_validation_never_echoes_the_token() -> None:
    for bad in ("", "two words", "tab\there", "naïve", "line\nbreak"):
        with pytest.raises(ValueError) as raised:
            BearerToken(bad)
        if bad:
            assert bad not in str(raised.value)
    with pytest.raises(TypeError):
        BearerToken(b"bytes")  # type: ignore[arg-type]
    assert BearerToken(TOKEN).matches(TOKEN.encode())
    assert not BearerToken(TOKEN).matches(b"")


async def test_tcp_requires_tls_and_a_token(tls_files: TlsFiles, tmp_path: Path) -> None:
    cert, key = tls_files.cert, tls_files.key
    for worker, missing in [
        (Worker(), "missing: TLS and token"),
        (Worker(token=TOKEN), "missing: TLS$"),
        (Worker(tls_cert=cert, tls_key=key), "missing: token$"),
    ]:
        with pytest.raises(ValueError, match=missing):
            await worker.start("tcp://127.0.0.1:0")
        assert worker.address is None
    with pytest.raises(ValueError, match="together"):
        Worker(tls_cert=cert)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="not PEM"):
        Worker(tls_cert=tmp_path / "junk.pem", tls_key=key)
    with pytest.raises(FileNotFoundError):
        Worker(tls_cert=tmp_path / "absent.pem", tls_key=key)
    # Non-loopback still needs allow_remote, even with TLS and a token.
    with pytest.raises(ValueError, match="non-loopback"):
        await Worker(tls_cert=cert, tls_key=key, token=TOKEN).start("tcp://10.1.2.3:0")


def test_unauthenticated_is_an_error_kind() -> None:
    assert kind_name(agent_pb2.ERROR_KIND_UNAUTHENTICATED) == "unauthenticated"
