"""Example agents for `mix synapse.run` and the README.

They use pydantic-ai's offline ``test`` model by default, so the demo works
with no API key; pass ``--model openai:gpt-4o`` (with OPENAI_API_KEY in the
environment and ``--env OPENAI_API_KEY``) to run them on a real model.
"""

from pydantic_ai import Agent

support_agent: Agent[None, str] = Agent(
    "test",
    name="support",
    instructions=(
        "You are the support desk of a small online shop. Answer in two sentences at most."
    ),
)
