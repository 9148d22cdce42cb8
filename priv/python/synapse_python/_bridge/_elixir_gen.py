"""IR → the generated Elixir client, `<module>.ex`.

One file holds the client module and, after it, one module per Pydantic model
(a struct) and per enum. Calls go through `SynapseCore.Bridge.call/5` and
`SynapseCore.Bridge.stream/5` with the FileDescriptorSet embedded in the
module; the values go as *wire maps* (string keys, see `SynapseCore.Bridge`),
converted by a small, generic codec at the end of the client module and driven
by type terms:

    :int64 | :double | :bool | :string | :bytes | :date | :timestamp
    {:list, t} | {:map, t} | {:tuple, [t]} | {:union, [{field, t}]}
    {:struct, module} | {:enum, module}
    {:wrap, t}                 # a wrapper message: %{"value" => ...}
    {:optional, t}             # only inside a wrapper: nil is a value there

Encoding never raises: a value of an unexpected shape is passed on unchanged,
so that the NIF (what protobuf cannot carry) or Pydantic (the rest) reports it.

The output is laid out as `mix format` would lay it out, for the usual line lengths.
"""

from __future__ import annotations

import base64
import json
import re
import textwrap
from typing import Any

from synapse_python._bridge._ir import (
    IR,
    EnumType,
    Field,
    Function,
    GenerationError,
    ModelType,
    TypeRef,
    element_wrapped,
    field_wrapper,
    member_wrapped,
    snake,
)

_UNQUOTED_ATOM = re.compile(r"[A-Za-z_][A-Za-z0-9_@]*[?!]?")
_ELIXIR_FUNCTION = re.compile(r"[a-z_][a-zA-Z0-9_]*")
_RESERVED_WORDS = {
    "do", "end", "fn", "nil", "true", "false", "when", "and", "or", "not", "in",
    "catch", "rescue", "after", "else",
}  # fmt: skip
# Names the generated client module uses itself (variables, and its own functions).
_CLIENT_VARIABLES = {"server", "opts", "args", "request"}
# Elixir modules the generated code refers to: a model or enum of one of these
# names is not aliased (it would shadow them), but named in full.
_NOT_ALIASED = {
    "Access", "Atom", "Base", "Date", "DateTime", "Enum", "Enumerable", "Integer", "Kernel",
    "Keyword", "List", "Map", "NaiveDateTime", "Stream", "String", "SynapseCore", "Tuple",
}  # fmt: skip
# Kernel functions and special forms the client may not define (it calls some of
# them unqualified, and the rest would shadow what users expect).
_FORBIDDEN_FUNCTIONS = {
    "alias", "case", "cond", "def", "defp", "defmodule", "for", "import", "quote",
    "receive", "require", "super", "try", "unquote", "with", "raise", "reraise",
    "is_list", "is_map", "is_struct", "is_integer", "is_float", "is_number", "is_binary",
    "is_boolean", "is_tuple", "is_atom", "is_nil", "tuple_size", "length", "div", "struct",
    "struct!", "to_string", "inspect", "not", "and", "or", "apply", "self", "send", "spawn",
}  # fmt: skip

_SCALAR_TERMS = {
    "int": ":int64",
    "float": ":double",
    "bool": ":bool",
    "str": ":string",
    "bytes": ":bytes",
    "date": ":date",
    "datetime": ":timestamp",
}
_IDENTITY = ("int", "float", "bool", "str", "bytes")
_LINE = 98


def render(ir: IR, descriptor_set: bytes, *, command: str) -> str:
    """The Elixir source of the client of `ir`."""
    return _Renderer(ir, descriptor_set, command).render()


class _Scope:
    """One Elixir module being written: which generated modules it refers to."""

    def __init__(self, renderer: _Renderer, own: str | None = None) -> None:
        self.renderer = renderer
        self.own = own
        self.used: set[str] = set()

    def ref(self, name: str) -> str:
        """How this module names the generated module of the type `name`."""
        if name == self.own:
            return "__MODULE__"
        if name in _NOT_ALIASED:
            return f"{self.renderer.ir.elixir_module}.{name}"
        self.used.add(name)
        return name

    def type_ref(self, name: str) -> str:
        return "t()" if name == self.own else f"{self.ref(name)}.t()"

    def aliases(self) -> list[str]:
        return [f"  alias {self.renderer.ir.elixir_module}.{name}" for name in sorted(self.used)]


