"""A bridge's configuration file: JSON, one per bridge, read by both generators.

    {
      "module": "my_module",                      # the Python module (or --module)
      "functions": ["process_data", "add"],       # the functions to export (or --function),
                                                  # or {"add": {"on_loop": true}, ...}
      "service": "Greeter",                       # the gRPC service (default: MyModule)
      "types": {                                  # custom types: a Python type, and the
        "decimal.Decimal": {"proto": "string"},   # protobuf scalar it travels as
        "uuid.UUID": {"proto": "string"}
      },
      "elixir": {...}                             # read by mix synapse.gen.bridge
    }

JSON, because both sides read it with what they have: Python's `json`, and
Synapse's own JSON decoder on the Elixir side (YAML has a library on neither
side, an Elixir term file none in Python). Each side validates the keys it
owns: the `elixir` section is `mix synapse.gen.bridge`'s (this module only
checks that it is an object). Every error names the file and the key.

`"on_loop": true` makes the server call a sync function directly on the
worker's event loop instead of in one of the worker's threads
(`_threads.SyncThreads`): it saves the thread hop of each call, but while the
function runs the worker does nothing else (no other call, no health check, no
cancellation), so it is only for quick functions that never block.

A custom type is converted by Pydantic: a value arrives as the scalar and is
validated into the type (Pydantic validates `Decimal` and `UUID` from strings),
and a result is serialized by Pydantic (JSON mode; Python mode for `bytes`),
which must give the scalar. A type the Bridge maps itself (`int`, `datetime`,
models, enums, ...) cannot be remapped.
"""

from __future__ import annotations

import enum
import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from synapse_python._bridge._ir import GenerationError

# The protobuf scalars a custom type may travel as, and the IR kind of each.
PROTO_SCALARS = {
    "string": "str",
    "bytes": "bytes",
    "int64": "int",
    "double": "float",
    "bool": "bool",
}

_KEYS = ("module", "functions", "service", "types", "elixir")
_TYPE_KEYS = ("proto",)
_FUNCTION_KEYS = ("on_loop",)


class ConfigError(GenerationError):
    """The configuration file is invalid: the message names the file and the key."""


@dataclass(frozen=True)
class Config:
    """A bridge's configuration (what the Python side reads of it)."""

    path: str | None = None
    module: str | None = None
    functions: tuple[str, ...] | None = None
    # The sync functions to call on the event loop rather than in a thread.
    on_loop: frozenset[str] = frozenset()
    service: str | None = None
    # Custom types: the class, and the IR kind of the scalar it travels as.
    types: Mapping[type, str] = field(default_factory=dict)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check the configuration file at `path` (raises `ConfigError`)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the bridge config {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the bridge config {path} is not valid JSON: {exc}") from exc
    return parse(data, path)


def parse(data: Any, path: str) -> Config:
    """Check a decoded configuration (raises `ConfigError` naming `path` and the key)."""

    def error(key: str, problem: str) -> ConfigError:
        return ConfigError(f"bridge config {path}: {key}: {problem}")

    if not isinstance(data, dict):
        raise ConfigError(f"bridge config {path}: expected a JSON object, got {_kind(data)}")
    for key in data:
        if key not in _KEYS:
            raise error(key, f"unknown key (the keys are {', '.join(_KEYS)})")
    module = data.get("module")
    if module is not None and not (isinstance(module, str) and module):
        raise error("module", f"expected the name of a Python module, got {_kind(module)}")
    service = data.get("service")
    if service is not None and not isinstance(service, str):
        raise error("service", f"expected the name of the gRPC service, got {_kind(service)}")
    if not isinstance(data.get("elixir", {}), dict):
        raise error("elixir", f"expected an object, got {_kind(data['elixir'])}")
    functions, on_loop = _functions(data.get("functions"), error)
    return Config(
        path=path,
        module=module,
        functions=functions,
        on_loop=on_loop,
        service=service,
        types=_types(data.get("types", {}), error),
    )


def _functions(value: Any, error: Any) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The functions to export, and those to call on the event loop."""
    if value is None:
        return None, frozenset()
    if isinstance(value, dict) and value:
        on_loop = set()
        for name, options in value.items():
            key = f"functions[{json.dumps(name)}]"
            if not isinstance(options, dict):
                raise error(
                    key, f'expected an object like {{"on_loop": true}}, got {_kind(options)}'
                )
            for option in options:
                if option not in _FUNCTION_KEYS:
                    keys = ", ".join(_FUNCTION_KEYS)
                    raise error(f"{key}.{option}", f"unknown key (the keys are {keys})")
            if not isinstance(options.get("on_loop", False), bool):
                raise error(
                    f"{key}.on_loop", f"expected true or false, got {_kind(options['on_loop'])}"
                )
            if options.get("on_loop"):
                on_loop.add(name)
        return tuple(value), frozenset(on_loop)
    if not isinstance(value, list) or not value:
        raise error(
            "functions",
            f"expected a non-empty list of function names, or an object, got {_kind(value)}",
        )
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise error(f"functions[{index}]", f"expected a function name, got {_kind(name)}")
    if len(set(value)) != len(value):
        twice = next(name for name in value if value.count(name) > 1)
        raise error("functions", f"{twice!r} is listed twice")
    return tuple(value), frozenset()


def _types(value: Any, error: Any) -> dict[type, str]:
    if not isinstance(value, dict):
        raise error("types", f"expected an object of Python type names, got {_kind(value)}")
    types: dict[type, str] = {}
    for name, mapping in value.items():
        key = f"types[{json.dumps(name)}]"
        if not isinstance(mapping, dict):
            raise error(key, f'expected an object like {{"proto": "string"}}, got {_kind(mapping)}')
        for option in mapping:
            if option not in _TYPE_KEYS:
                raise error(
                    f"{key}.{option}", f"unknown key (the keys are {', '.join(_TYPE_KEYS)})"
                )
        proto = mapping.get("proto")
        if proto not in PROTO_SCALARS:
            raise error(
                f"{key}.proto", f"expected one of {', '.join(PROTO_SCALARS)}, got {proto!r}"
            )
        cls = _resolve(name, lambda problem, key=key: error(key, problem))
        if cls in types:
            raise error(key, f"{cls.__module__}.{cls.__qualname__} is mapped twice")
        types[cls] = PROTO_SCALARS[proto]
    return types


def resolve_type(name: str) -> type:
    """The class a custom type's name (`decimal.Decimal`, or `module:Qual.Name`) names."""
    return _resolve(name, GenerationError)


def _resolve(name: str, error: Any) -> type:
    module_name, _, qualname = name.partition(":") if ":" in name else name.rpartition(".")
    if not module_name or not qualname:
        raise error(f"expected a type as module.Class, got {name!r}")
    try:
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise error(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, type):
        raise error(f"{name} is not a class")
    if (
        value in (int, float, bool, str, bytes)
        or issubclass(value, pydantic.BaseModel | enum.Enum)
        or value.__module__ == "datetime"
    ):
        raise error(f"{name} is a type the Bridge maps itself; it cannot be remapped")
    try:
        pydantic.TypeAdapter(value)
    except pydantic.PydanticSchemaGenerationError as exc:
        raise error(
            f"Pydantic cannot validate {name}, and the Bridge converts custom types with "
            f"Pydantic: {str(exc).splitlines()[0]}"
        ) from exc
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: f"the string {value!r}",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
