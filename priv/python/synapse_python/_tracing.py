"""The caller's trace context, around a run.

A run's `trace_context` is the text map an OpenTelemetry propagator wrote on
the caller's side (W3C `traceparent`, `tracestate`, maybe `baggage`). It is
extracted with the global propagator and made the current context while the
run executes, so that pydantic-ai's instrumentation spans (and any span the
agent's own code starts) are children of the caller's span, in its trace.
OpenTelemetry's context lives in a `contextvars.ContextVar`: attached in the
run's task, it reaches every coroutine and task the run starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context, propagate


@contextlib.contextmanager
def joined(carrier: Mapping[str, str]) -> Iterator[None]:
    """Run the body in the trace context `carrier` holds; as it is, when it holds none."""
    if not carrier:
        yield
        return
    token = context.attach(propagate.extract(dict(carrier)))
    try:
        yield
    finally:
        context.detach(token)