class _Renderer:
    def __init__(self, ir: IR, descriptor_set: bytes, command: str) -> None:
        self.ir = ir
        self.descriptor_set = descriptor_set
        self.command = command
        self._check_names()

    # ---- the file ----

    def render(self) -> str:
        parts = [self._client()]
        for name in self.ir.names("model"):
            parts.append(self._model(name, self.ir.model(name)))
        for name in self.ir.names("enum"):
            parts.append(self._enum(name, self.ir.enum(name)))
        return "\n".join(parts)

    def _client(self) -> str:
        ir = self.ir
        scope = _Scope(self)
        functions = [self._function(function, scope) for function in ir.functions]
        lines = [f"defmodule {ir.elixir_module} do"]
        lines += _heredoc("@moduledoc", self._moduledoc(), indent=2)
        lines.append("")
        alias_at = len(lines)
        lines += [
            "  @descriptor Base.decode64!(",
            '                """',
            *(
                "                " + chunk
                for chunk in _chunks(base64.b64encode(self.descriptor_set).decode(), 76)
            ),
            '                """,',
            "                ignore: :whitespace",
            "              )",
            "",
            f'  @service "{ir.full_service}"',
            "",
            "  @doc false",
            "  def __bridge__ do",
            "    %{",
            f'      module: "{ir.module}",',
            "      service: @service,",
            "      descriptor: @descriptor",
            "    }",
            "  end",
        ]
        for function in functions:
            lines.append("")
            lines += function
        tuples, unions = ir.names("tuple"), ir.names("union")
        lines.append("")
        lines += _codec(tuples=bool(tuples), unions=bool(unions))
        for function_name, names, items in (
            ("tuple_items", tuples, _tuple_items),
            ("union_members", unions, _union_members),
        ):
            for name in names:
                lines += [
                    "",
                    f"  defp {function_name}(:{snake(name)}) do",
                    "    [",
                    *_comma_lines(items(name, scope), "      "),
                    "    ]",
                    "  end",
                ]
        if scope.used:
            lines[alias_at:alias_at] = [*scope.aliases(), ""]
        lines.append("end")
        return "\n".join(lines) + "\n"

    def _moduledoc(self) -> str:
        ir = self.ir
        intro = f"{ir.doc}\n\n" if ir.doc else ""
        functions = "\n".join(
            _wrap_bullet(
                f"  * `{f.name}/{2 + sum(p.required for p in f.params)}`"
                + (f" - {_first_line(f.doc)}" if f.doc else "")
            )
            for f in ir.functions
        )
        return (
            intro
            + _fill(
                f"A typed client of the Python module `{ir.module}`, served by a"
                " `SynapseCore.Bridge`:"
            )
            + "\n\n"
            f"    children = [{{SynapseCore.Bridge, module: {_string(ir.module)},"
            " name: :my_bridge}]\n\n"
            "Each function takes the bridge's name first and returns `{:ok, value}` or\n"
            "`{:error, %SynapseCore.Error{}}` (the `!` variants return the value or raise);\n"
            "a streaming function returns a lazy `Stream`. Parameters with a Python default\n"
            "are options; an option left out (or `nil`) takes the Python default.\n\n"
            f"{functions}\n\n"
            + "Generated by the Synapse Bridge from the Python module; do not edit, regenerate"
            f" with:\n\n    {self.command}"
        )

    # ---- functions ----

    def _function(self, function: Function, scope: _Scope) -> list[str]:
        required = [p for p in function.params if p.required]
        optional = [p for p in function.params if not p.required]
        variables = {p.name: _variable(p.name) for p in required}
        args = ["server", *(variables[p.name] for p in required)]
        in_types = ["term()", *(_ex_type(p.type, scope, True) for p in required), "keyword()"]
        stream = function.kind == "stream"
        result_type = _ex_type(function.returns, scope, False)
        lines = _heredoc("@doc", self._function_doc(function, scope), indent=2)
        returns = (
            "Enumerable.t()"
            if stream
            else f"{{:ok, {result_type}}} | {{:error, SynapseCore.Error.t()}}"
        )
        lines += _spec(function.name, in_types, returns)
        lines.append(f"  def {function.name}({', '.join(args)}, opts \\\\ []) do")
        if optional:
            keys = ", ".join(_atom(p.name) for p in optional)
            lines.append(f"    {{args, opts}} = Keyword.split(opts, [{keys}])")
            lines.append("")
        entries = [
            (p.name, self._encode(p, variables.get(p.name) or f"args[{_atom(p.name)}]", scope))
            for p in function.params
        ]
        if entries:
            lines.append("    request = %{")
            for i, (name, value) in enumerate(entries):
                comma = "," if i < len(entries) - 1 else ""
                entry = f"      {_string(name)} => {value}{comma}"
                if len(entry) <= _LINE:
                    lines.append(entry)
                elif len(f"        {value}{comma}") <= _LINE or not value.startswith(
                    "__to_wire__("
                ):
                    lines += [f"      {_string(name)} =>", f"        {value}{comma}"]
                else:
                    term, _, expression = value.removeprefix("__to_wire__(").rpartition(", ")
                    lines += [
                        f"      {_string(name)} =>",
                        "        __to_wire__(",
                        f"          {term},",
                        f"          {expression.removesuffix(')')}",
                        f"        ){comma}",
                    ]
            lines.append("    }")
        else:
            lines.append("    request = %{}")
        lines.append("")
        method = f'@service <> "/{function.rpc}"'
        returned = _term(function.returns, scope) if function.returns.kind != "none" else ":none"
        lines.append("    server")
        if stream:
            lines += _pipe_call(
                "SynapseCore.Bridge.stream", ["@descriptor", method, "request", "opts"]
            )
            lines.append(f'    |> Stream.map(&__from_wire__({returned}, &1["value"]))')
        else:
            lines += _pipe_call(
                "SynapseCore.Bridge.call", ["@descriptor", method, "request", "opts"]
            )
            lines.append(f"    |> __result__({returned})")
        lines.append("  end")
        if not stream:
            arity = len(args) + 1
            lines += [
                "",
                *_heredoc(
                    "@doc",
                    f"Like `{function.name}/{arity}`, but returns the value or raises"
                    " `SynapseCore.Error`.",
                    indent=2,
                ),
                *_spec(function.name + "!", in_types, result_type),
                f"  def {function.name}!({', '.join(args)}, opts \\\\ []) do",
                f"    case {function.name}({', '.join(args)}, opts) do",
                "      {:ok, value} -> value",
                "      {:error, error} -> raise error",
                "    end",
                "  end",
            ]
        return lines

    def _encode(self, param: Field, expression: str, scope: _Scope) -> str:
        t = param.type.inner if param.type.kind == "optional" else param.type
        if t.kind in _IDENTITY:
            return expression
        return f"__to_wire__({_field_term(param.type, param.presence, scope)}, {expression})"

    def _function_doc(self, function: Function, scope: _Scope) -> str:
        required = [p for p in function.params if p.required]
        optional = [p for p in function.params if not p.required]
        parts = [function.doc or f"Calls `{self.ir.module}.{function.name}`."]
        if required:
            parts.append(
                "## Parameters\n\n"
                + "\n".join(self._param_doc(p, f"`{p.name}`", scope) for p in required)
            )
        options = [self._param_doc(p, f"`{_atom(p.name)}`", scope) for p in optional]
        call = "stream" if function.kind == "stream" else "call"
        options.append(
            f"  * `:timeout` - the call's timeout, see `SynapseCore.Bridge.{call}/5` (which\n"
            "    gets the other options too)."
        )
        parts.append("## Options\n\n" + "\n".join(options))
        python = f"`{self.ir.module}.{function.name}`"
        if function.kind == "stream":
            parts.append(
                _fill(
                    f"Returns a lazy stream of `{_ex_type(function.returns, _Scope(self), False)}`:"
                    f" what the async generator {python} yields, as it yields it. Enumerating"
                    " it raises `SynapseCore.Error` if the call fails; halting it cancels the"
                    " call."
                )
            )
        else:
            how = {
                "sync": "a function run in a worker thread",
                "async": "an `async def` function",
            }[function.kind]
            parts.append(_fill(f"Calls {python}, {how}."))
        return "\n\n".join(parts)

    def _param_doc(self, f: Field, name: str, scope: _Scope) -> str:
        text = f"  * {name} (`{_ex_type(f.type, _Scope(self), True)}`)"
        facts = _facts(f, self.ir)
        if facts:
            text += " - " + facts
        return _wrap_bullet(text)

    # ---- models and enums ----

    def _model(self, name: str, model: ModelType) -> str:
        scope = _Scope(self, own=name)
        fields = []
        for f in model.fields:
            type_text = _ex_type(f.type, scope, False)
            if not f.required and f.type.kind != "optional":
                type_text += " | nil"
            fields.append((f, type_text, _field_term(f.type, f.presence, scope)))
        client = self.ir.elixir_module
        lines = [f"defmodule {client}.{name} do"]
        lines += _heredoc("@moduledoc", self._model_doc(name, model), indent=2)
        lines.append("")
        if scope.used:
            lines += scope.aliases()
            lines.append("")
        if fields:
            lines.append("  defstruct [")
            lines += [
                f"    {_atom(f.name)}" + ("," if i < len(fields) - 1 else "")
                for i, (f, _, _) in enumerate(fields)
            ]
            lines.append("  ]")
            lines.append("")
            lines.append("  @type t :: %__MODULE__{")
            lines += [
                f"          {_key(f.name)} {type_text}" + ("," if i < len(fields) - 1 else "")
                for i, (f, type_text, _) in enumerate(fields)
            ]
            lines.append("        }")
        else:
            lines.append("  defstruct []")
            lines.append("")
            lines.append("  @type t :: %__MODULE__{}")
        lines += [
            "",
            "  @doc false",
            f"  def __to_wire__(value), do: {client}.__to_wire__({{:struct, __MODULE__}}, value)",
            "",
            "  @doc false",
            f"  def __from_wire__(wire), do: {client}.__from_wire__({{:struct, __MODULE__}}, wire)",
            "",
            "  @doc false",
            "  def __fields__ do",
        ]
        if fields:
            lines.append("    [")
            lines += [
                f"      {_key(f.name)} {term}" + ("," if i < len(fields) - 1 else "")
                for i, (f, _, term) in enumerate(fields)
            ]
            lines.append("    ]")
        else:
            lines.append("    []")
        lines += ["  end", "end"]
        return "\n".join(_fit(line) for line in lines) + "\n"

    def _model_doc(self, name: str, model: ModelType) -> str:
        scope = _Scope(self)
        intro = model.doc or f"The Pydantic model `{model.python.replace(':', '.')}`."
        if not model.fields:
            return intro
        bullets = []
        for f in model.fields:
            text = f"  * `{_atom(f.name)}` (`{_ex_type(f.type, scope, False)}`)"
            facts = _facts(f, self.ir)
            if facts:
                text += " - " + facts
            bullets.append(_wrap_bullet(text))
        return (
            f"{intro}\n\n## Fields\n\n"
            + "\n".join(bullets)
            + "\n\nA field left `nil` takes its Python default, if it has one. Functions"
            " accept\nthis struct or a map with the same (atom) keys."
        )

    def _enum(self, name: str, enum_type: EnumType) -> str:
        values = [value.elixir for value in enum_type.values]
        rendered = [_atom(v) if isinstance(v, str) else str(v) for v in values]
        if enum_type.python:
            source = f"the Python Enum `{enum_type.python.replace(':', '.')}`"
        else:
            source = "a Python `Literal`"
        doc = (enum_type.doc + "\n\n" if enum_type.doc else "") + _fill(
            f"Values of {source}: " + ", ".join(f"`{v}`" for v in rendered) + "."
        )
        module = f"{self.ir.elixir_module}.{name}"
        lines = [f"defmodule {module} do"]
        lines += _heredoc("@moduledoc", doc, indent=2)
        lines.append("")
        type_line = "  @type t :: " + " | ".join(rendered)
        if len(type_line) <= _LINE:
            lines.append(type_line)
        else:
            lines.append("  @type t ::")
            lines += [
                ("          " if i == 0 else "          | ") + v for i, v in enumerate(rendered)
            ]
        lines += ["", "  @doc false", "  def __values__ do", "    ["]
        pairs = [
            (f"{_key(v)} " if isinstance(v, str) else f"{{{v}, ")
            + _string(value.name)
            + ("" if isinstance(v, str) else "}")
            for v, value in zip(values, enum_type.values, strict=True)
        ]
        lines += [
            f"      {pair}" + ("," if i < len(pairs) - 1 else "") for i, pair in enumerate(pairs)
        ]
        lines += ["    ]", "  end", "end"]
        return "\n".join(lines) + "\n"

    # ---- checks ----

    def _check_names(self) -> None:
        for function in self.ir.functions:
            if not _ELIXIR_FUNCTION.fullmatch(function.name) or function.name.startswith("__"):
                raise GenerationError(
                    f"{self.ir.module}.{function.name}: not a valid name for an Elixir function"
                )
            if function.name in _FORBIDDEN_FUNCTIONS or function.name in _RESERVED_WORDS:
                raise GenerationError(
                    f"{self.ir.module}.{function.name}: the Elixir client cannot define a"
                    f" function named {function.name}; rename it"
                )


