"""Agents whose tools wait for a decision (pydantic-ai's deferred tools).

Their model is `agents.calling_agent`'s script (the prompt, a JSON object,
lists the calls to make; once the returns are in, the answer lists them),
recorded (`recording.recorded_model`) for the fidelity tests. Their tools:

- `delete(path)`: `requires_approval=True`;
- `pay(amount)`: raises `ApprovalRequired(metadata={"limit": 100})` for an
  amount over 100, unless the call was approved; returns "paid <amount>";
- `review(x)`: raises `ApprovalRequired(metadata={})` unless the call was
  approved (metadata that is there but empty, unlike `delete`'s: none);
  returns "reviewed <x>";
- `compute(x)`: raises `CallDeferred(metadata={"queue": "batch"})`: its result
  comes from outside.

`ops_agent` can end its run with `DeferredToolRequests`; `inline_agent` has
text output only (its approvals must be decided during the run, and it has
no `compute`).
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent, ApprovalRequired, CallDeferred, DeferredToolRequests, RunContext

from synapse_fixtures.agents import _calls_to_make
from synapse_fixtures.recording import recorded_model


def _delete(path: str) -> str:
    return f"deleted {path}"


def _pay(ctx: RunContext[Any], amount: int) -> str:
    if amount > 100 and not ctx.tool_call_approved:
        raise ApprovalRequired(metadata={"limit": 100})
    return f"paid {amount}"


def _review(ctx: RunContext[Any], x: int) -> str:
    if not ctx.tool_call_approved:
        raise ApprovalRequired(metadata={})
    return f"reviewed {x}"


def _compute(x: int) -> int:
    raise CallDeferred(metadata={"queue": "batch"})


ops_agent: Agent[None, str | DeferredToolRequests] = Agent(
    recorded_model(_calls_to_make, name="ops"), output_type=[str, DeferredToolRequests]
)
ops_agent.tool_plain(requires_approval=True, name="delete")(_delete)
ops_agent.tool(name="pay")(_pay)
ops_agent.tool(name="review")(_review)
ops_agent.tool_plain(name="compute")(_compute)

inline_agent: Agent[None, str] = Agent(recorded_model(_calls_to_make, name="inline"))
inline_agent.tool_plain(requires_approval=True, name="delete")(_delete)
inline_agent.tool(name="pay")(_pay)
inline_agent.tool(name="review")(_review)
