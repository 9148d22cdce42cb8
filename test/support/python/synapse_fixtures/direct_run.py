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
                "deferred_tool_results": {...},
                "usage_limits": {"tool_calls_limit": 1, ...}}]}

Each turn is one `agent.run` (or, with `"stream": true`, one
`agent.run_stream_events` read to its end; with `"stream_output": true`, one
`agent.run_stream` whose `stream_output(debounce_by=None)` is read to its
end), as a Python caller writes it. A prompt may be a list of parts: strings,
and objects with a "kind" built with pydantic-ai's classes as a caller builds
them (`BinaryContent(data, media_type=...)` from a "binary" whose "data" is
base64, `ImageUrl(url, ...)` from an "image-url", ...; see `_user_prompt`):
`deps` (when the key is there) is made by the deps factory (called with the
data, awaited if async, entered if a context manager) or validated into the
agent's `deps_type` with Pydantic; `history` passes the previous turn's
`result.all_messages()`; a turn without "prompt" has none (`None`);
`deferred_tool_results` is `{"approvals": {id: true | false | {"override_args":
{...}} | {"message": "..."}}, "calls": {id: {"return": value} | {"retry":
"..."} | {"failed": "..."}}}` (see `_deferred_results`). `record` is put in
`SYNAPSE_FIDELITY_RECORD` while the case runs, for the recorded models of
`synapse_fixtures.recording`. `model` is resolved once per case (`infer_model`)
and that model passed to every run, as Synapse does with its `model:` option.
`rewind` names a fake OpenAI server (`synapse_fixtures.openai_server`) whose
script starts over first.