# ---- types ----


def _ex_type(t: TypeRef, scope: _Scope, given: bool) -> str:
    """The typespec of `t`: as the client accepts it (`given`) or returns it."""
    kind = t.kind
    if kind == "int":
        return "integer()"
    if kind == "float":
        return "number()" if given else "float()"
    if kind == "bool":
        return "boolean()"
    if kind == "str":
        return "String.t()"
    if kind == "bytes":
        return "binary()"
    if kind == "date":
        return "Date.t()"
    if kind == "datetime":
        return "DateTime.t() | NaiveDateTime.t()" if given else "DateTime.t()"
    if kind == "none":
        return "nil"
    if kind == "optional":
        return f"{_ex_type(t.inner, scope, given)} | nil"
    if kind == "list":
        return f"[{_ex_type(t.inner, scope, given)}]"
    if kind == "dict":
        return f"%{{optional(String.t()) => {_ex_type(t.inner, scope, given)}}}"
    ir = scope.renderer.ir
    assert t.name is not None
    if kind == "tuple":
        return (
            "{" + ", ".join(_ex_type(item, scope, given) for item in ir.tuple(t.name).items) + "}"
        )
    if kind == "union":
        return " | ".join(_ex_type(m.type, scope, given) for m in ir.union(t.name).members)
    if kind == "model":
        return scope.type_ref(t.name) + (" | map()" if given else "")
    if kind == "enum":
        return scope.type_ref(t.name)
    raise AssertionError(t)


