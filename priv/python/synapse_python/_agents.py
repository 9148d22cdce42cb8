"""Finding, building and keeping the agents a worker hosts.

An agent comes from a reference to the user's Python code ("package.module:attr",
an agent or a zero-argument factory), from a spec sent by Elixir (pydantic-ai's
declarative agent spec, see `_spec`), or, for embedders, from an agent object. Model strings are
resolved with pydantic-ai's `infer_model` when the agent is loaded, so a typo or
a missing API key fails the load rather than every later run.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeAlias

from pydantic_ai import ModelRetry
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.models import Model, infer_model
from pydantic_ai.output import StructuredDict

from synapse_python import _deps, _json_schema, _spec

AnyAgent: TypeAlias = AbstractAgent[Any, Any]
OutputKind: TypeAlias = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent defined from Elixir with no Python file of the user's.

    `output_schema_json`, when not empty, is a JSON Schema of type "object" in
    the subset `_json_schema` supports: the agent's output is then a JSON object
    that conforms to it (see `_structured_output`).

    The agent is pydantic-ai's declarative one (`Agent.from_spec`): `spec_json`
    holds the other fields of pydantic-ai's `AgentSpec`, and `spec_file_text` a
    spec file's text, which the other fields supplement (see `_spec.merged`).
    """

    model: str = ""
    instructions: str = ""
    name: str = ""
    output_schema_json: bytes = b""
    spec_json: bytes = b""
    spec_file_text: str = ""
    spec_file_format: str = ""
    spec_file_path: str = ""


@dataclass(frozen=True, slots=True)
class LoadedAgent:
    """An agent ready to run, with the model that overrides its own (if any).

    Immutable, so a run keeps using the agent it started with even if the id is
    reloaded meanwhile.
    """

    agent_id: str
    agent: AnyAgent
    model: Model | None
    deps: _deps.Deps

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
    agent_id: str,
    source: str | AgentSpec | AnyAgent,
    *,
    model: str | None = None,
    deps_factory: str | Callable[..., Any] | None = None,
) -> LoadedAgent:
    """Build the agent `source` describes; `model`, when given, overrides its model.

    `deps_factory` (a "package.module:function" reference, or the function)
    makes each run's deps from the caller's data (see `_deps`).

    Raises whatever went wrong, unwrapped (the caller reports the exception's own
    type and message): `ModuleNotFoundError`, the user's import-time error,
    `AttributeError`, `TypeError` for something that is not an agent (or a
    factory that is not callable), pydantic-ai's `UserError` for a bad model
    string, ...
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
    factory: Callable[..., Any] | None
    if isinstance(deps_factory, str):
        factory = _resolve(deps_factory)
        if not callable(factory):
            raise TypeError(f"the deps factory {deps_factory} is {type(factory).__name__}")
    else:
        factory = deps_factory
    # `Agent.from_spec` declares no deps type (None), yet a spec's templates
    # (`{{name}}` in its instructions) render whatever deps a Python caller
    # passes: a spec's agent gets the run's data as it is.
    deps_type = object if isinstance(source, AgentSpec) else getattr(agent, "deps_type", object)
    deps = _deps.Deps.for_agent(
        deps_type,
        factory,
        deps_factory if isinstance(deps_factory, str) else repr(deps_factory),
    )
    return LoadedAgent(agent_id=agent_id, agent=agent, model=override, deps=deps)


def _from_spec(spec: AgentSpec, *, has_override: bool) -> AnyAgent:
    merged = _spec.merged(spec)
    if not merged.model and not has_override:
        raise ValueError("the agent spec has no model: set its model or the load's model override")
    # An output schema, given here or in the spec file, is validated by Synapse
    # (pydantic-ai's `StructuredDict` only checks for a JSON object).
    schema_data = spec.output_schema_json or (
        json.dumps(merged.output_schema).encode() if merged.output_schema is not None else b""
    )
    schema = _output_schema(schema_data) if schema_data else None
    agent = _spec.build(
        merged.model_copy(update={"output_schema": None}),
        model=infer_model(merged.model) if merged.model else None,
        output_type=_structured_output(schema) if schema else str,
        # The file's name, else the Elixir agent's.
        name=merged.name or spec.name or None,
    )
    if schema is not None:
        agent.output_validator(_conforms_to(schema))
    return agent


def _output_schema(data: bytes) -> _json_schema.Schema:
    schema = _json_schema.loads(data)
    if schema.raw.get("type") != "object":
        raise _json_schema.SchemaError(
            f'the output schema must have "type": "object", got {schema.raw.get("type")!r}'
        )
    return schema


def _structured_output(schema: _json_schema.Schema) -> type[dict[str, Any]]:
    """The output type of a spec with an output schema: a JSON object described by it.

    The schema's `title` and `description` are the output's name and description
    the model sees. (`StructuredDict` edits the schema it is given: it gets a copy.)
    """
    title, description = schema.raw.get("title"), schema.raw.get("description")
    return StructuredDict(
        copy.deepcopy(dict(schema.raw)),
        name=title if isinstance(title, str) else None,
        description=description if isinstance(description, str) else None,
    )


_MAX_REPORTED_PROBLEMS = 10


def _conforms_to(schema: _json_schema.Schema) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An output validator making the model retry until its output conforms to `schema`.

    pydantic-ai's `StructuredDict` only gives the schema to the model; it
    validates nothing but "is a JSON object". The `ModelRetry` message lists the
    problems as `path: problem`, which the model gets back to correct itself.
    """

    def conforms(output: dict[str, Any]) -> dict[str, Any]:
        problems = schema.problems(output)
        if problems:
            listed = "; ".join(str(problem) for problem in problems[:_MAX_REPORTED_PROBLEMS])
            more = len(problems) - _MAX_REPORTED_PROBLEMS
            suffix = f"; and {more} more" if more > 0 else ""
            raise ModelRetry(f"the output does not match the JSON schema: {listed}{suffix}")
        return output

    return conforms


def _resolve(ref: str) -> Any:
    """The object "package.module:attribute" names (the module imported as needed)."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"reference {ref!r} is not of the form 'package.module:attribute'")
    target: Any = _import(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target


async def _from_ref(ref: str) -> AnyAgent:
    target = _resolve(ref)
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
