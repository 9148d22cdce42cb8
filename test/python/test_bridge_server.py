"""A generated bridge served by a worker, called over gRPC, compared with direct calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge_support import EDGES, FIXTURE, FIXTURE_STEM, BridgeClient, error_detail, python_path
from synapse_fixtures import bridge_edges as be
from synapse_fixtures import bridge_types as bt
from synapse_python import Worker
from synapse_python._errors import kind_name
from synapse_python._worker import BRIDGE_HEALTH_PREFIX
from synapse_python.bridge import BridgeService, StaleBridgeError
from test_worker_process import worker_process

UTC = dt.UTC
ADDRESS = bt.Address(street="Main Street 1", city="Lyon", postcode="69001")
PERSON = bt.Person(
    name="Ann",
    age=42,
    height=1.6,
    active=False,
    nickname="annie",
    tags=["a", "b"],
    scores={"math": 1.5, "art": -2.0},
    favourite=bt.Color.BLUE,
    priority=bt.Priority.HIGH,
    mode="slow",
    level=3,
    address=ADDRESS,
    born=dt.date(1982, 5, 17),
    last_seen=dt.datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=UTC),
    avatar=b"\x00\xffpng",
    location=(45.76, 4.83),
    ident="id-7",
    friends=[bt.Person(name="Bob", age=7, ident=12)],
    matrix=[[1, 2], [], [3]],
    groups={"team": ["Ann", "Bob"], "empty": []},
)
TEAM = bt.Team(
    lead=PERSON,
    members=[bt.Person(name="Cy", age=30), bt.Person(name="Di", age=31)],
    by_city={"Lyon": ADDRESS},
    pairs=[("x", 1), ("y", -2)],
)

# (function, arguments): every supported type, in and out.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("describe", {"person": PERSON}),
    ("describe", {"person": bt.Person(name="Min", age=0)}),
    ("echo_person", {"person": PERSON}),
    ("echo_person", {"person": bt.Person(name="Min", age=0)}),
    ("team_summary", {"team": TEAM}),
    ("team_summary", {"team": TEAM, "include_lead": False}),
    ("scalars", {"i": -3, "f": 2.5, "b": False, "s": "héllo ✓", "raw": b"\x00\xff", "maybe": 4}),
    ("scalars", {"i": 0, "f": 0.0, "b": True, "s": "", "raw": b""}),
    ("big_numbers", {"x": 2**63 - 1}),
    ("big_numbers", {"x": -(2**63)}),
    ("add_days", {"day": dt.date(2024, 2, 28)}),
    ("add_days", {"day": dt.date(2024, 3, 1), "days": -1}),
    ("shift", {"moment": dt.datetime(2024, 1, 1, tzinfo=UTC), "seconds": 0.25}),
    ("shift", {"moment": dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)}),
    (
        "containers",
        {
            "numbers": [3, 1, 2],
            "table": {"b": 2, "a": 1},
            "nested": [[1], [], [2, 3]],
            "optional_items": [1, None, 2],
            "groups": {"g": ["x", "y"], "h": []},
            "fixed": (5, "abc", True),
            "many": (4, 5),
        },
    ),
    ("containers", {"numbers": [], "table": {}, "nested": [], "optional_items": []}),
    ("choose", {"value": 7, "color": bt.Color.RED, "priority": bt.Priority.HIGH}),
    ("choose", {"value": "v", "color": bt.Color.GREEN, "priority": bt.Priority.LOW, "mode": "b"}),
    ("choose", {"value": ADDRESS, "color": bt.Color.RED, "priority": bt.Priority.LOW}),
    ("maybe_list", {"n": None}),
    ("maybe_list", {"n": 0}),
    ("maybe_list", {"n": 3}),
    ("nothing", {"x": 1}),
]


EDGE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("keywords", {"server": 1, "opts": "o", "end": True, "request": [1, 2], "_hidden": 5}),
    ("keywords", {"server": 0, "opts": "", "end": False, "request": []}),
    (
        "nesting",
        {
            "rows": [[1], None, []],
            "table": {"a": {"x": 1}, "b": {}},
            "maybe": {"k": [1], "l": []},
            "deep": [{"a": ["x", None]}, {}],
        },
    ),
    ("nesting", {"rows": [], "table": {}, "maybe": None, "deep": []}),
    ("unions", {"value": (1, "a"), "pair": ("x", be.Date(day=dt.date(2024, 1, 1), do="d"))}),
    ("unions", {"value": [1, 2], "pair": ("y", None)}),
    ("unions", {"value": be.Status.IN_PROGRESS, "pair": ("x", None)}),
    ("unions", {"value": dt.date(2020, 2, 29), "pair": ("x", None)}),
    ("unions", {"value": None, "pair": ("y", None)}),
    (
        "tree",
        {
            "node": be.Node(
                label="root", children=[be.Node(label="leaf", weights={"w": 0.5, "n": None})]
            )
        },
    ),
    ("today", {}),
]


async def direct(name: str, arguments: dict[str, Any], module: Any = bt) -> Any:
    result = getattr(module, name)(**arguments)
    return await result if inspect.isawaitable(result) else result


@pytest.fixture
def generated(bridge_dir: Path) -> Path:
    return bridge_dir


@pytest.fixture
async def worker(generated: Path, tmp_path: Path) -> AsyncIterator[tuple[Worker, str]]:
    worker = Worker()
    worker.load_bridge(FIXTURE)
    worker.load_bridge(EDGES)  # two bridges in one worker
    address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
    yield worker, address
    await worker.stop(grace=0)


@pytest.fixture
async def client(generated: Path, worker: tuple[Worker, str]) -> AsyncIterator[BridgeClient]:
    async with grpc.aio.insecure_channel(worker[1]) as channel:
        yield BridgeClient(channel, generated, FIXTURE)


@pytest.mark.parametrize(("name", "arguments"), CASES, ids=[name for name, _ in CASES])
async def test_a_call_returns_what_a_direct_call_returns(
    client: BridgeClient, name: str, arguments: dict[str, Any]
) -> None:
    expected = await direct(name, arguments)
    assert await client.call(name, **arguments) == expected


@pytest.mark.parametrize(("name", "arguments"), EDGE_CASES, ids=[name for name, _ in EDGE_CASES])
async def test_awkward_names_and_deep_nesting(
    generated: Path, worker: tuple[Worker, str], name: str, arguments: dict[str, Any]
) -> None:
    async with grpc.aio.insecure_channel(worker[1]) as channel:
        client = BridgeClient(channel, generated, EDGES)
        assert await client.call(name, **arguments) == await direct(name, arguments, be)
        assert await client.stream("statuses", count=3) == [s async for s in be.statuses(3)]


async def test_every_function_is_covered() -> None:
    called = {name for name, _ in CASES}
    special = {"overflow", "fail", "count_up", "people", "slow", "slow_stream", "wait"}
    exported = {
        f for f, v in vars(bt).items() if inspect.isfunction(v) and v.__module__ == bt.__name__
    }
    assert exported == called | special


async def test_results_keep_their_types(client: BridgeClient) -> None:
    echoed = await client.call("echo_person", person=PERSON)
    assert echoed.favourite is bt.Color.BLUE and echoed.priority is bt.Priority.HIGH
    assert echoed.last_seen == PERSON.last_seen and echoed.last_seen.tzinfo is not None
    assert echoed.location == (45.76, 4.83) and echoed.avatar == b"\x00\xffpng"
    assert await client.call("maybe_list", n=0) == []  # not None: the wrapper is set
    assert await client.call("choose", value=ADDRESS, color="red", priority=1) is None


async def test_the_wire_messages(client: BridgeClient) -> None:
    """The request and response messages, built by hand from the descriptor set."""
    function = client.function("choose")
    request = client.codec.message_class(function.request)(
        value={"address_value": {"street": "s", "city": "c"}}, color=2, priority=2
    )
    method = client.channel.unary_unary(
        f"/{client.ir.full_service}/Choose",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=client.codec.message_class(function.response).FromString,
    )
    assert not (await method(request, timeout=5)).HasField("value")  # None
    request = client.codec.message_class(function.request)(value={"int64_value": 3}, priority=2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(request, timeout=5)
    assert json.loads(error_detail(raised.value).data_json)["errors"] == [
        {"loc": ["color"], "msg": "Field required", "type": "missing"}
    ]
    request.color = 3
    response = await method(request, timeout=5)
    assert response.value.WhichOneof("value") == "int64_value"
    assert response.value.int64_value == 3 * 10


async def test_streams(client: BridgeClient) -> None:
    assert await client.stream("count_up", start=2, stop=11, step=3) == [
        n async for n in bt.count_up(2, 11, 3)
    ]
    assert await client.stream("count_up", start=0, stop=0) == []
    people = await client.stream("people", names=["Ann", "Bob"], color=bt.Color.RED)
    assert people == [p async for p in bt.people(["Ann", "Bob"], bt.Color.RED)]
    assert people[1] == bt.Person(name="Bob", age=1, favourite=bt.Color.RED, tags=["bob"])


async def test_validation_errors_carry_field_paths(client: BridgeClient) -> None:
    person = {"name": "", "age": -1, "tags": ["t"] * 11, "address": {"street": "", "city": "c"}}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("describe", person=person)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type, detail.traceback) == ("invalid_argument", "", "")
    assert detail.message.startswith("4 validation error(s): person.name: String should have")
    errors = json.loads(detail.data_json)["errors"]
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["person", "name"], "string_too_short"),
        (["person", "age"], "greater_than_equal"),
        (["person", "tags"], "too_long"),
        (["person", "address", "street"], "string_too_short"),
    ]
    assert errors[1]["msg"] == "Input should be greater than or equal to 0"


async def test_missing_and_invalid_arguments(client: BridgeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("team_summary", team={"members": [{"name": "x", "age": 1}, {"age": 2}]})
    errors = json.loads(error_detail(raised.value).data_json)["errors"]
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["team", "lead"], "missing"),
        (["team", "members", 1, "name"], "missing"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("add_days", day=dt.date(2024, 1, 1), days=5000)
    assert json.loads(error_detail(raised.value).data_json)["errors"] == [
        {
            "loc": ["days"],
            "msg": "Input should be less than or equal to 1000",
            "type": "less_than_equal",
        }
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("scalars", f=1.0, b=True, s="", raw=b"")
    assert json.loads(error_detail(raised.value).data_json)["errors"][0]["loc"] == ["i"]
    # A union's model member is validated as that model, with its path.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("choose", value={"street": "", "city": "c"}, color="red", priority=1)
    errors = json.loads(error_detail(raised.value).data_json)["errors"]
    assert [(e["loc"], e["type"]) for e in errors] == [(["value", "street"], "string_too_short")]


async def test_python_errors_keep_their_type_and_message(client: BridgeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("fail", message="no luck")
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type, detail.message) == (
        "python_error",
        "ValueError",
        "ValueError: no luck",
    )
    assert raised.value.details() == "ValueError: no luck"
    assert "raise ValueError(message)" in detail.traceback

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("overflow")
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type) == ("python_error", "OverflowError")
    assert detail.message == (
        "OverflowError: result: 18446744073709551616 does not fit in int64 "
        "(a bridge never narrows an int)"
    )


async def test_a_cancelled_call_cancels_the_function(client: BridgeClient) -> None:
    bt.CANCELLED.clear()
    call = client.unary("slow", seconds=30, tag="cancelled-call")
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _eventually(lambda: "cancelled-call" in bt.CANCELLED)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("slow", seconds=30, tag="deadline", deadline=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _eventually(lambda: "deadline" in bt.CANCELLED)


async def test_a_sync_function_outliving_its_call_is_a_stuck_thread_of_the_worker(
    client: BridgeClient, worker: tuple[Worker, str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("wait", seconds=1.0, deadline=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _eventually(lambda: worker[0].stuck_threads == 1)
    # It returns at last; its result goes nowhere, and its thread is free.
    await _eventually(lambda: worker[0].stuck_threads == 0)
    assert await client.call("wait", seconds=0.0) == 0.0


async def test_a_cancelled_stream_closes_the_generator(client: BridgeClient) -> None:
    bt.CANCELLED.clear()
    call = client.raw_stream("slow_stream", tag="stream")
    function = client.function("slow_stream")
    seen = [client.codec.read_response(function, await call.read()) for _ in range(3)]
    assert seen == [0, 1, 2]
    call.cancel()
    await _eventually(lambda: bt.CANCELLED == ["stream"])


async def test_health_reports_the_bridge_service(worker: tuple[Worker, str]) -> None:
    # By its gRPC service, and by its Python module (what a client that
    # attaches by module name checks).
    services = (
        "synapse.bridge.synapse_fixtures_bridge_types.BridgeTypes",
        f"{BRIDGE_HEALTH_PREFIX}synapse_fixtures.bridge_types",
    )
    async with grpc.aio.insecure_channel(worker[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in services:
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_a_bridge_cannot_be_added_to_a_started_worker() -> None:
    worker = Worker()
    worker._server = object()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="before the worker starts"):
        worker.load_bridge(FIXTURE)


def test_stale_generated_files_are_refused(generated: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(generated, stale)
    ir = json.loads((stale / f"{FIXTURE_STEM}.ir.json").read_text())
    next(f for f in ir["functions"] if f["name"] == "nothing")["params"][0]["type"] = {
        "kind": "str"
    }
    (stale / f"{FIXTURE_STEM}.ir.json").write_text(json.dumps(ir))
    functions = {f["name"]: getattr(bt, f["name"]) for f in ir["functions"]}
    with pytest.raises(StaleBridgeError, match="no longer matches the Python module"):
        BridgeService.load(stale / "server.py", bt, functions)

    # Docs are not the wire contract: a changed docstring is not stale.
    ir = json.loads((generated / f"{FIXTURE_STEM}.ir.json").read_text())
    ir["functions"][0]["doc"] = "Something else."
    (stale / f"{FIXTURE_STEM}.ir.json").write_text(json.dumps(ir))
    assert BridgeService.load(stale / "server.py", bt, functions).name.endswith("BridgeTypes")


async def test_the_worker_process_serves_a_bridge(generated: Path, tmp_path: Path) -> None:
    env_path = python_path(generated)
    async with worker_process(tmp_path, "--bridge", FIXTURE, pythonpath=env_path) as worker:
        address = await worker.ready_address()
        async with grpc.aio.insecure_channel(address) as channel:
            client = BridgeClient(channel, generated, FIXTURE)
            assert await client.call("describe", person=PERSON) == bt.describe(PERSON)
            assert await client.stream("count_up", start=0, stop=3) == [0, 1, 2]
        worker.process.terminate()
        assert await worker.exit_code() == 0, worker.stderr()


async def test_a_bridge_that_does_not_load_stops_the_worker_before_readiness(
    tmp_path: Path,
) -> None:
    async with worker_process(
        tmp_path, "--bridge", "my_module", pythonpath=python_path()
    ) as worker:
        assert await worker.exit_code() == 78  # EX_CONFIG: failed before it was ready
        assert await worker.process.stdout.read() == b""
        assert "Traceback" in worker.stderr()
        assert "No module named 'synapse_bridge_my_module'" in worker.stderr()


async def test_a_stale_bridge_stops_the_worker_before_readiness(
    generated: Path, tmp_path: Path
) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(generated, stale)
    ir_path = stale / f"{FIXTURE_STEM}.ir.json"
    ir_path.write_text(ir_path.read_text().replace('"kind": "bytes"', '"kind": "str"'))
    async with worker_process(
        tmp_path, "--bridge", FIXTURE, pythonpath=python_path(stale)
    ) as worker:
        assert await worker.exit_code() == 78  # EX_CONFIG: failed before it was ready
        assert await worker.process.stdout.read() == b""
        assert "StaleBridgeError" in worker.stderr()


async def _eventually(condition: Any, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
