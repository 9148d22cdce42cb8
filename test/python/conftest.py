"""A real worker on a Unix socket and a real grpc.aio client talking to it."""

from __future__ import annotations

import inspect
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from synapse_python import Worker
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

ERROR_KEY = "synapse-error-bin"
REPO = Path(__file__).resolve().parents[2]
MAKE_TEST_CERT = REPO / "test" / "support" / "make_test_cert.sh"

TOKEN = f"test-token-{secrets.token_hex(16)}"
"""The bearer token of the tests' secured workers: unique, so searching logs for it is exact."""

ToolAnswer = Callable[
    [agent_pb2.ToolRequest], agent_pb2.ToolResult | Awaitable[agent_pb2.ToolResult]
]


class AgentClient:
    """A `synapse.v1.AgentService` client, as any gRPC client sees the service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.health = health_pb2_grpc.HealthStub(channel)
        prefix = "/synapse.v1.AgentService/"
        self._load = channel.unary_unary(
            prefix + "LoadAgent",
            request_serializer=agent_pb2.LoadAgentRequest.SerializeToString,
            response_deserializer=agent_pb2.LoadAgentResponse.FromString,
        )
        self._run = channel.unary_unary(
            prefix + "RunSync",
            request_serializer=agent_pb2.RunRequest.SerializeToString,
            response_deserializer=agent_pb2.RunEvent.FromString,
        )
        self._run_stream = channel.stream_stream(
            prefix + "Run",
            request_serializer=agent_pb2.RunInput.SerializeToString,
            response_deserializer=agent_pb2.RunEvent.FromString,
        )

    async def load_agent(self, agent_id: str, **fields: Any) -> agent_pb2.LoadAgentResponse:
        return await self._load(agent_pb2.LoadAgentRequest(agent_id=agent_id, **fields), timeout=10)

    def run_sync_call(
        self, agent_id: str, prompt: str = "", *, timeout: float = 10, **fields: Any
    ) -> grpc.aio.UnaryUnaryCall:
        request = agent_pb2.RunRequest(agent_id=agent_id, prompt=prompt, **fields)
        return self._run(request, timeout=timeout)

    async def run_sync(self, agent_id: str, prompt: str = "", **fields: Any) -> agent_pb2.RunResult:
        """The run's result; raises `RunFailed` for its `failure`."""
        return outcome([await self.run_sync_call(agent_id, prompt, **fields)])

    def run_call(self, *, timeout: float = 10) -> grpc.aio.StreamStreamCall:
        """A `Run` call with nothing sent yet."""
        return self._run_stream(timeout=timeout)

    async def start_run(
        self, agent_id: str, prompt: str = "", *, deadline: float = 10, **fields: Any
    ) -> grpc.aio.StreamStreamCall:
        """A `Run` call (`deadline` seconds) that has sent its `start` and keeps its side open."""
        call = self.run_call(timeout=deadline)
        start = agent_pb2.RunRequest(agent_id=agent_id, prompt=prompt, **fields)
        await call.write(agent_pb2.RunInput(start=start))
        return call

    async def run(
        self, agent_id: str, prompt: str = "", *, answer: ToolAnswer | None = None, **fields: Any
    ) -> list[agent_pb2.RunEvent]:
        """Every event of a `Run`, read until the server ends the stream.

        Each `tool_request` is answered with what `answer` (sync or async) returns for it.
        """
        call = await self.start_run(agent_id, prompt, **fields)
        if answer is None:
            return await read_all(call)
        events = []
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
            if event.WhichOneof("event") == "tool_request":
                result = answer(event.tool_request)
                if inspect.isawaitable(result):
                    result = await result
                await call.write(agent_pb2.RunInput(tool_result=result))
        outcome(events)
        return events


class RunFailed(Exception):
    """A run that ended with a `failure`: RunSync's answer, or Run's last event."""

    def __init__(self, failure: agent_pb2.RunFailure, events: list[agent_pb2.RunEvent]) -> None:
        super().__init__(f"{kind_name(failure.error.kind)}: {failure.error.message}")
        self.failure = failure
        self.detail = failure.error
        self.events = events

    def code(self) -> grpc.StatusCode:
        return next(code for code in grpc.StatusCode if code.value[0] == self.detail.code)