def _field_term(t: TypeRef, presence: bool, scope: _Scope) -> str:
    """The codec's type term of a field (or parameter, or result) holding `t`."""
    wrapped = field_wrapper(t, presence)
    if wrapped is not None:
        return f"{{:wrap, {_field_term(wrapped, False, scope)}}}"
    if t.kind == "optional":
        t = t.inner
    if t.kind == "list":
        return f"{{:list, {_element_term(t.inner, scope)}}}"
    if t.kind == "dict":
        return f"{{:map, {_element_term(t.inner, scope)}}}"
    return _term(t, scope)


def _element_term(t: TypeRef, scope: _Scope) -> str:
    if t.kind == "optional":
        return f"{{:wrap, {{:optional, {_field_term(t, False, scope)}}}}}"
    if element_wrapped(t):
        return f"{{:wrap, {_field_term(t, False, scope)}}}"
    return _field_term(t, False, scope)


def _term(t: TypeRef, scope: _Scope) -> str:
    """The type term of a value of `t` (not a field: no wrapper for presence)."""
    if t.kind in _SCALAR_TERMS:
        return _SCALAR_TERMS[t.kind]
    if t.kind in ("optional", "list", "dict"):
        return _field_term(t, False, scope)
    assert t.name is not None
    if t.kind == "model":
        return f"{{:struct, {scope.ref(t.name)}}}"
    if t.kind == "enum":
        return f"{{:enum, {scope.ref(t.name)}}}"
    if t.kind in ("tuple", "union"):
        return f"{{:{t.kind}, :{snake(t.name)}}}"
    raise AssertionError(t)