OUT.json gets, per case, a list with per turn either the outcome
(`output` as JSON data, `output_type`, `usage` (every field, `by_request`
the usage of each model response), `messages_json` as text,
`new_messages_json`, `events` for streamed turns, `outputs` for
`stream_output` turns; a `DeferredToolRequests` output as `{"approvals":
[call], "calls": [call]}`, each call `{"tool_call_id", "tool_name", "args",
"metadata", "kind"}`) or `{"error": {"type": ..., "message": ...}}`. Each
run is made in `capture_run_messages()`, as a Python caller keeps what a
failing run did: an error whose run had recorded messages has them as
`"messages_json"` (pydantic-ai's JSON of them, as text), and they are the
history a next turn with `history` gets.

A streamed turn's `events` are pydantic-ai's events in the form the
Elixir side of the test gives Synapse's (`SynapseCore.Fidelity`), written
here from pydantic-ai's own events: a part starts empty, the content it
starts with following as its first delta; text going back to an earlier
part follows a `part_delta` naming it (see `SynapseCore.Event`). The
turn's `"events"` names the kinds kept, as `run_stream`'s `:events` option
does ("all", or a list; by default text deltas, tool calls and results).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import decimal
import importlib
import inspect
import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import (
    Agent,
    AgentRunResultEvent,
    DeferredToolRequests,
    DeferredToolResults,
    ModelRetry,
    ToolApproved,
    ToolDenied,
    ToolFailed,
    capture_run_messages,
)
from pydantic_ai.messages import (
    AgentStreamEvent,
    AudioUrl,
    BaseToolCallPart,
    BinaryContent,
    CachePoint,
    DeferredToolRequestsEvent,
    DocumentUrl,
    FileUrl,
    FinalResultEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ImageUrl,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    ModelResponsePart,
    ModelResponsePartDelta,
    OutputToolCallEvent,
    OutputToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    StructuredContent,
    TextContent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    ToolCallPartDelta,
    UploadedFile,
    UserContent,
    VideoUrl,
)
from pydantic_ai.models import Model, infer_model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage, UsageBase, UsageLimits

from synapse_fixtures.recording import RECORD_ENV, without_volatile


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    target: Any = importlib.import_module(module)
    for name in attr.split("."):
        target = getattr(target, name)
    return target


async def _deps(
    stack: contextlib.AsyncExitStack,
    agent: Agent[Any, Any],
    factory: Any,
    turn: dict[str, Any],
    *,
    spec: bool,
) -> Any:
    if "deps" not in turn:
        return None
    data = turn["deps"]
    if factory is None and spec:
        # A spec's agent (`Agent.from_spec` declares no deps type) gets the
        # data as it is, as a Python caller passes a dict for its templates.
        return data
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


_URL_CLASSES: dict[str, type[FileUrl]] = {
    "image-url": ImageUrl,
    "audio-url": AudioUrl,
    "video-url": VideoUrl,
    "document-url": DocumentUrl,
}


def _user_prompt(prompt: str | list[Any] | None) -> str | list[UserContent] | None:
    """A turn's prompt as a Python caller writes it: each part built with its class."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    parts: list[UserContent] = []
    for item in prompt:
        if isinstance(item, str):
            parts.append(item)
            continue
        fields = dict(item)
        match fields.pop("kind"):
            case "binary":
                parts.append(BinaryContent(base64.b64decode(fields.pop("data")), **fields))
            case "uploaded-file":
                parts.append(
                    UploadedFile(fields.pop("file_id"), fields.pop("provider_name"), **fields)
                )
            case "text-content":
                parts.append(TextContent(fields.pop("content"), **fields))
            case "structured-content":
                parts.append(StructuredContent(fields.pop("value"), **fields))
            case "cache-point":
                parts.append(CachePoint(**fields))
            case kind:
                parts.append(_URL_CLASSES[kind](fields.pop("url"), **fields))
    return parts


_DEFAULT_KINDS = ["text_delta", "tool_call", "tool_result"]


def _json(value: Any) -> Any:
    return without_volatile(pydantic_core.to_jsonable_python(value))


def _dump(adapter: pydantic.TypeAdapter[Any], value: Any) -> Any:
    return without_volatile(adapter.dump_python(value, mode="json"))


_PARTS = pydantic.TypeAdapter(ModelResponsePart)
_DELTAS = pydantic.TypeAdapter(ModelResponsePartDelta)
_EVENTS = pydantic.TypeAdapter(AgentStreamEvent)
_DEFERRED = pydantic.TypeAdapter(DeferredToolRequests)
# What a tool gave the model after its result, as pydantic-ai's messages write it.
_USER_CONTENT = pydantic.TypeAdapter(
    str | Sequence[UserContent], config=pydantic.ConfigDict(ser_json_bytes="base64")
)


def _start(event: PartStartEvent) -> list[list[Any]]:
    part, index, first = event.part, event.index, []
    if isinstance(part, TextPart | ThinkingPart):
        kind = "text_delta" if isinstance(part, TextPart) else "thinking_delta"
        first = [[kind, part.content]] if part.content else []
        part = dataclasses.replace(part, content="")
    elif isinstance(part, BaseToolCallPart) and part.args:
        first = [["tool_call_delta", index, part.tool_call_id, None, part.args]]
        part = dataclasses.replace(part, args=None)
    return [["part_start", index, _dump(_PARTS, part), event.previous_part_kind], *first]


def _delta(index: int, delta: Any) -> list[list[Any]]:
    match delta:
        case TextPartDelta() | ThinkingPartDelta():
            kind = "text_delta" if isinstance(delta, TextPartDelta) else "thinking_delta"
            shown = [[kind, delta.content_delta]] if delta.content_delta else []
            empty = "" if isinstance(delta, TextPartDelta) else None
            rest = dataclasses.replace(delta, content_delta=empty)
            if rest != type(delta)(content_delta=empty):
                shown.append(["part_delta", index, _dump(_DELTAS, rest)])
            return shown
        case ToolCallPartDelta():
            return [
                [
                    "tool_call_delta",
                    index,
                    delta.tool_call_id,
                    delta.tool_name_delta,
                    delta.args_delta,
                ]
            ]
    return [["part_delta", index, _dump(_DELTAS, delta)]]


def _event(event: Any) -> list[list[Any]]:
    """A stream event as the Elixir side of the test shows Synapse's (a list per event)."""
    match event:
        case PartStartEvent():
            return _start(event)
        case PartDeltaEvent(index=index, delta=delta):
            return _delta(index, delta)
        case PartEndEvent(index=index, part=part):
            return [["part_end", index, _dump(_PARTS, part), event.next_part_kind]]
        case FinalResultEvent(tool_name=name, tool_call_id=call_id):
            return [["final_result", name, call_id]]
        case FunctionToolCallEvent(part=part) | OutputToolCallEvent(part=part):
            kind = "tool_call" if isinstance(event, FunctionToolCallEvent) else "output_tool_call"
            return [[kind, part.tool_name, part.args_as_dict()]]
        case FunctionToolResultEvent(part=part, content=content):
            shown = None if content is None else _dump(_USER_CONTENT, content)
            return [["tool_result", part.tool_name, _json(part.content), shown]]
        case OutputToolResultEvent(part=part):
            return [["output_tool_result", part.tool_name, _json(part.content), None]]
        case DeferredToolRequestsEvent(requests=requests):
            return [["deferred_tool_requests", _dump(_DEFERRED, requests)]]
    return [["event", event.event_kind, _dump(_EVENTS, event)]]


class _Focus:
    """The events of the kinds kept, a text or thinking delta going to a part
    other than the one the last kept event with an index named following a
    `part_delta` naming that part, with an empty delta (see
    `SynapseCore.Event`)."""

    def __init__(self, kept: set[str] | None) -> None:
        self._kept = kept
        self._index: int | None = None

    def _keeps(self, kind: str) -> bool:
        return self._kept is None or kind in self._kept

    def kept(self, event: Any, shown: list[list[Any]]) -> list[list[Any]]:
        out: list[list[Any]] = []
        for each in shown:
            kind = each[0]
            if not self._keeps(kind):
                continue
            if kind in ("part_start", "part_delta", "tool_call_delta"):
                self._index = each[1]
            elif (
                isinstance(event, PartDeltaEvent)
                and kind in ("text_delta", "thinking_delta")
                and event.index != self._index
                and self._keeps("part_delta")
            ):
                self._index = event.index
                empty = TextPartDelta("") if kind == "text_delta" else ThinkingPartDelta()
                out.append(["part_delta", event.index, _dump(_DELTAS, empty)])
            out.append(each)
        return out


def _kept(turn: dict[str, Any]) -> set[str] | None:
    """The kinds of events a streamed turn keeps; None for all."""
    kinds = turn.get("events", _DEFAULT_KINDS)
    return None if kinds == "all" else set(kinds)


def _deferred_results(given: dict[str, Any] | None) -> DeferredToolResults | None:
    if given is None:
        return None
    results = DeferredToolResults()
    for tool_call_id, decision in given.get("approvals", {}).items():
        if isinstance(decision, bool):
            results.approvals[tool_call_id] = decision
        elif "override_args" in decision:
            results.approvals[tool_call_id] = ToolApproved(override_args=decision["override_args"])
        else:
            results.approvals[tool_call_id] = ToolDenied(decision["message"])
    for tool_call_id, outcome in given.get("calls", {}).items():
        if "return" in outcome:
            results.calls[tool_call_id] = outcome["return"]
        elif "retry" in outcome:
            results.calls[tool_call_id] = ModelRetry(outcome["retry"])
        else:
            results.calls[tool_call_id] = ToolFailed(outcome["failed"])
    return results


def _output(output: Any) -> Any:
    if not isinstance(output, DeferredToolRequests):
        return pydantic_core.to_jsonable_python(output)

    def call(part: Any) -> dict[str, Any]:
        return {
            "tool_call_id": part.tool_call_id,
            "tool_name": part.tool_name,
            "args": part.args_as_dict(),
            "metadata": output.metadata.get(part.tool_call_id),
            "kind": output.kind(part.tool_call_id),
        }

    return {
        "approvals": [call(part) for part in output.approvals],
        "calls": [call(part) for part in output.calls],
    }


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
        "deferred_tool_results": _deferred_results(turn.get("deferred_tool_results")),
    }
    events: list[Any] = []
    outputs: list[Any] = []
    captured: list[ModelMessage] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            arguments["deps"] = await _deps(
                stack, agent, factory, turn, spec="spec" in case or "spec_file" in case
            )
            result: AgentRunResult[Any]
            with capture_run_messages() as captured:
                if turn.get("stream_output"):
                    async with agent.run_stream(
                        _user_prompt(turn.get("prompt")), **arguments
                    ) as streamed:
                        async for output in streamed.stream_output(debounce_by=None):
                            outputs.append([_json(output), type(output).__qualname__])
                        result = streamed.result
                elif turn.get("stream"):
                    kept = _kept(turn)
                    focus = _Focus(kept)
                    async with agent.run_stream_events(
                        _user_prompt(turn.get("prompt")), **arguments
                    ) as stream:
                        async for event in stream:
                            if isinstance(event, AgentRunResultEvent):
                                result = event.result
                            else:
                                events += focus.kept(event, _event(event))
                else:
                    result = await agent.run(_user_prompt(turn.get("prompt")), **arguments)
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
        if not captured:
            return {"error": error}, history
        error["messages_json"] = ModelMessagesTypeAdapter.dump_json(captured).decode()
        return {"error": error}, captured
    content = turn.get("output_tool_return_content")
    outcome = {
        "output": _output(result.output),
        "output_type": type(result.output).__qualname__,
        "usage": _usage(result.usage, result.new_messages()),
        "messages_json": result.all_messages_json(output_tool_return_content=content).decode(),
        "new_messages_json": result.new_messages_json(output_tool_return_content=content).decode(),
        "events": events,
        "outputs": outputs,
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
