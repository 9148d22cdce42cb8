"""Agents defined from Elixir as pydantic-ai agent specs: fields, spec files, and their errors."""

from __future__ import annotations

import json

import grpc
import pytest

from conftest import AgentClient, error_detail
from synapse_python import _agents, _spec
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

SPEC_FILE = """
model: test
name: from-the-file
instructions: From the file.
model_settings: {temperature: 0.3, max_tokens: 10}
retries: 2
capabilities: [Thinking]
"""


def test_options_supplement_a_spec_file_as_from_spec_arguments_do() -> None:
    spec = _agents.AgentSpec(
        instructions="From Elixir.",
        spec_json=json.dumps(
            {
                "model_settings": {"max_tokens": 20},
                "retries": {"tools": 4},
                "capabilities": [{"PrefixTools": {"prefix": "p", "capability": "Thinking"}}],
                "end_strategy": "early",
            }
        ).encode(),
        spec_file_text=SPEC_FILE,
        spec_file_format="yaml",
        spec_file_path="x.yaml",
    )

    merged = _spec.merged(spec)

    assert merged.model == "test"
    assert merged.name == "from-the-file"
    assert merged.instructions == ["From the file.", "From Elixir."]
    assert merged.model_settings == {"temperature": 0.3, "max_tokens": 20}
    # The file's `retries: 2` for the budget the fields do not name, as
    # `Agent.from_spec(..., retries={"tools": 4})` has it.
    assert merged.retries == {"tools": 4, "output": 2}
    assert merged.end_strategy == "early"
    assert [capability.name for capability in merged.capabilities] == ["Thinking", "PrefixTools"]


def test_without_a_file_the_fields_are_the_spec() -> None:
    spec = _agents.AgentSpec(model="test", spec_json=b'{"retries": 3, "description": "d"}')

    merged = _spec.merged(spec)

    assert (merged.model, merged.retries, merged.description) == ("test", 3, "d")
    assert merged.model_fields_set == {"model", "retries", "description"}


async def test_loads_a_spec_with_a_file_and_runs_it(client: AgentClient) -> None:
    spec = agent_pb2.AgentSpec(
        name="elixir-name",
        instructions="From Elixir.",
        spec_file_text=SPEC_FILE,
        spec_file_format="yaml",
        spec_file_path="x.yaml",
    )

    response = await client.load_agent("filed", spec=spec)

    # The file's name wins over the agent id Elixir sends.
    assert response.name == "from-the-file"
    result = await client.run_sync("filed", "hi")
    assert b"From the file.\\n\\nFrom Elixir." in result.messages_json


async def test_an_output_schema_in_a_file_is_validated_by_synapse(client: AgentClient) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    spec = agent_pb2.AgentSpec(
        spec_file_text=json.dumps({"model": "test", "output_schema": schema}),
        spec_file_format="json",
        spec_file_path="x.json",
    )

    response = await client.load_agent("typed", spec=spec)

    assert response.output_kind == "json"
    assert set(json.loads((await client.run_sync("typed", "hi")).json)) == {"n"}


@pytest.mark.parametrize(
    ("fields", "loc", "words"),
    [
        ({"retries": "many"}, ["retries", "int"], "does not validate"),
        ({"modle": "test"}, ["modle"], "unknown field(s) 'modle'"),
        ({"capabilities": ["Nope"]}, ["capabilities", 0], "capabilities[0] (Nope)"),
        (
            {"capabilities": ["Thinking", {"MCP": {"url": "http://x/mcp", "tool_prefix": ""}}]},
            ["capabilities", 1],
            "capabilities[1] (MCP)",
        ),
    ],
)
async def test_a_bad_spec_is_invalid_argument_with_the_path(
    client: AgentClient, fields: dict[str, object], loc: list[object], words: str
) -> None:
    spec = agent_pb2.AgentSpec(model="test", spec_json=json.dumps(fields).encode())

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent("bad", spec=spec)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert words in detail.message
    assert loc in [error["loc"] for error in json.loads(detail.data_json)["errors"]]


@pytest.mark.parametrize(
    ("text", "fmt", "words"),
    [
        ("model: [unclosed\n", "yaml", "x is not valid YAML"),
        ("- a list\n", "yaml", "x must hold a mapping, got list"),
        ("{not json", "json", "x is not valid JSON"),
    ],
)
async def test_a_spec_file_that_does_not_parse_is_invalid_argument(
    client: AgentClient, text: str, fmt: str, words: str
) -> None:
    spec = agent_pb2.AgentSpec(spec_file_text=text, spec_file_format=fmt, spec_file_path="x")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.load_agent("bad", spec=spec)

    detail = error_detail(raised.value)
    assert kind_name(detail.kind) == "invalid_argument"
    assert words in detail.message