def outcome(events: list[agent_pb2.RunEvent]) -> agent_pb2.RunResult:
    """The result the events end with; raises `RunFailed` when they end with a failure."""
    assert events, "the run sent no event"
    last = events[-1]
    if last.WhichOneof("event") == "failure":
        raise RunFailed(last.failure, events)
    assert last.WhichOneof("event") == "result", last
    return last.result


async def read_all(call: grpc.aio.StreamStreamCall) -> list[agent_pb2.RunEvent]:
    """Every event of a `Run`; raises `RunFailed` when the last one is a failure."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    outcome(events)
    return events


def split_events(events: list[agent_pb2.RunEvent]) -> tuple[list[str], agent_pb2.RunResult]:
    """The text deltas and the result of a successful run (checking the result is last).

    Tool events are left out.
    """
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds and kinds[-1] == "result", kinds
    assert "result" not in kinds[:-1] and None not in kinds, kinds
    return [event.text_delta for event in events if event.HasField("text_delta")], events[-1].result


def kinds(events: list[agent_pb2.RunEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


def tool_def(
    name: str,
    parameters: dict[str, Any] | None = None,
    *,
    description: str = "",
    max_retries: int | None = None,
) -> agent_pb2.ToolDef:
    """A client tool; `parameters` is its JSON schema (none: no parameters_json)."""
    tool = agent_pb2.ToolDef(
        name=name,
        description=description,
        parameters_json=json.dumps(parameters).encode() if parameters is not None else b"",
    )
    if max_retries is not None:
        tool.max_retries = max_retries
    return tool


def returns(request: agent_pb2.ToolRequest, value: Any) -> agent_pb2.ToolResult:
    return agent_pb2.ToolResult(
        request_id=request.request_id, return_json=json.dumps(value).encode()
    )


def retry(request: agent_pb2.ToolRequest, message: str) -> agent_pb2.ToolResult:
    return agent_pb2.ToolResult(request_id=request.request_id, retry_message=message)


@dataclass
class Served:
    worker: Worker
    address: str
    client: AgentClient


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    worker = Worker()
    address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
    async with grpc.aio.insecure_channel(address) as channel:
        yield Served(worker, address, AgentClient(channel))
    await worker.stop(grace=0)


@pytest.fixture
async def client(served: Served) -> AgentClient:
    return served.client


def error_detail(error: grpc.aio.AioRpcError | RunFailed) -> agent_pb2.ErrorDetail:
    """The `ErrorDetail` of a failed run, or the one a status carries in its trailing metadata."""
    if isinstance(error, RunFailed):
        return error.detail
    values = [value for key, value in error.trailing_metadata() or () if key == ERROR_KEY]
    assert len(values) == 1, f"expected one {ERROR_KEY} entry, got {error.trailing_metadata()!r}"
    assert isinstance(values[0], bytes)
    return agent_pb2.ErrorDetail.FromString(values[0])


@pytest.fixture(scope="session")
def bridge_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Synapse Bridges of `synapse_fixtures.bridge_types` and `.bridge_edges`, generated once.

    The directory is on sys.path, as it is on a worker's PYTHONPATH, so that
    `Worker.load_bridge` can import the generated server modules.
    """
    from synapse_python.bridge import generate, write

    out = tmp_path_factory.mktemp("bridge")
    for module in ("synapse_fixtures.bridge_types", "synapse_fixtures.bridge_edges"):
        write(out, generate(module).files)
    sys.path.insert(0, str(out))
    yield out
    sys.path.remove(str(out))


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1/localhost and its key (`make_test_cert.sh`)."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [str(MAKE_TEST_CERT), str(directory)], check=True, capture_output=True, timeout=60
    )
    return TlsFiles(directory / "cert.pem", directory / "key.pem")


def tls_channel(address: str, tls: TlsFiles, token: str | None = None) -> grpc.aio.Channel:
    """A TLS channel to `tcp://HOST:PORT` trusting `tls`, sending `token` the standard way."""
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.cert_pem)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.aio.secure_channel(address.removeprefix("tcp://"), credentials)