def _tuple_items(name: str, scope: _Scope) -> list[str]:
    return [_field_term(item, False, scope) for item in scope.renderer.ir.tuple(name).items]


def _union_members(name: str, scope: _Scope) -> list[str]:
    return [
        f"{{{_string(m.field)}, "
        + (
            f"{{:wrap, {_field_term(m.type, False, scope)}}}"
            if member_wrapped(m.type)
            else _field_term(m.type, False, scope)
        )
        + "}"
        for m in scope.renderer.ir.union(name).members
    ]


# ---- docs ----


def _facts(f: Field, ir: IR) -> str:
    """A field's description, default and constraints, as one sentence or a few."""
    parts = []
    if f.description:
        parts.append(f.description.strip().rstrip(".") + ".")
    if f.required and f.type.kind == "optional":
        parts.append("May be `nil`.")
    if f.has_default_value:
        parts.append(f"Defaults to `{_literal(f.default, f.type, ir)}`.")
    elif f.default_factory:
        parts.append(f"Defaults to the result of `{f.default_factory.replace(':', '.')}()`.")
    constraints = [_constraint(key, value) for key, value in f.constraints.items()]
    if constraints:
        parts.append("Constraints: " + ", ".join(constraints) + ".")
    if f.type.kind == "datetime" or (f.type.of is not None and f.type.of.kind == "datetime"):
        parts.append("A `NaiveDateTime` is taken as UTC.")
    return " ".join(parts)


def _constraint(key: str, value: Any) -> str:
    rendered = json.dumps(value, ensure_ascii=False)
    return {
        "gt": f"`> {rendered}`",
        "ge": f"`>= {rendered}`",
        "lt": f"`< {rendered}`",
        "le": f"`<= {rendered}`",
        "multiple_of": f"a multiple of `{rendered}`",
        "min_length": f"length `>= {rendered}`",
        "max_length": f"length `<= {rendered}`",
        "pattern": f"matches `~r/{value}/`",
    }.get(key, f"{key} `{rendered}`")


