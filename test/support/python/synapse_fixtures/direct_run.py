"""Runs agents directly with pydantic-ai, with no Synapse in the way, for comparison.

    python -m synapse_fixtures.direct_run CASES.json OUT.json

CASES.json is a list of cases, each a conversation with one agent:

    {"agent": "module:attr" (or "spec": {...} for `Agent.from_spec`, or
     "spec_file": "PATH" for `Agent.from_file`, with "spec_kwargs": {...}),
     "deps_factory": "module:function" | null,
     "model": "openai-chat:gpt-4o-mini" | null, "record": "PATH" | null,
     "env": {"OPENAI_BASE_URL": "..."} | null, "rewind": "http://127.0.0.1:PORT" | null,
     "turns": [{"prompt": "...", "deps": <data>, "history": true, "stream": false,
                "model_settings": {...}, "output_tool_return_content": "...",
                "usage_limits": {"tool_calls_limit": 1, ...}}]}

Each turn is one `agent.run` (or, with `"stream": true`, one
`agent.run_stream_events` read to its end), as a Python caller writes it:
`deps` (when the key is there) is made by the deps factory (called with the
data, awaited if async, entered if a context manager) or validated into the
agent's `deps_type` with Pydantic; `history` passes the previous turn's
`result.all_messages()`. `record` is put in `SYNAPSE_FIDELITY_RECORD` while the
case runs, for the recorded models of `synapse_fixtures.recording`. `model`
is resolved once per case (`infer_model`) and that model passed to every
run, as Synapse does with its `model:` option. `rewind` names a fake OpenAI
server (`synapse_fixtures.openai_server`) whose script starts over first.

OUT.json gets, per case, a list with per turn either the outcome
(`output` as JSON data, `output_type`, `usage` (every field, `by_request`
the usage of each model response), `messages_json` as text,
`new_messages_json`, `events` for streamed turns) or `{"error": {"type":
..., "message": ...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import decimal
import importlib
import inspect
import json
import os
import sys
import urllib.request
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import Agent, AgentRunResultEvent
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models import Model, infer_model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage, UsageBase, UsageLimits

from synapse_fixtures.recording import RECORD_ENV


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    target: Any = importlib.import_module(module)
    for name in attr.split("."):
        target = getattr(target, name)
    return target


async def _deps(
    stack: contextlib.AsyncExitStack, agent: Agent[Any, Any], factory: Any, turn: dict[str, Any]
) -> Any:
    if "deps" not in turn:
        return None
    data = turn["deps"]
    if factory is None:
        return pydantic.TypeAdapter(agent.deps_type).validate_json(json.dumps(data))
    parameters = list(inspect.signature(factory).parameters.values())
    if not parameters:
        made = factory()
    else:
        hint = inspect.get_annotations(factory, eval_str=True).get(parameters[0].name)
        argument = pydantic.TypeAdapter(hint).validate_json(json.dumps(data)) if hint else data
        made = factory(argument)
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, contextlib.AbstractAsyncContextManager):
        return await stack.enter_async_context(made)
    if isinstance(made, contextlib.AbstractContextManager):
        return stack.enter_context(made)
    return made


def _event(event: Any) -> list[Any] | None:
    """A stream event as Synapse's run_stream gives it, or None."""
    match event:
        case PartStartEvent(part=TextPart(content=text)) if text:
            return ["text_delta", text]
        case PartDeltaEvent(delta=TextPartDelta(content_delta=text)) if text:
            return ["text_delta", text]
        case FunctionToolCallEvent(part=part):
            return ["tool_call", part.tool_name, part.args_as_dict()]
        case FunctionToolResultEvent(part=part):
            return ["tool_result", part.tool_name, pydantic_core.to_jsonable_python(part.content)]
    return None


def _usage_limits(fields: dict[str, Any]) -> UsageLimits:
    """`UsageLimits` of JSON data, a cost limit (a number or a decimal string) as a Decimal."""
    if fields.get("cost_limit") is not None:
        fields = fields | {"cost_limit": decimal.Decimal(str(fields["cost_limit"]))}
    return UsageLimits(**fields)


