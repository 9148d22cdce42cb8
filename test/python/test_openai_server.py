"""Agents on a real OpenAI client, over HTTP, against the fake server in synapse_fixtures.

The agent is configured the way a user without Python code would: the model
string "openai-chat:<name>" and the environment variables OPENAI_BASE_URL and
OPENAI_API_KEY, read when the agent is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conftest import AgentClient, RunFailed, error_detail, split_events
from synapse_python._errors import kind_name
from synapse_python._proto.synapse.v1 import agent_pb2

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai-chat:gpt-4o-mini"


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "test" / "support" / "python")}
    process = subprocess.Popen(
        [sys.executable, "-m", "synapse_fixtures.openai_server", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("LISTENING "), line
    return process, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def stop_server(process: subprocess.Popen[bytes]) -> int:
    """Close the server's stdin, which is how it is told to exit; returns its exit code."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    try:
        return process.wait(timeout=10)
    finally:
        process.stdout.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    process, url = start_server()
    yield url
    assert stop_server(process) == 0


@pytest.fixture
def openai_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


async def load_spec_agent(client: AgentClient, agent_id: str = "gpt") -> None:
    await client.load_agent(agent_id, spec=agent_pb2.AgentSpec(model=MODEL))


@pytest.mark.usefixtures("openai_env")
async def test_run_sync_over_http(client: AgentClient) -> None:
    await load_spec_agent(client)

    result = await client.run_sync("gpt", "hello there")

    assert result.text == "echo: hello there"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (2, 3)
    assert result.usage.requests == 1


@pytest.mark.usefixtures("openai_env")
async def test_run_streams_the_words_over_http(client: AgentClient) -> None:
    await load_spec_agent(client)

    deltas, result = split_events(await client.run("gpt", "hello big world"))

    assert deltas == ["echo: ", "hello ", "big ", "world"]
    assert "".join(deltas) == result.text == "echo: hello big world"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 4)


@pytest.mark.usefixtures("openai_env")
async def test_model_settings_reach_the_server(client: AgentClient) -> None:
    await load_spec_agent(client)
    settings = b'{"temperature": 0.5}'

    result = await client.run_sync("gpt", "hi", model_settings_json=settings)
    deltas, streamed = split_events(await client.run("gpt", "hi", model_settings_json=settings))

    assert result.text == streamed.text == "".join(deltas) == "echo: hi (temperature=0.5)"


@pytest.mark.usefixtures("openai_env")
async def test_a_model_override_points_a_python_agent_at_the_server(client: AgentClient) -> None:
    await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent", model=MODEL)

    assert (await client.run_sync("echo", "hi")).text == "echo: hi"


async def test_a_wrong_key_is_a_model_http_error(
    client: AgentClient, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    await load_spec_agent(client)

    with pytest.raises(RunFailed) as sync_raised:
        await client.run_sync("gpt", "hi")
    with pytest.raises(RunFailed) as stream_raised:
        await client.run("gpt", "hi")

    for raised in (sync_raised, stream_raised):
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        detail = error_detail(raised.value)
        assert kind_name(detail.kind) == "model_http_error"
        assert "HTTP status 401" in detail.message
        assert "Incorrect API key" in detail.message


# The server itself, over plain HTTP.


def post(base_url: str, body: dict[str, object], key: str = "test-key") -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_the_server_answers_a_chat_completion(base_url: str) -> None:
    status, content_type, body = post(
        base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )

    assert (status, content_type) == (200, "application/json")
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "m"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hi",
        "refusal": None,
    }
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_the_server_streams_server_sent_events(base_url: str) -> None:
    status, content_type, body = post(
        base_url,
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "echo: first"},
                {"role": "user", "content": [{"type": "text", "text": "a  b"}]},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    assert (status, content_type.split(";")[0]) == (200, "text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [delta["content"] for delta in deltas[1:-1]] == ["echo: ", "a  ", "b"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_the_server_rejects_a_wrong_key_like_openai(base_url: str) -> None:
    status, content_type, body = post(base_url, {"model": "m", "messages": []}, key="nope")

    assert (status, content_type) == (401, "application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided")


def test_the_server_exits_when_its_stdin_closes() -> None:
    process, _ = start_server()

    assert stop_server(process) == 0
