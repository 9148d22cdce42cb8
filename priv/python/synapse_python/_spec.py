"""Agents defined from Elixir, as pydantic-ai's declarative agent specs.

Elixir sends the fields of pydantic-ai's `AgentSpec` it was given (`spec_json`,
plus `model` and `instructions` in their own fields) and, optionally, the text of
a spec file (YAML or JSON). `merged` makes one `AgentSpec` of them, the way
`Agent.from_spec`'s arguments supplement a spec; `build` makes the agent with
`Agent.from_spec`. A spec that does not validate, names an unknown field or
capability, or whose capability refuses its arguments is INVALID_ARGUMENT with
the path of what is wrong (`validation_failed`'s `errors`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Literal

import pydantic
from pydantic_ai import Agent
from pydantic_ai.agent.abstract import AgentRetries
from pydantic_ai.agent.spec import AgentSpec as PydanticAgentSpec
from pydantic_ai.output import OutputSpec

from synapse_python._errors import SynapseError, invalid_argument, validation_failed

if TYPE_CHECKING:
    from pydantic_ai.models import Model

    from synapse_python._agents import AgentSpec

# Fields whose value from Elixir is added to the file's rather than replacing it.
_ADDED = frozenset({"instructions", "capabilities", "model_settings", "retries"})


def merged(spec: AgentSpec) -> PydanticAgentSpec:
    """One pydantic-ai `AgentSpec`: the spec file's, supplemented by the fields given."""
    given: dict[str, Any] = _object(spec.spec_json, "the agent spec") if spec.spec_json else {}
    if "capabilities" in given:
        given["capabilities"] = _from_worker_env(given["capabilities"], ["capabilities"])
    if spec.model:
        given["model"] = spec.model
    if spec.instructions:
        given["instructions"] = spec.instructions
    fields = _validated(given, "the agent spec")
    if not spec.spec_file_text:
        return fields
    base = _validated(_file_data(spec), f"the agent spec file {spec.spec_file_path}")
    update: dict[str, Any] = {
        name: getattr(fields, name) for name in fields.model_fields_set - _ADDED
    }
    if fields.instructions:
        update["instructions"] = _listed(base.instructions) + _listed(fields.instructions)
    if fields.capabilities:
        update["capabilities"] = [*base.capabilities, *fields.capabilities]
    if fields.model_settings:
        update["model_settings"] = {**(base.model_settings or {}), **fields.model_settings}
    if fields.retries is not None:
        # As `Agent.from_spec`'s `retries=`: a budget it names replaces the
        # file's, one it does not name stays the file's.
        update["retries"] = {**_budgets(base.retries), **_budgets(fields.retries)}
    return base.model_copy(update=update)


def build(
    spec: PydanticAgentSpec,
    *,
    model: Model | None,
    output_type: OutputSpec[Any],
    name: str | None,
) -> Agent[None, Any]:
    """`Agent.from_spec`, its capability errors given the capability's path."""
    try:
        return Agent.from_spec(spec, model=model, output_type=output_type, name=name)
    except ValueError as exc:
        raise _capability_error(spec) or exc from exc


# How Elixir marks `{:system, "VAR"}`: this worker's environment variable VAR.
_WORKER_ENV_REF = "$synapse_worker_env"


def _from_worker_env(value: Any, path: list[Any]) -> Any:
    """`value` with every `{"$synapse_worker_env": "VAR"}` replaced by VAR's value here."""
    if isinstance(value, dict):
        if set(value) == {_WORKER_ENV_REF}:
            name = value[_WORKER_ENV_REF]
            found = os.environ.get(name)
            if found is None:
                message = (
                    f"the environment variable {name} is not set in the worker "
                    "(pass it with the agent's env option)"
                )
                raise validation_failed(
                    f"the agent spec's {_dotted(path)}: {message}",
                    [{"loc": path, "msg": message, "type": "missing_env"}],
                )
            return found
        return {key: _from_worker_env(item, [*path, key]) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_worker_env(item, [*path, index]) for index, item in enumerate(value)]
    return value


def _dotted(path: list[Any]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


def _object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(f"{what} is not valid JSON: {exc}", cause=exc) from exc
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be an object, got {type(value).__name__}")
    return value


def _file_data(spec: AgentSpec) -> dict[str, Any]:
    """A spec file's text as data, parsed as `AgentSpec.from_text` parses it."""
    what = f"the agent spec file {spec.spec_file_path}"
    fmt: Literal["yaml", "json"] = "json" if spec.spec_file_format == "json" else "yaml"
    if fmt == "json":
        return _object(spec.spec_file_text.encode(), what)
    import yaml  # pydantic-ai-slim's `spec` extra

    try:
        value = yaml.safe_load(spec.spec_file_text)
    except yaml.YAMLError as exc:
        raise invalid_argument(f"{what} is not valid YAML: {exc}", cause=exc) from exc
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must hold a mapping, got {type(value).__name__}")
    return value


def _validated(data: dict[str, Any], what: str) -> PydanticAgentSpec:
    """`data` as pydantic-ai's `AgentSpec`; unknown fields are refused, not ignored."""
    known = {field.alias or name for name, field in PydanticAgentSpec.model_fields.items()} | set(
        PydanticAgentSpec.model_fields
    )
    unknown = [key for key in data if key not in known]
    if unknown:
        raise validation_failed(
            f"{what} has unknown field(s) {', '.join(map(repr, unknown))} "
            f"(pydantic-ai's AgentSpec has: {', '.join(sorted(PydanticAgentSpec.model_fields))})",
            [{"loc": [key], "msg": "unknown field", "type": "extra_forbidden"} for key in unknown],
        )
    try:
        return PydanticAgentSpec.from_dict(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        shown = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in errors[:5]
        )
        raise validation_failed(
            f"{what} does not validate ({len(errors)} error(s)): {shown}",
            [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors],
            cause=exc,
        ) from exc


def _budgets(retries: int | AgentRetries | None) -> AgentRetries:
    """Retries as budgets by category (an integer is the budget of both)."""
    if retries is None:
        return {}
    if isinstance(retries, int):
        return {"tools": retries, "output": retries}
    return AgentRetries(**retries)


def _listed(instructions: Any) -> list[Any]:
    if instructions is None:
        return []
    return list(instructions) if isinstance(instructions, list) else [instructions]


def _capability_error(spec: PydanticAgentSpec) -> SynapseError | None:
    """The first capability that cannot be built on its own, as an error with its path."""
    for index, capability in enumerate(spec.capabilities):
        try:
            Agent.from_spec(PydanticAgentSpec(capabilities=[capability]))
        except ValueError as exc:
            return validation_failed(
                f"the agent spec's capabilities[{index}] ({capability.name}): {exc}",
                [{"loc": ["capabilities", index], "msg": str(exc), "type": "value_error"}],
                cause=exc,
            )
    return None
