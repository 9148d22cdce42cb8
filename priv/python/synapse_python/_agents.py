"""Finding, building and keeping the agents a worker hosts.

An agent comes from a reference to the user's Python code ("package.module:attr",
an agent or a zero-argument factory), from a spec sent by Elixir (model,
instructions, name), or, for embedders, from an agent object. Model strings are
resolved with pydantic-ai's `infer_model` when the agent is loaded, so a typo or
a missing API key fails the load rather than every later run.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeAlias

from pydantic_ai import Agent
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.models import Model, infer_model

AnyAgent: TypeAlias = AbstractAgent[Any, Any]
OutputKind: TypeAlias = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent defined from Elixir with no Python file of the user's."""

    model: str = ""
    instructions: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class LoadedAgent:
    """An agent ready to run, with the model that overrides its own (if any).

    Immutable, so a run keeps using the agent it started with even if the id is
    reloaded meanwhile.
    """

    agent_id: str
    agent: AnyAgent
    model: Model | None

    @property
    def name(self) -> str:
        return self.agent.name or ""

    @property
    def output_kind(self) -> OutputKind:
        return "text" if self.agent.output_type is str else "json"


class AgentRegistry:
    """The agents of one worker, by id. Loading an id again replaces its agent.

    No lock: every access happens on the event loop's thread, and a run holds its
    own `LoadedAgent`, so runs never wait for each other or for a load.
    """

    def __init__(self) -> None:
        self._agents: dict[str, LoadedAgent] = {}

    def get(self, agent_id: str) -> LoadedAgent | None:
        return self._agents.get(agent_id)

    def put(self, loaded: LoadedAgent) -> None:
        self._agents[loaded.agent_id] = loaded

    def ids(self) -> list[str]:
        return sorted(self._agents)


async def load(
    agent_id: str, source: str | AgentSpec | AnyAgent, *, model: str | None = None
) -> LoadedAgent:
    """Build the agent `source` describes; `model`, when given, overrides its model.

    Raises whatever went wrong, unwrapped (the caller reports the exception's own
    type and message): `ModuleNotFoundError`, the user's import-time error,
    `AttributeError`, `TypeError` for something that is not an agent,
    pydantic-ai's `UserError` for a bad model string, ...
    """
    override = infer_model(model) if model else None
    if isinstance(source, AgentSpec):
        agent = _from_spec(source, has_override=override is not None)
    elif isinstance(source, str):
        agent = await _from_ref(source)
    elif isinstance(source, AbstractAgent):
        agent = source
    else:
        raise TypeError(f"cannot load an agent from {type(source).__name__}")
    return LoadedAgent(agent_id=agent_id, agent=agent, model=override)


def _from_spec(spec: AgentSpec, *, has_override: bool) -> AnyAgent:
    if not spec.model and not has_override:
        raise ValueError("the agent spec has no model: set its model or the load's model override")
    return Agent(
        infer_model(spec.model) if spec.model else None,
        instructions=spec.instructions or None,
        name=spec.name or None,
    )


async def _from_ref(ref: str) -> AnyAgent:
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"agent reference {ref!r} is not of the form 'package.module:attribute'")
    target: Any = _import(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    if isinstance(target, AbstractAgent):
        return target
    if not callable(target):
        raise TypeError(
            f"{ref} is {type(target).__name__}, not a pydantic-ai agent "
            "or a zero-argument callable returning one"
        )
    made = target()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, AbstractAgent):
        raise TypeError(f"{ref}() returned {type(made).__name__}, not a pydantic-ai agent")
    return made


def _import(module_name: str) -> ModuleType:
    """`importlib.import_module`, leaving nothing half-imported behind on failure.

    Python already drops the module that failed from `sys.modules`; this also
    drops its submodules imported during the failed attempt, which would
    otherwise survive without their parent. Caches are invalidated first so a
    module written after the worker started is found.
    """
    importlib.invalidate_caches()
    before = set(sys.modules)
    try:
        return importlib.import_module(module_name)
    except BaseException:
        for name in set(sys.modules) - before:
            if name == module_name or name.startswith(module_name + "."):
                del sys.modules[name]
        raise
