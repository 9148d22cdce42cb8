"""A Bridge call's arguments read from its request: with every one set, those
of functions whose parameters are all plain scalars are taken as the request
holds them, and give the same call as Pydantic's checks would."""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge_support import BridgeClient, error_detail, importable, served
from synapse_fixtures import bridge_plain as bp
from synapse_python.bridge import BridgeService, generate

MODULE = "synapse_fixtures.bridge_plain"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with importable(tmp_path_factory.mktemp("bridge_plain"), generate(MODULE).files) as out:
        yield out


@pytest.fixture
async def client(generated: Path, tmp_path: Path) -> AsyncIterator[BridgeClient]:
    async with served(MODULE, generated, tmp_path) as client:
        yield client


def service(generated: Path) -> BridgeService:
    server = importlib.import_module("synapse_bridge_" + MODULE.replace(".", "_"))
    return server.SERVICE  # type: ignore[no-any-return]


def test_only_plain_scalar_parameters_are_taken_as_they_are(generated: Path) -> None:
    bridge = service(generated)
    taken = {
        function.name: bridge._takes_fields_as_they_are(function)
        for function in bridge.ir.functions
    }
    assert taken == {
        "plain": True,
        "positional": True,
        "user": True,
        "constrained": False,
        "mixed": False,
    }


@pytest.mark.parametrize(
    ("name", "arguments", "positional"),
    [
        ("plain", {"i": -(2**63), "f": -0.0, "b": False, "s": "é\x00", "raw": b"\xff"}, ()),
        ("plain", {"i": 2**63 - 1, "f": 1e308, "b": True, "s": "", "raw": b""}, ()),
        ("positional", {"a": 1, "b": "x", "c": 2.0}, ("a",)),
        ("positional", {"a": 1}, ("a",)),  # defaults: read in full
        ("positional", {"a": 1, "c": 3.0}, ("a",)),
        ("user", {"user_id": 41}, ()),
        ("mixed", {"n": 3, "tags": ["a", "b"]}, ()),
    ],
)
async def test_a_call_returns_what_a_direct_call_returns(
    client: BridgeClient, name: str, arguments: dict[str, Any], positional: tuple[str, ...]
) -> None:
    args = [arguments[key] for key in positional]
    kwargs = {key: value for key, value in arguments.items() if key not in positional}
    assert await client.call(name, **arguments) == getattr(bp, name)(*args, **kwargs)


async def test_constraints_and_missing_arguments_are_still_checked(client: BridgeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("constrained", n=-1, label="x")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = json.loads(error_detail(raised.value).data_json)["errors"]
    assert [(e["loc"], e["type"]) for e in errors] == [(["n"], "greater_than_equal")]
    # Pydantic's conversion, which a direct call does not make.
    assert await client.call("constrained", n=3, label="  padded  ") == "3:padded"

    for name, arguments, missing in [
        ("plain", {"i": 1, "f": 1.0, "b": True, "s": "s"}, ["raw"]),
        ("positional", {"b": "x"}, ["a"]),
        ("user", {}, ["user_id"]),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.call(name, **arguments)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        errors = json.loads(error_detail(raised.value).data_json)["errors"]
        assert [(e["loc"], e["type"]) for e in errors] == [(missing, "missing")]