def _literal(value: Any, t: TypeRef, ir: IR) -> str:
    """A default value (JSON) written as Elixir."""
    if value is None:
        return "nil"
    kind = t.kind
    if kind == "optional":
        return _literal(value, t.inner, ir)
    if kind == "enum" and t.name:
        for enum_value in ir.enum(t.name).values:
            if enum_value.python == value and type(enum_value.python) is type(value):
                v = enum_value.elixir
                return _atom(v) if isinstance(v, str) else str(v)
    if kind == "list" and isinstance(value, list):
        return "[" + ", ".join(_literal(v, t.inner, ir) for v in value) + "]"
    if kind == "dict" and isinstance(value, dict):
        return (
            "%{"
            + ", ".join(f"{_string(k)} => {_literal(v, t.inner, ir)}" for k, v in value.items())
            + "}"
        )
    if kind == "tuple" and t.name and isinstance(value, list):
        items = ir.tuple(t.name).items
        if len(items) == len(value):
            return (
                "{" + ", ".join(_literal(v, i, ir) for v, i in zip(value, items, strict=True)) + "}"
            )
    if kind == "model" and t.name and isinstance(value, dict):
        fields = {f.name: f.type for f in ir.model(t.name).fields}
        return (
            "%{"
            + ", ".join(
                f"{_key(k)} {_literal(v, fields.get(k, TypeRef('str')), ir)}"
                for k, v in value.items()
            )
            + "}"
        )
    if kind == "date" and isinstance(value, str):
        return f"~D[{value}]"
    if kind == "datetime" and isinstance(value, str):
        return f"~U[{value.replace('T', ' ').removesuffix('+00:00').removesuffix('Z')}Z]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    return json.dumps(value, ensure_ascii=False)


def _float(value: float) -> str:
    text = repr(value)
    if "e" in text:
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{int(exponent)}"
    return text


# ---- Elixir syntax ----


def _atom(name: str) -> str:
    return f":{name}" if _UNQUOTED_ATOM.fullmatch(name) else f":{_string(name)}"


def _key(name: str) -> str:
    """`name:` as a keyword key."""
    return f"{name}:" if _UNQUOTED_ATOM.fullmatch(name) else f"{_string(name)}:"


def _string(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("#{", "\\#{").replace("\n", "\\n")
    )
    escaped = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02X}", escaped)
    return f'"{escaped}"'


def _variable(name: str) -> str:
    """A Python parameter name as an Elixir variable."""
    if name[0].isupper() or name.startswith("_"):
        return "arg_" + name.lstrip("_").lower()
    if name in _RESERVED_WORDS or name in _CLIENT_VARIABLES:
        return name + "_"
    return name


def _heredoc(attribute: str, text: str, *, indent: int) -> list[str]:
    pad = " " * indent
    body = text.replace("\\", "\\\\").replace("#{", "\\#{").replace('"""', '\\"""')
    lines = [f'{pad}{attribute} """']
    lines += [(pad + line).rstrip() if line.strip() else "" for line in body.splitlines()]
    lines.append(f'{pad}"""')
    return lines


def _spec(name: str, args: list[str], returns: str) -> list[str]:
    head = f"  @spec {name}({', '.join(args)}) ::"
    one_line = f"{head} {returns}"
    if len(one_line) <= _LINE:
        return [one_line]
    if len(head) <= _LINE:
        if len(f"          {returns}") <= _LINE:
            return [head, f"          {returns}"]
        alternatives = _split_union(returns)
        return [
            head,
            f"          {alternatives[0]}",
            *(f"          | {a}" for a in alternatives[1:]),
        ]
    lines = [
        f"  @spec {name}(",
        *(f"          {arg}" + ("," if i < len(args) - 1 else "") for i, arg in enumerate(args)),
    ]
    if len(f"        ) :: {returns}") <= _LINE:
        return [*lines, f"        ) :: {returns}"]
    alternatives = _split_union(returns)
    return [
        *lines,
        "        ) ::",
        f"          {alternatives[0]}",
        *(f"          | {a}" for a in alternatives[1:]),
    ]


