"""bank_support: deps holding a database connection, dynamic instructions, a tool, a model output.

The database cannot come from Elixir: `connect` is the agent's deps factory.
It gets the caller's data (a customer id), opens a (fake) connection for the
run and closes it afterwards; `closed` lists the customers whose connection
was closed, for tests.

The model reads the customer's name from its instructions; asked about the
balance it calls `customer_balance` first; told of a lost card it blocks it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel, Field
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model

closed: list[int] = []


class DatabaseConn:
    """A fake database of one customer, as the documentation's example has."""

    def __init__(self) -> None:
        self.open = True

    async def customer_name(self, *, id: int) -> str | None:
        return "John" if id == 123 else None

    async def customer_balance(self, *, id: int, include_pending: bool) -> float:
        if id != 123:
            raise ValueError("Customer not found")
        return 123.45 if include_pending else 100.0


@dataclass
class SupportDependencies:
    customer_id: int
    db: DatabaseConn


class CustomerRef(BaseModel):
    """What the caller sends: which customer the run is for."""

    customer_id: int


@contextlib.asynccontextmanager
async def connect(ref: CustomerRef) -> AsyncIterator[SupportDependencies]:
    db = DatabaseConn()
    try:
        yield SupportDependencies(customer_id=ref.customer_id, db=db)
    finally:
        db.open = False
        closed.append(ref.customer_id)


class SupportOutput(BaseModel):
    support_advice: str = Field(description="Advice returned to the customer")
    block_card: bool = Field(description="Whether to block their card or not")
    risk: int = Field(description="Risk level of query", ge=0, le=10)


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _script.turns(messages)
    question = _script.prompt(messages).lower()
    named = re.search(r"name is '([^']*)'", info.instructions or "")
    name = named[1] if named else "customer"
    output_tool = info.output_tools[0].name
    if "balance" in question:
        balances = _script.returns(messages, "customer_balance")
        if not balances:
            return _script.calls(
                _script.call("customer_balance", {"include_pending": True}, f"balance_{turn}")
            )
        advice = {
            "support_advice": f"Hello {name}, your current account balance, "
            f"including pending transactions, is ${balances[-1]}.",
            "block_card": False,
            "risk": 1,
        }
    elif "card" in question:
        advice = {
            "support_advice": f"I'm sorry to hear that, {name}. "
            "We are temporarily blocking your card to prevent unauthorized transactions.",
            "block_card": True,
            "risk": 8,
        }
    else:
        advice = {"support_advice": f"How can I help, {name}?", "block_card": False, "risk": 0}
    return _script.calls(_script.call(output_tool, advice, f"advice_{turn}"))


support_agent = Agent(
    recorded_model(_model, name="bank_support"),
    deps_type=SupportDependencies,
    output_type=SupportOutput,
    instructions=(
        "You are a support agent in our bank, give the customer support "
        "and judge the risk level of their query."
    ),
)


@support_agent.instructions
async def add_customer_name(ctx: RunContext[SupportDependencies]) -> str:
    assert ctx.deps.db.open, "the connection is closed"
    customer_name = await ctx.deps.db.customer_name(id=ctx.deps.customer_id)
    return f"The customer's name is {customer_name!r}"


@support_agent.tool
async def customer_balance(ctx: RunContext[SupportDependencies], include_pending: bool) -> float:
    """Returns the customer's current account balance."""
    return await ctx.deps.db.customer_balance(
        id=ctx.deps.customer_id, include_pending=include_pending
    )
