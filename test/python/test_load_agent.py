"""LoadAgent: agents from references, factories and specs, and every way a load fails."""

from __future__ import annotations

import grpc
import pytest

from conftest import AgentClient, error_detail
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2


async def test_loads_an_agent_by_reference(client: AgentClient) -> None:
    response = await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")

    assert response == agent_pb2.LoadAgentResponse(agent_id="echo", name="", output_kind="text")
    assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"


async def test_loads_an_agent_from_a_factory(client: AgentClient) -> None:
    response = await client.load_agent("made", ref="synapse_fixtures.agents:make_echo_agent")

    assert response.output_kind == "text"
    assert (await client.run_sync("made", "hi")).text == "success (no tool calls)"


async def test_structured_output_agent_is_json(client: AgentClient) -> None:
    response = await client.load_agent("city", ref="synapse_fixtures.agents:city_agent")

    assert response.output_kind == "json"


async def test_loads_an_agent_from_a_spec(client: AgentClient) -> None:
    spec = agent_pb2.AgentSpec(model="test", instructions="Be brief.", name="helper")

    response = await client.load_agent("spec", spec=spec)

    assert response == agent_pb2.LoadAgentResponse(
        agent_id="spec", name="helper", output_kind="text"
    )
    result = await client.run_sync("spec", "hi")
    assert result.text == "success (no tool calls)"
    assert b"Be brief." in result.messages_json


async def test_a_spec_may_take_its_model_from_the_override(client: AgentClient) -> None:
    await client.load_agent("spec", spec=agent_pb2.AgentSpec(name="x"), model="test")

    assert (await client.run_sync("spec", "hi")).text == "success (no tool calls)"


async def test_model_override_is_used_on_every_run(client: AgentClient) -> None:
    await client.load_agent("fixed", ref="synapse_fixtures.agents:failing_agent", model="test")

    assert (await client.run_sync("fixed", "hi")).text == "success (no tool calls)"
    assert (await client.run_sync("fixed", "again")).text == "success (no tool calls)"


async def test_loading_again_replaces_the_agent(client: AgentClient) -> None:
    await client.load_agent("a", ref="synapse_fixtures.agents:echo_agent")
    await client.load_agent("a", ref="synapse_fixtures.agents:history_agent")

    assert (await client.run_sync("a", "hi")).text == "messages=1"


@pytest.mark.parametrize(
    ("fields", "error_type", "message"),
    [
        pytest.param(
            {"ref": "synapse_fixtures.no_such_module:agent"},
            "ModuleNotFoundError",
            "No module named 'synapse_fixtures.no_such_module'",
            id="missing module",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.broken_import:agent"},
            "RuntimeError",
            "boom at import",
            id="import raises",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.agents:no_such_agent"},
            "AttributeError",
            "module 'synapse_fixtures.agents' has no attribute 'no_such_agent'",
            id="missing attribute",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.agents:City.no_such_attr"},
            "AttributeError",
            "no_such_attr",
            id="missing dotted attribute",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.not_an_agent:thing"},
            "TypeError",
            "synapse_fixtures.not_an_agent:thing is int, not a pydantic-ai agent",
            id="not an agent",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.agents:make_broken_agent"},
            "LookupError",
            "no agent today",
            id="factory raises",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.agents"},
            "ValueError",
            "is not of the form 'package.module:attribute'",
            id="malformed reference",
        ),
        pytest.param(
            {"ref": "synapse_fixtures.agents:echo_agent", "model": "nonsense"},
            "pydantic_ai.exceptions.UserError",
            "Unknown model: nonsense",
            id="bad model override",
        ),
        pytest.param(
            {"spec": agent_pb2.AgentSpec(model="nonsense")},
            "pydantic_ai.exceptions.UserError",
            "Unknown model: nonsense",
            id="bad spec model",
        ),
        pytest.param(
            {"spec": agent_pb2.AgentSpec(instructions="no model")},
            "ValueError",
            "the agent spec has no model",
            id="spec without a model",
        ),
    ],
)
async def test_load_failures_are_failed_precondition_with_details(
    client: AgentClient, fields: dict[str, object], error_type: str, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent("broken", **fields)

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in raised.value.details()
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "load_failed"
    assert detail.type == error_type
    assert message in detail.message
    assert detail.traceback.startswith("Traceback")
    assert error_type.rpartition(".")[2] in detail.traceback


async def test_a_failed_import_fails_the_same_way_again(client: AgentClient) -> None:
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.load_agent("broken", ref="synapse_fixtures.broken_import:agent")
        detail = error_detail(raised.value)
        assert (detail.type, detail.message) == ("RuntimeError", "boom at import")


async def test_a_failed_load_keeps_the_previous_agent(client: AgentClient) -> None:
    await client.load_agent("a", ref="synapse_fixtures.agents:echo_agent")
    with pytest.raises(grpc.aio.AioRpcError):
        await client.load_agent("a", ref="synapse_fixtures.not_an_agent:thing")

    assert (await client.run_sync("a", "hi")).text == "success (no tool calls)"


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"agent_id": "", "ref": "synapse_fixtures.agents:echo_agent"}, "agent_id"),
        ({"agent_id": "x"}, "needs a ref or a spec"),
    ],
)
async def test_malformed_load_requests_are_invalid_argument(
    client: AgentClient, request_fields: dict[str, str], message: str
) -> None:
    agent_id = request_fields.pop("agent_id")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent(agent_id, **request_fields)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert message in detail.message