def _split_union(type_text: str) -> list[str]:
    """`a | {b | c} | d` → `["a", "{b | c}", "d"]`: the top-level alternatives."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(type_text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and type_text.startswith(" | ", index):
            parts.append(type_text[start:index])
            start = index + 3
    parts.append(type_text[start:])
    return parts


def _comma_lines(items: list[str], pad: str) -> list[str]:
    return [f"{pad}{item}" + ("," if i < len(items) - 1 else "") for i, item in enumerate(items)]


def _pipe_call(function: str, args: list[str]) -> list[str]:
    line = f"    |> {function}({', '.join(args)})"
    if len(line) <= _LINE:
        return [line]
    return [
        f"    |> {function}(",
        *(f"      {arg}" + ("," if i < len(args) - 1 else "") for i, arg in enumerate(args)),
        "    )",
    ]


def _fit(line: str) -> str:
    """A `def x(...), do: ...` line too long for one line, split as the formatter does."""
    if len(line) <= _LINE or ", do: " not in line:
        return line
    head, _, body = line.partition(", do: ")
    indent = len(head) - len(head.lstrip())
    return f"{head},\n{' ' * (indent + 2)}do: {body}"


def _wrap_bullet(text: str, width: int = _LINE - 4) -> str:
    """A `  * ...` bullet wrapped at `width`, continuation lines indented under it."""
    prefix, _, rest = text.partition("* ")
    lines: list[str] = []
    current = prefix + "*"
    for word in rest.split(" "):
        if len(current) + 1 + len(word) > width and current.strip() != "*":
            lines.append(current)
            current = prefix + "  " + word
        else:
            current = f"{current} {word}"
    lines.append(current)
    return "\n".join(lines)


def _fill(text: str) -> str:
    """A paragraph of ours wrapped to fit the formatter's width in a doc heredoc."""
    return textwrap.fill(text, width=_LINE - 4, break_long_words=False, break_on_hyphens=False)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0]


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _codec(*, tuples: bool, unions: bool) -> list[str]:
    """The codec's source, with the tuple and union clauses only when the module has some."""
    sections = {
        "@@TUPLE_TO@@": _TUPLE_TO if tuples else "",
        "@@UNION_TO@@": _UNION_TO if unions else "",
        "@@TUPLE_FROM@@": _TUPLE_FROM if tuples else "",
        "@@UNION_FROM@@": _UNION_FROM if unions else "",
        "@@MEMBERS@@": _MEMBERS if unions else "",
        "@@TUPLE_SHAPE@@": _TUPLE_SHAPE if tuples else "",
    }
    text = _CODEC
    for placeholder, section in sections.items():
        text = text.replace(placeholder + "\n", section)
    return text.splitlines()


_CODEC = r"""  # The codec between Elixir values and wire maps, driven by type terms.

  @doc false
  def __result__({:ok, response}, type), do: {:ok, __from_wire__(type, response["value"])}
  def __result__({:error, _error} = error, _type), do: error

  @doc false
  def __to_wire__({:wrap, {:optional, _type} = type}, value),
    do: %{"value" => __to_wire__(type, value)}

  def __to_wire__(_type, nil), do: nil
  def __to_wire__({:optional, type}, value), do: __to_wire__(type, value)
  def __to_wire__({:wrap, type}, value), do: %{"value" => __to_wire__(type, value)}

  def __to_wire__({:list, type}, values) when is_list(values),
    do: Enum.map(values, &__to_wire__(type, &1))

  def __to_wire__({:map, type}, values) when is_map(values) and not is_struct(values),
    do: Map.new(values, fn {key, value} -> {wire_key(key), __to_wire__(type, value)} end)

  def __to_wire__({:struct, module}, %{} = value) do
    Map.new(module.__fields__(), fn {key, type} ->
      {Atom.to_string(key), __to_wire__(type, Map.get(value, key))}
    end)
  end

  def __to_wire__({:enum, module}, value) do
    case List.keyfind(module.__values__(), value, 0) do
      {_value, name} -> name
      nil -> value
    end
  end

@@TUPLE_TO@@
@@UNION_TO@@
  def __to_wire__(:date, %Date{} = date), do: Date.to_iso8601(date)

  def __to_wire__(:timestamp, %DateTime{} = datetime) do
    microseconds = DateTime.to_unix(datetime, :microsecond)

    %{
      "seconds" => Integer.floor_div(microseconds, 1_000_000),
      "nanos" => Integer.mod(microseconds, 1_000_000) * 1000
    }
  end

  def __to_wire__(:timestamp, %NaiveDateTime{} = naive),
    do: __to_wire__(:timestamp, DateTime.from_naive!(naive, "Etc/UTC"))

  def __to_wire__(_type, value), do: value

  @doc false
  def __from_wire__(_type, nil), do: nil
  def __from_wire__({:optional, type}, value), do: __from_wire__(type, value)
  def __from_wire__({:wrap, type}, %{"value" => value}), do: __from_wire__(type, value)

  def __from_wire__({:list, type}, values) when is_list(values),
    do: Enum.map(values, &__from_wire__(type, &1))

  def __from_wire__({:map, type}, values) when is_map(values),
    do: Map.new(values, fn {key, value} -> {key, __from_wire__(type, value)} end)

  def __from_wire__({:struct, module}, %{} = wire) do
    fields =
      Enum.map(module.__fields__(), fn {key, type} ->
        {key, __from_wire__(type, Map.get(wire, Atom.to_string(key)))}
      end)

    struct!(module, fields)
  end

  def __from_wire__({:enum, module}, name) do
    case List.keyfind(module.__values__(), name, 1) do
      {value, _name} -> value
      nil -> nil
    end
  end

@@TUPLE_FROM@@
@@UNION_FROM@@
  def __from_wire__(:date, value) when is_binary(value), do: Date.from_iso8601!(value)

  def __from_wire__(:timestamp, %{"seconds" => seconds, "nanos" => 0}),
    do: DateTime.from_unix!(seconds)

  def __from_wire__(:timestamp, %{"seconds" => seconds, "nanos" => nanos}),
    do: DateTime.from_unix!(seconds * 1_000_000 + div(nanos, 1000), :microsecond)

  def __from_wire__(_type, value), do: value

@@MEMBERS@@
  defp wire_key(key) when is_atom(key) and not is_nil(key), do: Atom.to_string(key)
  defp wire_key(key), do: key"""

