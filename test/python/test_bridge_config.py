"""A bridge's configuration file, Python side: functions, service, custom types, errors."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge_support import REPO, BridgeClient, cli, error_detail, importable, served
from synapse_python._bridge import _config
from synapse_python._bridge._ir import CustomType, TypeRef
from synapse_python.bridge import GenerationError, generate
from test_bridge_ir import describe

CONFIG = REPO / "test" / "support" / "bridge" / "custom.json"
CUSTOM = "synapse_fixtures.bridge_custom"
STEM = "synapse_fixtures_bridge_custom"


def test_the_config_selects_names_and_maps_types() -> None:
    generated = generate(config=CONFIG)
    ir = generated.introspection.ir
    assert (ir.module, ir.service) == (CUSTOM, "Shop")
    assert [f.name for f in ir.functions] == [
        "total",
        "scale",
        "order_id",
        "echo_id",
        "on_the_loop",
        "on_the_loop_checked",
        "on_the_loop_later",
        "in_a_thread",
        "in_a_thread_checked",
        "in_a_thread_later",
    ]
    assert [f.name for f in ir.functions if f.on_loop] == [
        "on_the_loop",
        "on_the_loop_checked",
        "on_the_loop_later",
    ]
    assert ir.types["Decimal"] == CustomType(python="decimal:Decimal", of=TypeRef("str"))
    assert ir.types["UUID"] == CustomType(python="uuid:UUID", of=TypeRef("str"))
    total = ir.functions[0]
    assert total.params[1].type == TypeRef("custom", name="Decimal")
    assert total.params[1].default == "0"
    proto = generated.files[f"{STEM}.proto"].decode()
    assert "service Shop {" in proto
    assert '  // (default "0"; a decimal.Decimal)\n  optional string discount = 2;' in proto
    assert "  repeated string others = 2;" in proto
    assert f"--config {CONFIG}" in proto


def test_the_cli_reads_the_config(tmp_path: Path) -> None:
    result = cli("generate", "--config", str(CONFIG), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / f"{STEM}.ir.json").read_text())["service"] == "Shop"
    check = cli("generate", "--config", str(CONFIG), "--out", str(tmp_path), "--check")
    assert check.returncode == 0, check.stderr

    other = cli("generate", "--config", str(CONFIG), "--module", "my_module", "--out", "x")
    assert other.returncode == 2
    assert f"the module is 'my_module', but the bridge config {CONFIG} says" in other.stderr

    twice = cli("generate", "--config", str(CONFIG), "--function", "total", "--out", "x")
    assert twice.returncode == 2
    assert "the functions are given both as arguments and by the bridge config" in twice.stderr

    nothing = cli("generate", "--out", "x")
    assert nothing.returncode == 2
    assert "no module to bridge" in nothing.stderr


@pytest.fixture(scope="module")
def generated_custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with importable(tmp_path_factory.mktemp("custom"), generate(config=CONFIG).files) as out:
        yield out


@pytest.fixture
async def shop(generated_custom: Path, tmp_path: Path) -> AsyncIterator[BridgeClient]:
    async with served(CUSTOM, generated_custom, tmp_path) as client:
        yield client


async def test_custom_types_cross_as_their_scalar(shop: BridgeClient) -> None:
    prices = [{"amount": "1.10"}, {"amount": "2.05", "currency": "USD"}]
    assert await shop.call("total", prices=prices, discount="0.15") == Decimal("3.00")
    response = await shop.unary("total", prices=prices)
    assert response.value == "3.15"  # what Pydantic serialized, exactly
    assert await shop.call("order_id", number=42) == uuid.UUID(int=42)
    assert await shop.call("echo_id", id=str(uuid.UUID(int=1))) == [uuid.UUID(int=1)]


async def test_on_loop_functions_run_on_the_event_loop(shop: BridgeClient) -> None:
    loop_thread = threading.current_thread().name  # the test's loop serves the worker
    assert await shop.call("on_the_loop") == loop_thread
    assert await shop.call("in_a_thread") != loop_thread


def test_on_loop_is_for_sync_functions() -> None:
    with pytest.raises(GenerationError) as raised:
        describe("async def f(x: int) -> int: ...", on_loop=["f"])
    assert str(raised.value) == (
        "bridged.f: on_loop is for sync functions; this one is async def, which runs on the "
        "event loop already"
    )


async def test_a_custom_value_pydantic_refuses(shop: BridgeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await shop.call("total", prices=[{"amount": "one"}])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert [error["loc"] for error in json.loads(detail.data_json)["errors"]] == [
        ["prices", 0, "amount"]
    ]


def config_error(data: Any) -> str:
    with pytest.raises(_config.ConfigError) as raised:
        _config.parse(data, "bridge.json")
    return str(raised.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "bridge config bridge.json: expected a JSON object, got a list"),
        ({"modul": "m"}, "bridge config bridge.json: modul: unknown key (the keys are module,"),
        ({"module": 3}, "module: expected the name of a Python module, got a number"),
        ({"service": ["S"]}, "service: expected the name of the gRPC service, got a list"),
        ({"functions": []}, "functions: expected a non-empty list of function names, or an"),
        ({"functions": {"f": True}}, 'functions["f"]: expected an object like {"on_loop": true}'),
        ({"functions": {"f": {"loop": True}}}, 'functions["f"].loop: unknown key (the keys are'),
        ({"functions": {"f": {"on_loop": 1}}}, 'functions["f"].on_loop: expected true or false'),
        ({"functions": ["f", 2]}, "functions[1]: expected a function name, got a number"),
        ({"functions": ["f", "f"]}, "functions: 'f' is listed twice"),
        ({"types": []}, "types: expected an object of Python type names, got a list"),
        ({"types": {"uuid.UUID": "string"}}, 'types["uuid.UUID"]: expected an object like'),
        (
            {"types": {"uuid.UUID": {"proto": "string", "elixir": {}}}},
            'types["uuid.UUID"].elixir: unknown key (the keys are proto)',
        ),
        (
            {"types": {"uuid.UUID": {"proto": "str"}}},
            'types["uuid.UUID"].proto: expected one of string, bytes, int64, double, bool, '
            "got 'str'",
        ),
        (
            {"types": {"uuid.UUIDD": {"proto": "string"}}},
            'types["uuid.UUIDD"]: cannot import uuid.UUIDD: AttributeError',
        ),
        (
            {"types": {"no_such_module.T": {"proto": "string"}}},
            "cannot import no_such_module.T: ModuleNotFoundError",
        ),
        ({"types": {"uuid.uuid4": {"proto": "string"}}}, "uuid.uuid4 is not a class"),
        (
            {"types": {"builtins.int": {"proto": "string"}}},
            "builtins.int is a type the Bridge maps itself; it cannot be remapped",
        ),
        (
            {"types": {"datetime.date": {"proto": "string"}}},
            "datetime.date is a type the Bridge maps itself",
        ),
        (
            {"types": {"threading.Thread": {"proto": "string"}}},
            "Pydantic cannot validate threading.Thread, and the Bridge converts custom types",
        ),
        ({"elixir": []}, "elixir: expected an object, got a list"),
    ],
)
def test_config_errors_name_the_key(data: Any, message: str) -> None:
    assert message in config_error(data)


def test_a_config_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bridge.json"
    path.write_text("{")
    with pytest.raises(_config.ConfigError, match=r"the bridge config .* is not valid JSON"):
        _config.load(path)
    with pytest.raises(_config.ConfigError, match="cannot read the bridge config"):
        _config.load(tmp_path / "missing.json")


def test_a_custom_type_cannot_be_a_union_member() -> None:
    with pytest.raises(GenerationError) as raised:
        describe(
            "import uuid\ndef f(x: uuid.UUID | int) -> int: ...",
            custom_types={uuid.UUID: "str"},
        )
    assert "the custom type UUID cannot be a member of a union" in str(raised.value)


def test_a_custom_type_maps_where_it_is_used_only() -> None:
    ir = describe(
        "import uuid\ndef f(x: list[uuid.UUID | None], y: int) -> dict[str, uuid.UUID]: ...",
        custom_types={uuid.UUID: "str"},
    )
    x, y = ir.functions[0].params
    assert x.type == TypeRef("list", TypeRef("optional", TypeRef("custom", name="UUID")))
    assert y.type == TypeRef("int")
    assert ir.functions[0].returns == TypeRef("dict", TypeRef("custom", name="UUID"))
    assert "OptionalUUID" in ir.types  # list[T | None] wraps its items
