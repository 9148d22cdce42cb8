"""What the bridge fixtures' functions return when called directly.

    python -m synapse_fixtures.bridge_expect CASES.json

CASES.json maps a Python module to its cases, each a function name and its
arguments in a JSON form Pydantic validates (models as objects, enums as
values, dates as ISO strings, bytes as {"$bytes": base64}, tuples as lists).
For each case this calls the function directly and prints, as one JSON object
mapping each module to the list of its results, each result in a canonical
JSON form the Elixir test produces from what the generated client returned:
models as objects of all their fields, enums as their values, dates as ISO
strings, datetimes as UTC with microseconds, bytes as {"$bytes": base64},
tuples as lists; a stream as the list of its items.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import importlib
import inspect
import json
import sys
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {name: canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


async def _call(module: Any, name: str, arguments: dict[str, Any]) -> Any:
    function = getattr(module, name)
    hints = typing.get_type_hints(function)
    kwargs = {
        key: TypeAdapter(hints[key]).validate_python(_from_json(value))
        for key, value in arguments.items()
    }
    result = function(**kwargs)
    if inspect.isasyncgen(result):
        return [item async for item in result]
    return await result if inspect.isawaitable(result) else result


async def expected(cases: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    results = {}
    for name, module_cases in cases.items():
        module = importlib.import_module(name)
        results[name] = [
            canonical(await _call(module, case["function"], case["args"])) for case in module_cases
        ]
    return results


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        json.dump(asyncio.run(expected(json.load(file))), sys.stdout)