_TUPLE_TO = r"""  def __to_wire__({:tuple, name}, value) when is_tuple(value) do
    types = tuple_items(name)

    if tuple_size(value) == length(types) do
      value
      |> Tuple.to_list()
      |> Enum.zip(types)
      |> Enum.with_index()
      |> Map.new(fn {{item, type}, index} -> {"item_#{index}", __to_wire__(type, item)} end)
    else
      value
    end
  end

"""

_UNION_TO = r"""  def __to_wire__({:union, name}, value) do
    members = union_members(name)

    member =
      Enum.find(members, &member?(&1, value, :exact)) ||
        Enum.find(members, &member?(&1, value, :loose))

    case member do
      {field, type} -> %{field => __to_wire__(type, value)}
      nil -> value
    end
  end

"""

_TUPLE_FROM = r"""  def __from_wire__({:tuple, name}, %{} = wire) do
    name
    |> tuple_items()
    |> Enum.with_index()
    |> Enum.map(fn {type, index} -> __from_wire__(type, Map.get(wire, "item_#{index}")) end)
    |> List.to_tuple()
  end

"""

_UNION_FROM = r"""  def __from_wire__({:union, name}, %{} = wire) do
    members = union_members(name)

    case Enum.find(members, fn {field, _type} -> Map.get(wire, field) != nil end) do
      {field, type} -> __from_wire__(type, Map.fetch!(wire, field))
      nil -> nil
    end
  end

"""

_MEMBERS = r"""  defp member?({_field, type}, value, mode), do: shape?(type, value, mode)

  defp shape?(:int64, value, _mode), do: is_integer(value)
  defp shape?(:double, value, :exact), do: is_float(value)
  defp shape?(:double, value, :loose), do: is_number(value)
  defp shape?(:bool, value, _mode), do: is_boolean(value)
  defp shape?(:string, value, _mode), do: is_binary(value)
  defp shape?(:bytes, value, _mode), do: is_binary(value)
  defp shape?(:date, value, _mode), do: is_struct(value, Date)

  defp shape?(:timestamp, value, _mode),
    do: is_struct(value, DateTime) or is_struct(value, NaiveDateTime)

  defp shape?({:enum, module}, value, _mode), do: List.keymember?(module.__values__(), value, 0)
  defp shape?({:struct, module}, value, :exact), do: is_struct(value, module)
  defp shape?({:struct, _module}, value, :loose), do: is_map(value) and not is_struct(value)

@@TUPLE_SHAPE@@
  defp shape?({:wrap, {:list, _type}}, value, _mode), do: is_list(value)
  defp shape?({:wrap, {:map, _type}}, value, _mode), do: is_map(value) and not is_struct(value)
  defp shape?(_type, _value, _mode), do: false

"""

_TUPLE_SHAPE = r"""  defp shape?({:tuple, name}, value, _mode),
    do: is_tuple(value) and tuple_size(value) == length(tuple_items(name))

"""
