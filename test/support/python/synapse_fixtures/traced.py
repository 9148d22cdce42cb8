"""An instrumented agent whose spans go to an in-memory exporter, and can be asked for.

The prompt "spans?" answers, as JSON, every span the worker's agents finished
so far: name, trace id, span id and parent span id (hex), and whether the
parent came from another process. Any other prompt answers "traced".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from synapse_fixtures.agents import _prompt

SPANS_QUESTION = "spans?"

exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(exporter))


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if _prompt(messages) != SPANS_QUESTION:
        return ModelResponse(parts=[TextPart("traced")])
    spans = [
        {
            "name": span.name,
            "trace_id": format(span.context.trace_id, "032x"),
            "span_id": format(span.context.span_id, "016x"),
            "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
            "remote_parent": bool(span.parent and span.parent.is_remote),
        }
        for span in exporter.get_finished_spans()
    ]
    return ModelResponse(parts=[TextPart(json.dumps(spans))])


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for part in _answer(messages, info).parts:
        if isinstance(part, TextPart):
            yield part.content


traced_agent = Agent(
    FunctionModel(_answer, stream_function=_stream),
    capabilities=[Instrumentation(settings=InstrumentationSettings(tracer_provider=_provider))],
)
