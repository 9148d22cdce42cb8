"""The files of one bridge: made in memory, then written to a directory or checked against it.

For the Python module `my_module` (dots become underscores: `pkg.mod` → `pkg_mod`):

| file                           | what                                                        |
|--------------------------------|-------------------------------------------------------------|
| `my_module.ir.json`            | the IR (see `_ir`), sorted keys, indent 2                   |
| `my_module.proto`              | the service and its messages                                |
| `my_module.desc`               | its FileDescriptorSet, imports included (protoc)            |
| `synapse_bridge_my_module.py`  | the Python server module the worker loads (`--bridge`)      |

The Elixir client is not written here: `mix synapse.gen.bridge` renders it from
the IR and the descriptor set (Elixir is written by Elixir).

Everything is a function of the module's code and the options: no timestamps,
no absolute paths, no dict or set order, so the same input gives byte-identical
files (and `check` can compare them).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from synapse_python._bridge import _config, _introspect, _proto_gen, _python_gen
from synapse_python._bridge._introspect import Introspection
from synapse_python._bridge._ir import GenerationError


@dataclass(frozen=True)
class Generated:
    """A bridge's files, by name (relative to the output directory)."""

    introspection: Introspection
    files: dict[str, bytes]


def command_line(
    module: str | None,
    functions: Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> str:
    """The `generate` command line that makes these files (without `--out`)."""
    words = ["python", "-m", "synapse_python.bridge", "generate"]
    if module is not None:
        words += ["--module", module]
    for function in functions or ():
        words += ["--function", function]
    if config is not None:
        words += ["--config", os.fspath(config)]
    return shlex.join(words)


def generate(
    module: str | None = None,
    functions: Sequence[str] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
) -> Generated:
    """Introspect `module` and make the Python side of its bridge (raises `GenerationError`).

    `config` is the bridge's configuration file (see `_config`); what it says
    may not also be given as an argument.
    """
    settings = _config.load(config) if config is not None else _config.Config()
    if module is not None and settings.module is not None and module != settings.module:
        raise GenerationError(
            f"the module is {module!r}, but the bridge config {settings.path} says "
            f"{settings.module!r}"
        )
    if functions and settings.functions is not None:
        raise GenerationError(
            f"the functions are given both as arguments and by the bridge config {settings.path}"
        )
    module_name = module or settings.module
    if module_name is None:
        raise GenerationError("no module to bridge: give --module, or a config with a module")
    introspection = _introspect.introspect_module(
        module_name,
        functions or settings.functions,
        service=settings.service,
        custom_types=settings.types,
        on_loop=settings.on_loop,
    )
    ir = introspection.ir
    command = command_line(module, functions, config)
    proto = _proto_gen.render(ir, command=command)
    descriptor_set = _proto_gen.compile_descriptor_set(_proto_gen.proto_file_name(ir), proto)
    ir_json = json.dumps(ir.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    files = {
        f"{ir.stem}.ir.json": ir_json.encode(),
        _proto_gen.proto_file_name(ir): proto.encode(),
        f"{ir.stem}.desc": descriptor_set,
        f"{_python_gen.server_module_name(ir.module)}.py": _python_gen.render(
            ir, command=command
        ).encode(),
    }
    return Generated(introspection, files)


def write(out: str | os.PathLike[str], files: dict[str, bytes]) -> list[Path]:
    """Write `files` into `out` (created if needed), each atomically; returns their paths."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(files):
        path = directory / name
        partial = path.with_name(f".{name}.tmp")
        partial.write_bytes(files[name])
        os.replace(partial, path)
        written.append(path)
    return written


def stale(out: str | os.PathLike[str], files: dict[str, bytes]) -> list[tuple[Path, str]]:
    """The files of `files` that `out` lacks or holds with other contents."""
    found = []
    for name in sorted(files):
        path = Path(out) / name
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            found.append((path, "missing"))
            continue
        if current != files[name]:
            found.append((path, "differs"))
    return found
