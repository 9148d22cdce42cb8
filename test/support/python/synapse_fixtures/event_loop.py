"""An agent that says how the event loop it runs on waits (see `synapse_python._busy_wait`)."""

from __future__ import annotations

import asyncio
import json

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from synapse_python._busy_wait import BusyWaitSelector


async def _report(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    # Async: on the loop (a sync function runs in a thread). The loop's
    # selector is asyncio's own business: read here only to report it.
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    budget = selector._budget if isinstance(selector, BusyWaitSelector) else None
    report = {"busy_wait_us": None if budget is None else round(budget * 1e6)}
    return ModelResponse(parts=[TextPart(json.dumps(report))])


loop_agent = Agent(FunctionModel(_report))
