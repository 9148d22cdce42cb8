"""An agent that says whether the collector still walks it (see `synapse_python._heap`).

A module of its own, imported by nothing else: loading it is the only way
its agent gets into a worker.
"""

from __future__ import annotations

import gc
import json

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel


def _report(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    # gc.get_objects() lists the collector's generations, not the permanent one.
    walked = any(item is heap_agent for item in gc.get_objects())
    report = {
        "agent_frozen": not walked,
        "frozen_objects": gc.get_freeze_count(),
        "thresholds": list(gc.get_threshold()),
    }
    return ModelResponse(parts=[TextPart(json.dumps(report))])


heap_agent = Agent(FunctionModel(_report))


def tuned_heap_agent() -> Agent:
    """The same agent, from a module that sets the collector's thresholds itself."""
    gc.set_threshold(1234, 5, 6)
    return heap_agent
