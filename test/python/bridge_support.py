"""Helpers of the Synapse Bridge tests: the CLI, a Python gRPC client of a generated bridge."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from pydantic import TypeAdapter

from synapse_python import Worker
from synapse_python._bridge._codec import Codec
from synapse_python._bridge._ir import IR, Function
from synapse_python._proto.synapse.v1 import agent_pb2
from synapse_python.bridge import write

REPO = Path(__file__).resolve().parents[2]
FIXTURE = "synapse_fixtures.bridge_types"
FIXTURE_STEM = "synapse_fixtures_bridge_types"
EDGES = "synapse_fixtures.bridge_edges"
EDGES_STEM = "synapse_fixtures_bridge_edges"
EXAMPLES = REPO / "examples" / "bridge"
ERROR_KEY = "synapse-error-bin"


def python_path(*extra: Path | str) -> str:
    return os.pathsep.join(
        [*(str(p) for p in extra), str(REPO / "priv" / "python"), str(REPO / "test/support/python")]
    )


def cli(
    *args: str, extra_path: tuple[Path | str, ...] = (), **env: str
) -> subprocess.CompletedProcess:
    """`python -m synapse_python.bridge ARGS` with the fixtures (and `extra_path`) importable."""
    return subprocess.run(
        [sys.executable, "-m", "synapse_python.bridge", *args],
        env={**os.environ, "PYTHONPATH": python_path(*extra_path, EXAMPLES), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def importable(directory: Path, files: dict[str, bytes]) -> Iterator[Path]:
    """A bridge's generated `files` written into `directory`, which is on
    sys.path meanwhile, as it is on a worker's PYTHONPATH."""
    write(directory, files)
    sys.path.insert(0, str(directory))
    try:
        yield directory
    finally:
        sys.path.remove(str(directory))


@contextlib.asynccontextmanager
async def served(module: str, generated: Path, socket_dir: Path) -> AsyncIterator[BridgeClient]:
    """A worker serving the bridge of `module` (generated into `generated`) on
    a socket in `socket_dir`, and a gRPC client of it."""
    worker = Worker()
    worker.load_bridge(module)
    address = await worker.start(f"unix:{socket_dir / 'worker.sock'}")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield BridgeClient(channel, generated, module)
    finally:
        await worker.stop(grace=0)


def error_detail(error: grpc.aio.AioRpcError) -> agent_pb2.ErrorDetail:
    values = [value for key, value in error.trailing_metadata() or () if key == ERROR_KEY]
    assert len(values) == 1, error.trailing_metadata()
    return agent_pb2.ErrorDetail.FromString(values[0])


class BridgeClient:
    """A gRPC client of a generated bridge, built from its IR and descriptor set only.

    It writes requests from Python values (models as instances or dicts) and
    reads responses back into what the Python function returns (validated
    with its return annotation), so results compare with direct calls.
    """

    def __init__(self, channel: grpc.aio.Channel, directory: Path, module: str) -> None:
        stem = module.replace(".", "_")
        self.ir = IR.from_json(json.loads((directory / f"{stem}.ir.json").read_text()))
        # It reads responses, where an unset `T | None` is None, default or not.
        self.codec = Codec(
            self.ir, (directory / f"{stem}.desc").read_bytes(), {}, unset_is_default=False
        )
        self.channel = channel
        self.module = importlib.import_module(module)

    def function(self, name: str) -> Function:
        return self.codec.function(name)

    def _method(self, function: Function) -> str:
        return f"/{self.ir.full_service}/{function.rpc}"

    def unary(
        self, name: str, *, deadline: float = 10, **arguments: Any
    ) -> grpc.aio.UnaryUnaryCall:
        function = self.function(name)
        call = self.channel.unary_unary(
            self._method(function),
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=self.codec.message_class(function.response).FromString,
        )
        return call(self.codec.write_request(function, arguments), timeout=deadline)

    def raw_stream(
        self, name: str, *, deadline: float = 10, **arguments: Any
    ) -> grpc.aio.UnaryStreamCall:
        function = self.function(name)
        call = self.channel.unary_stream(
            self._method(function),
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=self.codec.message_class(function.response).FromString,
        )
        return call(self.codec.write_request(function, arguments), timeout=deadline)

    async def call(self, name: str, *, deadline: float = 10, **arguments: Any) -> Any:
        response = await self.unary(name, deadline=deadline, **arguments)
        return self.value(name, self.codec.read_response(self.function(name), response))

    async def stream(self, name: str, **arguments: Any) -> list[Any]:
        function = self.function(name)
        return [
            self.value(name, self.codec.read_response(function, response))
            async for response in self.raw_stream(name, **arguments)
        ]

    def value(self, name: str, raw: Any) -> Any:
        """`raw` validated as the function's result (a stream's item)."""
        returns = typing.get_type_hints(getattr(self.module, name))["return"]
        if self.function(name).kind == "stream":
            returns = typing.get_args(returns)[0]
        return TypeAdapter(returns).validate_python(raw)
