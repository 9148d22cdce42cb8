"""Trace context: a run's spans join the trace of the caller's `trace_context`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.models.instrumented import InstrumentationSettings

from conftest import Served

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def traced_agent(exporter: InMemorySpanExporter) -> Agent[None, str]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = InstrumentationSettings(tracer_provider=provider)
    agent = Agent("test", capabilities=[Instrumentation(settings=settings)])

    @agent.tool
    def current_trace(ctx: RunContext[None]) -> str:
        """The trace id the tool runs in."""
        return format(trace.get_current_span().get_span_context().trace_id, "032x")

    return agent


def run_span(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    """The run's own span: the one whose parent is not one of the run's spans."""
    ids = {span.context.span_id for span in spans}
    [root] = [span for span in spans if span.parent is None or span.parent.span_id not in ids]
    return root


async def test_a_run_sync_joins_the_callers_trace(
    served: Served, exporter: InMemorySpanExporter
) -> None:
    await served.worker.load_agent("traced", traced_agent(exporter))

    result = await served.client.run_sync(
        "traced",
        "hi",
        trace_context={"traceparent": TRACEPARENT, "tracestate": "synapse=test"},
    )

    spans = exporter.get_finished_spans()
    # The agent run, its model requests, its tool call.
    assert len(spans) >= 3
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE_ID}
    root = run_span(spans)
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.parent.is_remote
    assert root.context.trace_state.get("synapse") == "test"
    # The agent's tool saw the caller's trace as its current one.
    assert TRACE_ID in result.text


async def test_a_streamed_run_joins_it_too(served: Served, exporter: InMemorySpanExporter) -> None:
    await served.worker.load_agent("traced", traced_agent(exporter))

    await served.client.run("traced", "hi", trace_context={"traceparent": TRACEPARENT})

    root = run_span(exporter.get_finished_spans())
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_ID


async def test_without_a_trace_context_a_run_starts_its_own_trace(
    served: Served, exporter: InMemorySpanExporter
) -> None:
    await served.worker.load_agent("traced", traced_agent(exporter))

    await served.client.run_sync("traced", "hi")

    root = run_span(exporter.get_finished_spans())
    assert root.parent is None
    assert format(root.context.trace_id, "032x") != TRACE_ID
    # Nothing of a run's context is left in the worker's.
    assert not trace.get_current_span().get_span_context().is_valid
