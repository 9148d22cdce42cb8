"""Failures of bridged functions that user code causes, over gRPC and over the lane."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge_support import BridgeClient, error_detail
from synapse_python import Worker
from synapse_python._errors import kind_name
from synapse_python.bridge import generate, write
from test_lane import LaneClient, status

MODULE = "failing_bridged"

SOURCE = '''
"""Functions that fail in the ways a user's code does."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

class Secret(BaseModel):
    pin: int


class Item(BaseModel):
    name: str
    count: int


def check_pin(token: str) -> int:
    """Validates a value derived from its argument; raises pydantic's ValidationError."""
    return Secret.model_validate({"pin": token}).pin


async def awaits_a_cancelled_future() -> int:
    """Awaits work that someone else cancelled: raises CancelledError, not cancelled itself."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    return await future


def sync_raises_cancelled() -> int:
    """Sync code whose own asyncio work was cancelled (asyncio.run of a cancelled task)."""

    async def inner() -> int:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return 1

    return asyncio.run(inner())


def item_with_none() -> Item:
    """A model whose required int is None (assigned without validation)."""
    item = Item(name="a", count=1)
    item.count = None  # type: ignore[assignment]
    return item


def item_with_str() -> Item:
    item = Item(name="a", count=1)
    item.count = "x"  # type: ignore[assignment]
    return item


def not_a_number() -> float:
    return float("nan")


def infinite() -> float:
    return float("inf")


def stops() -> int:
    raise StopIteration("done")
'''


@pytest.fixture(scope="module")
def review_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("failing")
    (out / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(out))
    write(out, generate(MODULE).files)
    yield out
    sys.path.remove(str(out))


@pytest.fixture
async def served(
    review_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[BridgeClient, LaneClient]]:
    worker = Worker()
    worker.load_bridge(MODULE)
    address = await worker.start(
        f"unix:{tmp_path / 'worker.sock'}", lane=f"unix:{tmp_path / 'lane.sock'}"
    )
    lane = await LaneClient.connect(tmp_path / "lane.sock")
    async with grpc.aio.insecure_channel(address) as channel:
        yield BridgeClient(channel, review_dir, MODULE), lane
    await lane.close()
    await worker.stop(grace=0)


async def on_lane(client: BridgeClient, lane: LaneClient, name: str, **arguments: Any) -> Any:
    function = client.function(name)
    request = client.codec.write_request(function, arguments)
    method = f"/{client.ir.full_service}/{function.rpc}"
    return await lane.unary(method, request, timeout=5)


async def test_a_validation_error_raised_by_the_function_does_not_leak_its_input(
    served: tuple[BridgeClient, LaneClient],
) -> None:
    client, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("check_pin", token="hunter2-SECRET")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert "hunter2-SECRET" not in raised.value.details()
    assert "hunter2-SECRET" not in detail.message
    assert "hunter2-SECRET" not in detail.data_json.decode()
    assert "hunter2-SECRET" not in detail.traceback, detail.traceback[-400:]


async def test_a_function_raising_cancelled_error_it_was_not_cancelled_by_fails(
    served: tuple[BridgeClient, LaneClient],
) -> None:
    # An async function awaiting something cancelled elsewhere, and a sync
    # one whose own asyncio work was cancelled: failures, on either path,
    # rather than calls that look cancelled and never end.
    client, lane = served
    for name in ("awaits_a_cancelled_future", "sync_raises_cancelled"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.call(name, deadline=3)
        assert raised.value.code() == grpc.StatusCode.UNKNOWN, (name, raised.value.details())
        assert "the function raised CancelledError" in error_detail(raised.value).message
        function = client.function(name)
        method = f"/{client.ir.full_service}/{function.rpc}"
        request = client.codec.write_request(function, {}).SerializeToString()
        for call in (lane.start(method, request), lane.start(method, request, timeout=0.5)):
            frame = await asyncio.wait_for(lane.frames[call].get(), 3)
            code, _message, detail = status(frame)
            assert code == grpc.StatusCode.UNKNOWN, (name, frame)
            assert "the function raised CancelledError" in detail.message


async def test_a_result_that_cannot_be_carried_is_refused(
    served: tuple[BridgeClient, LaneClient],
) -> None:
    client, _ = served
    # A model's required field set to the wrong type, or to None, past
    # validation: refused, not sent (None was left out, as if unset). NaN
    # and infinities: the BEAM has no float for them.
    for name, kind in (
        ("item_with_str", "python_error"),
        ("item_with_none", "python_error"),
        ("not_a_number", "unrepresentable"),
        ("infinite", "unrepresentable"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.unary(name)
        assert kind_name(error_detail(raised.value).kind) == kind, name
        if kind == "python_error":
            assert "result.count must be an int" in raised.value.details(), name


async def test_stop_iteration_fails_alike_on_both_paths(
    served: tuple[BridgeClient, LaneClient],
) -> None:
    client, lane = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.call("stops")
    grpc_detail = error_detail(raised.value)
    code, _message, lane_detail = status(await on_lane(client, lane, "stops"))
    assert (code, grpc_detail.type, grpc_detail.message) == (
        raised.value.code(),
        lane_detail.type,
        lane_detail.message,
    )
    assert grpc_detail.message.endswith("the function raised StopIteration: done")
