"""The Synapse Bridge: typed Elixir clients for typed Python functions.

    python -m synapse_python.bridge generate --module my_module [--function F ...]
                                             [--config FILE] --out DIR [--check]

imports `my_module` (from PYTHONPATH), describes its functions (all public
functions defined in it, or the `--function`s named) and their Pydantic models
as an intermediate representation (IR, see `synapse_python._bridge._ir`), and
writes to DIR the Python side of the bridge:

| file                           | what                                                      |
|--------------------------------|-----------------------------------------------------------|
| `my_module.ir.json`            | the IR, as JSON                                           |
| `my_module.proto`              | package `synapse.bridge.my_module`, service `MyModule`    |
| `my_module.desc`               | the FileDescriptorSet (imports included)                  |
| `synapse_bridge_my_module.py`  | the Python server module                                  |

The Elixir client module (`MyModule`) is written by `mix synapse.gen.bridge`,
which runs this command and renders the client from the IR and the descriptor
set: Elixir is written by Elixir.

`--config FILE` reads the bridge's configuration, a JSON file that may name the
module, the functions, the gRPC service and custom types (`decimal.Decimal`
carried as a string, ...); see `synapse_python._bridge._config`, and
`mix help synapse.gen.bridge` for the whole file, Elixir side included.

(For a dotted module `pkg.mod` the file stem is `pkg_mod`.) The same input
gives byte-identical files; `--check` makes them in memory and exits 1, listing
them, when DIR's are missing or different. Exit codes: 0 done / up to date,
1 stale (`--check`), 2 a bad command line or a module that cannot be bridged
(the message names the function, parameter and type).

`python -m synapse_python.worker --bridge my_module` serves a generated bridge:
DIR and the directory of `my_module` on PYTHONPATH.

Types
-----

(The Elixir column is what `mix synapse.gen.bridge` makes of them.)

| Python                     | proto                               | Elixir                       |
|----------------------------|-------------------------------------|------------------------------|
| `int`                      | `int64` (beyond it: an error)       | `integer()`                  |
| `float`                    | `double`                            | `float()` (integer accepted) |
| `bool`                     | `bool`                              | `boolean()`                  |
| `str`                      | `string`                            | `String.t()`                 |
| `bytes`                    | `bytes`                             | `binary()`                   |
| `datetime` (naive: UTC)    | `google.protobuf.Timestamp`         | `DateTime.t()` (UTC)         |
| `date`                     | `string` `"YYYY-MM-DD"`             | `Date.t()`                   |
| `T \\| None`, `Optional`   | `optional T`, or the message        | `T \\| nil`                  |
| `list[T]`, `tuple[T, ...]` | `repeated T`                        | `[T]`                        |
| `dict[str, T]`             | `map<string, T>`                    | `%{String.t() => T}`         |
| `tuple[A, B]`              | `TupleOfAAndB {A item_0; B item_1}` | `{A, B}`                     |
| Pydantic model             | `message` (nested, recursive)       | struct with `t()`            |
| `Enum` (str or int)        | `enum`, `X_UNSPECIFIED = 0` first   | atoms (`:red`)               |
| `Literal["a", "b"]`        | `enum`                              | atoms (`:a`)                 |
| `Literal[1, 2]`            | `enum`                              | integers                     |
| `A \\| B`                  | `AOrB {oneof value {...}}`          | `A \\| B`                    |
| `-> None`                  | empty response message              | `{:ok, nil}`                 |
| a default value            | `optional`: unset is the default    | option; `nil`: the default   |
| a custom type (`--config`) | its scalar (`string`, ...)          | the scalar, or converted     |

Every singular field has explicit presence (`optional`), so an argument left
out is "not given" (Python's default, or a "Field required" validation error),
never a silent 0. A list or dict inside a list or dict, a `list[T | None]`, and
a list or dict that is Optional or has a non-empty default, go in a wrapper
message (`ListOfInt64 {repeated int64 value = 1}`): protobuf has no repeated of
repeated and no presence for repeated fields. An unset list or dict is empty.
`Any`, `object`, bare `list`/`dict`/`tuple`, sets, `dict` with non-str keys,
callables, generic models, `Flag` enums, mixed Literals and unions whose members
look alike in Elixir (`str | bytes`, two lists, two enums) are refused at
generation time.

Constraints (`ge`, `gt`, `le`, `lt`, `multiple_of`, `min_length`, `max_length`,
`pattern`) are enforced by Pydantic in the worker and listed in the Elixir docs.
Functions may be `def` (run in a worker thread), `async def`, or async
generators (`-> AsyncIterator[T]`: a server stream, a lazy Stream in Elixir).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from synapse_python._bridge._generate import command_line, generate, stale, write
from synapse_python._bridge._ir import GenerationError
from synapse_python._bridge._python_gen import server_module_name

if TYPE_CHECKING:
    from synapse_python._bridge._server import BridgeService, StaleBridgeError

__all__ = [
    "BridgeService",
    "GenerationError",
    "StaleBridgeError",
    "command_line",
    "generate",
    "main",
    "server_module_name",
    "stale",
    "write",
]


def __getattr__(name: str) -> Any:
    # The server side (grpc, pydantic-ai's error types) loads only when asked for:
    # the generator starts faster without it.
    if name in ("BridgeService", "StaleBridgeError"):
        from synapse_python._bridge import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EXIT_OK = 0
EXIT_STALE = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "generate":  # pragma: no cover - argparse enforces it
        parser.error("unknown command")
    try:
        generated = generate(args.module, args.function or None, config=args.config)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:
        print("error: the bridge generator failed:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_ERROR
    if args.check:
        found = stale(args.out, generated.files)
        if not found:
            return EXIT_OK
        command = command_line(args.module, args.function, args.config)
        print(
            f"stale bridge files in {args.out} (regenerate with: {command} --out {args.out}):",
            file=sys.stderr,
        )
        for path, reason in found:
            print(f"  {path} ({reason})", file=sys.stderr)
        return EXIT_STALE
    for path in write(args.out, generated.files):
        print(path)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_python.bridge",
        description="Generate a .proto, its descriptor set, the IR and a Python gRPC server "
        "from typed Python functions (mix synapse.gen.bridge writes the Elixir client from them).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate_command = commands.add_parser(
        "generate",
        help="generate (or --check) the files of one module's bridge",
        description="Generate (or --check) the Python side of one module's bridge: the IR, "
        "the .proto, its descriptor set and the Python server. The Elixir client is written "
        "from them by mix synapse.gen.bridge.",
    )
    generate_command.add_argument(
        "--module",
        help="the Python module to bridge (imported from PYTHONPATH); or the config's module",
    )
    generate_command.add_argument(
        "--function",
        action="append",
        metavar="NAME",
        help="a function to export (repeatable; default: every public function the module defines)",
    )
    generate_command.add_argument(
        "--config", metavar="FILE", help="the bridge's configuration file (JSON)"
    )
    generate_command.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    generate_command.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if DIR's files are missing or differ from what would be "
        "generated",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
