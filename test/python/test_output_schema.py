"""Structured output: spec agents with an output JSON schema, and output validation that fails."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from conftest import AgentClient, RunFailed, error_detail, split_events
from synapse_python import _agents
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

PERSON = {
    "type": "object",
    "title": "Person",
    "description": "Someone the user mentioned.",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def spec(schema: object, model: str = "test") -> agent_pb2.AgentSpec:
    return agent_pb2.AgentSpec(model=model, output_schema_json=json.dumps(schema).encode())


async def test_a_spec_with_an_output_schema_answers_conforming_json(client: AgentClient) -> None:
    response = await client.load_agent("person", spec=spec(PERSON))

    assert response.output_kind == "json"
    result = await client.run_sync("person", "who?")
    assert result.WhichOneof("output") == "json"
    output = json.loads(result.json)
    assert _agents._json_schema.load(PERSON).problems(output) == []
    deltas, streamed = split_events(await client.run("person", "who?"))
    assert deltas == []
    assert json.loads(streamed.json) == output


async def test_output_that_never_conforms_is_output_validation_failed(client: AgentClient) -> None:
    # TestModel answers "a" for any string: never three capitals.
    code = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["code"],
    }
    await client.load_agent("code", spec=spec(code))

    with pytest.raises(RunFailed) as raised:
        await client.run_sync("code", "which airport?")

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "output_validation_failed"
    assert detail.message == (
        "Exceeded maximum output retries (1); last problem: the output does not match "
        'the JSON schema: $.code: must match the pattern "^[A-Z]{3}$"'
    )


async def test_an_output_type_never_valid_is_output_validation_failed(client: AgentClient) -> None:
    await client.load_agent("invalid_city", ref="synapse_fixtures.agents:invalid_city_agent")

    with pytest.raises(RunFailed) as sync_raised:
        await client.run_sync("invalid_city", "the capital of France")
    with pytest.raises(RunFailed) as stream_raised:
        await client.run("invalid_city", "the capital of France")

    for raised in (sync_raised, stream_raised):
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        detail = error_detail(raised.value)
        assert kind_name(detail.kind) == "output_validation_failed"
        assert detail.type == "pydantic_ai.exceptions.UnexpectedModelBehavior"
        assert detail.message == (
            "Exceeded maximum output retries (1); last problem: 1 validation error(s): "
            "population: Input should be a valid integer, unable to parse string as an integer"
        )


@pytest.mark.parametrize(
    ("schema", "error_type", "message"),
    [
        pytest.param(
            {"type": "object", "properties": {"pet": {"oneOf": [{"type": "string"}]}}},
            "synapse_python._json_schema.SchemaError",
            "#/properties/pet/oneOf: unsupported JSON Schema keyword 'oneOf'",
            id="unsupported keyword",
        ),
        pytest.param(
            {"type": "array", "items": {"type": "string"}},
            "synapse_python._json_schema.SchemaError",
            'the output schema must have "type": "object", got \'array\'',
            id="not an object schema",
        ),
        pytest.param(
            {"type": "object", "properties": {"n": {"type": "int"}}},
            "synapse_python._json_schema.SchemaError",
            "#/properties/n/type: must be one of string, integer",
            id="unknown type",
        ),
    ],
)
async def test_a_bad_output_schema_fails_the_load(
    client: AgentClient, schema: dict[str, Any], error_type: str, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent("bad", spec=spec(schema))

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = error_detail(raised.value)
    assert (kind_name(detail.kind), detail.type) == ("load_failed", error_type)
    assert message in detail.message


async def test_an_output_schema_that_is_not_json_fails_the_load(client: AgentClient) -> None:
    bad = agent_pb2.AgentSpec(model="test", output_schema_json=b"{not json")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent("bad", spec=bad)

    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "load_failed"
    assert detail.message.startswith("the schema is not valid JSON")


# Through the private loader, to give the spec agent a model of the test's own.
async def test_the_model_sees_the_schema_and_retries_with_the_problems() -> None:
    seen: list[tuple[list[ModelMessage], AgentInfo]] = []
    answers = [{"name": "", "age": "old", "extra": 1}, {"name": "Ada", "age": 36}]

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append((messages, info))
        args = answers[len(seen) - 1]
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, args)])

    schema = json.dumps(PERSON).encode()
    loaded = await _agents.load(
        "person", _agents.AgentSpec(output_schema_json=schema), model="test"
    )

    result = await loaded.agent.run("who?", model=FunctionModel(model))

    assert result.output == {"name": "Ada", "age": 36}
    tool = seen[0][1].output_tools[0]
    assert tool.description == "Someone the user mentioned."
    assert tool.parameters_json_schema["properties"] == PERSON["properties"]
    retry = seen[1][0][-1]
    assert isinstance(retry, ModelRequest)
    assert (
        "the output does not match the JSON schema: "
        "$.name: must have at least 1 character, got 0; "
        "$.age: expected integer, got string; "
        "$.extra: unexpected property"
    ) in retry.parts[0].model_response_str()