async def _turn(
    agent: Agent[Any, Any],
    case: dict[str, Any],
    turn: dict[str, Any],
    history: list[ModelMessage] | None,
    model: Model | None,
) -> tuple[dict[str, Any], list[ModelMessage] | None]:
    factory = _resolve(case["deps_factory"]) if case.get("deps_factory") else None
    arguments: dict[str, Any] = {
        "message_history": history if turn.get("history") else None,
        "model_settings": turn.get("model_settings"),
        "usage_limits": _usage_limits(turn["usage_limits"]) if "usage_limits" in turn else None,
        "model": model,
    }
    events: list[Any] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            arguments["deps"] = await _deps(stack, agent, factory, turn)
            result: AgentRunResult[Any]
            if turn.get("stream"):
                async with agent.run_stream_events(turn["prompt"], **arguments) as stream:
                    async for event in stream:
                        if isinstance(event, AgentRunResultEvent):
                            result = event.result
                        elif (shown := _event(event)) is not None:
                            events.append(shown)
            else:
                result = await agent.run(turn["prompt"], **arguments)
    except Exception as exc:
        return {"error": {"type": type(exc).__name__, "message": str(exc)}}, history
    content = turn.get("output_tool_return_content")
    outcome = {
        "output": pydantic_core.to_jsonable_python(result.output),
        "output_type": type(result.output).__qualname__,
        "usage": _usage(result.usage, result.new_messages()),
        "messages_json": result.all_messages_json(output_tool_return_content=content).decode(),
        "new_messages_json": result.new_messages_json(output_tool_return_content=content).decode(),
        "events": events,
    }
    return outcome, result.all_messages()


def _usage_fields(usage: UsageBase) -> dict[str, Any]:
    """Every field of a usage dataclass, its cost as the exact decimal string."""
    fields = {field.name: getattr(usage, field.name) for field in dataclasses.fields(usage)}
    fields["cost"] = None if usage.cost is None else str(usage.cost)
    return pydantic_core.to_jsonable_python(fields)


def _usage(usage: RunUsage, new_messages: list[ModelMessage]) -> dict[str, Any]:
    """The run's usage, every field, and each model response's (`by_request`)."""
    return _usage_fields(usage) | {
        "by_request": [
            _usage_fields(message.usage)
            | {"model_name": message.model_name or "", "provider_name": message.provider_name or ""}
            for message in new_messages
            if isinstance(message, ModelResponse)
        ]
    }


def _rewind(base_url: str) -> None:
    request = urllib.request.Request(base_url + "/_control/rewind", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def _agent(case: dict[str, Any]) -> Agent[Any, Any]:
    """The case's agent: a reference, or one built with `Agent.from_spec` / `Agent.from_file`."""
    kwargs = case.get("spec_kwargs") or {}
    if "spec" in case:
        return Agent.from_spec(case["spec"], **kwargs)
    if "spec_file" in case:
        return Agent.from_file(case["spec_file"], **kwargs)
    return _resolve(case["agent"])


async def run_cases(cases: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    outcomes = []
    for case in cases:
        if case.get("record"):
            os.environ[RECORD_ENV] = case["record"]
        else:
            os.environ.pop(RECORD_ENV, None)
        os.environ.update(case.get("env") or {})
        agent = _agent(case)
        if case.get("rewind"):
            await asyncio.to_thread(_rewind, case["rewind"])
        model = infer_model(case["model"]) if case.get("model") else None
        history: list[ModelMessage] | None = None
        turns = []
        for turn in case["turns"]:
            outcome, history = await _turn(agent, case, turn, history, model)
            turns.append(outcome)
        outcomes.append(turns)
    return outcomes


def main(argv: list[str]) -> int:
    cases_path, out_path = argv
    with open(cases_path, encoding="utf-8") as cases_file:
        cases = json.load(cases_file)
    outcomes = asyncio.run(run_cases(cases))
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(outcomes, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
