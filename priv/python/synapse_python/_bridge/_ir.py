"""The Bridge's intermediate representation (IR), its JSON form and its wire layout.

Introspection (`_introspect`) turns a Python module into an `IR`; the Python
generators (`.proto`, Python server) and the server's runtime codec read only the
IR. `generate` writes it as `<module>.ir.json` (sorted keys, indent 2), and
`mix synapse.gen.bridge` renders the Elixir client from that file: the IR holds
no Elixir names (the Elixir side decides them).

JSON form (version 2)
---------------------

    {
      "version": 2,
      "module": "my_module",                      # the Python module
      "doc": "Module docstring." | null,
      "package": "synapse.bridge.my_module",      # the proto package
      "service": "MyModule",                      # the gRPC service (in that package)
      "functions": [Function, ...],               # in the module's definition order
      "types": {"Name": TypeDef, ...}             # every named message and enum
    }

    Function = {
      "name": "process_data",                     # Python name (and the Elixir function's)
      "rpc": "ProcessData",                       # gRPC method
      "request": "ProcessDataRequest",            # its messages
      "response": "ProcessDataResponse",
      "kind": "sync" | "async" | "stream",        # def / async def / async generator
      "on_loop": true,                            # only when set (the bridge config): a sync
                                                  # function called on the event loop
      "doc": "Docstring." | null,
      "params": [Field, ...],                     # in order; the request's fields
      "returns": Type                             # a stream's item type; {"kind": "none"}: -> None
    }

    Field = {                                     # a parameter or a model field
      "name": "age",
      "type": Type,
      "required": true | false,                   # false: it has a default
      "default": <JSON value>,                    # absent when required or computed by a factory
      "default_factory": "module:qualname",       # only for factories other than list/dict/tuple
      "description": "..." | null,                # Field(description=...)
      "constraints": {"ge": 0, "le": 150, "min_length": 1, "max_length": 50,
                      "gt": .., "lt": .., "multiple_of": .., "pattern": "^[a-z]+$"}
    }

    Type =                                        # a reference to a type, by structure
      {"kind": "int" | "float" | "bool" | "str" | "bytes" | "datetime" | "date" | "none"}
      | {"kind": "optional" | "list" | "dict", "of": Type}   # T | None, list[T] / tuple[T, ...],
                                                              # dict[str, T]
      | {"kind": "model" | "enum" | "tuple" | "union" | "custom", "name": "Name"}   # see "types"

    TypeDef =
      {"kind": "model", "python": "my_module:InputData", "doc": .., "fields": [Field, ...]}
      | {"kind": "enum", "python": "my_module:Color" | null (a Literal), "doc": ..,
         "values": [{"name": "COLOR_RED", "number": 1, "member": "RED" | null,
                     "python": "red"}, ...]}
      | {"kind": "tuple", "items": [Type, ...]}                  # fields item_0, item_1, ...
      | {"kind": "union", "members": [{"field": "int64_value", "type": Type}, ...]}
      | {"kind": "wrapper", "of": Type}                          # a message whose `value` is `of`
      | {"kind": "custom", "python": "decimal:Decimal",         # a custom type (the bridge's
         "of": {"kind": "str"}}                                  # config): the scalar it travels as

Names: models, enums and custom types keep their class names; a Literal is an enum named after
where it is used (`InputDataMode` for the field `mode` of `InputData`,
`ProcessDataMode` for a parameter, `ProcessDataResult` for a return type); a
fixed tuple is `TupleOf<A>And<B>...`, a union `<A>Or<B>...`, a wrapper the label
of what it wraps (`ListOfInt64`, `MapOfString`, `OptionalInt64`), where the
labels of int, float, bool, str, bytes, datetime and date are Int64, Double,
Bool, String, Bytes, Timestamp and Date. Two different types with one name are a
generation error.

Wire layout
-----------

Every singular field has explicit presence (`optional` scalars and enums;
messages have it built in), so an unset field is "not given": Python then uses
the parameter's or field's default, None for `T | None` without a default, and
reports a missing required value as a validation error ("Field required"),
never as a silent 0 or "". proto3 has no presence for repeated and map fields,
and no repeated of repeated, so these take a wrapper message:

- a list or dict that is `| None`, or has a default other than empty: the field
  is the wrapper (`ListOfInt64 tags = 3;`), unset meaning None / the default;
  otherwise an unset list or dict is empty;
- a list element, dict value or union member that is itself a list or dict, or
  an Optional list element or dict value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

IR_VERSION = 2

SCALARS = ("int", "float", "bool", "str", "bytes", "datetime", "date")
NAMED = ("model", "enum", "tuple", "union", "custom")
CONTAINERS = ("list", "dict")

FunctionKind = Literal["sync", "async", "stream"]

_LABELS = {
    "int": "Int64",
    "float": "Double",
    "bool": "Bool",
    "str": "String",
    "bytes": "Bytes",
    "datetime": "Timestamp",
    "date": "Date",
}

CONSTRAINT_KEYS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern")


class GenerationError(Exception):
    """The module cannot be bridged: an unsupported type, a name clash, a bad option.

    The message names the function, parameter (or model field) and type concerned.
    """


class _NoDefault:
    """The marker of a field without a (JSON-known) default."""

    _instance: _NoDefault | None = None

    def __new__(cls) -> _NoDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A type by structure: a scalar, a container of a type, or a named type."""

    kind: str
    of: TypeRef | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind in (*CONTAINERS, "optional"):
            assert self.of is not None, self
        elif self.kind in NAMED:
            assert self.name is not None, self
        else:
            assert self.kind in (*SCALARS, "none"), self

    @property
    def inner(self) -> TypeRef:
        """What a container or an optional holds."""
        assert self.of is not None, self
        return self.of

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.of is not None:
            data["of"] = self.of.to_json()
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TypeRef:
        of = data.get("of")
        return cls(data["kind"], cls.from_json(of) if of is not None else None, data.get("name"))

    def __str__(self) -> str:
        if self.kind == "optional":
            return f"{self.inner} | None"
        if self.kind == "list":
            return f"list[{self.inner}]"
        if self.kind == "dict":
            return f"dict[str, {self.inner}]"
        return self.name or self.kind


@dataclass(frozen=True, slots=True)
class Field:
    """A function parameter or a model field."""

    name: str
    type: TypeRef
    required: bool
    default: Any = NO_DEFAULT
    default_factory: str | None = None
    description: str | None = None
    constraints: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_default_value(self) -> bool:
        return self.default is not NO_DEFAULT

    @property
    def presence(self) -> bool:
        """Whether an unset list/dict must mean "the default" rather than "empty"."""
        return not self.required and not (self.default_factory is None and self.default in ([], {}))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type.to_json(),
            "required": self.required,
            "description": self.description,
            "constraints": dict(self.constraints),
        }
        if self.default is not NO_DEFAULT:
            data["default"] = self.default
        if self.default_factory is not None:
            data["default_factory"] = self.default_factory
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Field:
        return cls(
            name=data["name"],
            type=TypeRef.from_json(data["type"]),
            required=data["required"],
            default=data.get("default", NO_DEFAULT),
            default_factory=data.get("default_factory"),
            description=data.get("description"),
            constraints=dict(data.get("constraints", {})),
        )


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    rpc: str
    kind: FunctionKind
    doc: str | None
    params: tuple[Field, ...]
    returns: TypeRef
    # A sync function the config marks to be called on the event loop, not in a thread.
    on_loop: bool = False

    @property
    def request(self) -> str:
        return f"{self.rpc}Request"

    @property
    def response(self) -> str:
        return f"{self.rpc}Response"

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "rpc": self.rpc,
            "request": self.request,
            "response": self.response,
            "kind": self.kind,
            "doc": self.doc,
            "params": [param.to_json() for param in self.params],
            "returns": self.returns.to_json(),
        }
        if self.on_loop:
            data["on_loop"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Function:
        return cls(
            name=data["name"],
            rpc=data["rpc"],
            kind=data["kind"],
            doc=data.get("doc"),
            params=tuple(Field.from_json(param) for param in data["params"]),
            returns=TypeRef.from_json(data["returns"]),
            on_loop=data.get("on_loop", False),
        )


@dataclass(frozen=True, slots=True)
class ModelType:
    python: str
    doc: str | None
    fields: tuple[Field, ...]
    kind: Literal["model"] = "model"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "python": self.python,
            "doc": self.doc,
            "fields": [f.to_json() for f in self.fields],
        }


@dataclass(frozen=True, slots=True)
class EnumValue:
    name: str  # the proto value name, e.g. COLOR_RED
    number: int
    member: str | None  # the Enum member's name; None for a Literal
    python: str | int  # the Python value (an Enum member's value, or the Literal)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "number": self.number,
            "member": self.member,
            "python": self.python,
        }


@dataclass(frozen=True, slots=True)
class EnumType:
    python: str | None  # None: a Literal
    doc: str | None
    values: tuple[EnumValue, ...]
    kind: Literal["enum"] = "enum"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "python": self.python,
            "doc": self.doc,
            "values": [value.to_json() for value in self.values],
        }


@dataclass(frozen=True, slots=True)
class TupleType:
    items: tuple[TypeRef, ...]
    kind: Literal["tuple"] = "tuple"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "items": [item.to_json() for item in self.items]}


@dataclass(frozen=True, slots=True)
class UnionMember:
    field: str
    type: TypeRef


@dataclass(frozen=True, slots=True)
class UnionType:
    members: tuple[UnionMember, ...]
    kind: Literal["union"] = "union"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "members": [{"field": m.field, "type": m.type.to_json()} for m in self.members],
        }


@dataclass(frozen=True, slots=True)
class WrapperType:
    of: TypeRef
    kind: Literal["wrapper"] = "wrapper"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "of": self.of.to_json()}


@dataclass(frozen=True, slots=True)
class CustomType:
    """A Python type the bridge's config maps to a scalar; Pydantic converts it."""

    python: str  # module:qualname
    of: TypeRef  # the scalar it travels as
    kind: Literal["custom"] = "custom"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "python": self.python, "of": self.of.to_json()}


TypeDef = ModelType | EnumType | TupleType | UnionType | WrapperType | CustomType


def type_def_from_json(data: Mapping[str, Any]) -> TypeDef:
    match data["kind"]:
        case "model":
            return ModelType(
                python=data["python"],
                doc=data.get("doc"),
                fields=tuple(Field.from_json(f) for f in data["fields"]),
            )
        case "enum":
            return EnumType(
                python=data.get("python"),
                doc=data.get("doc"),
                values=tuple(EnumValue(**value) for value in data["values"]),
            )
        case "tuple":
            return TupleType(items=tuple(TypeRef.from_json(item) for item in data["items"]))
        case "union":
            return UnionType(
                members=tuple(
                    UnionMember(m["field"], TypeRef.from_json(m["type"])) for m in data["members"]
                )
            )
        case "wrapper":
            return WrapperType(of=TypeRef.from_json(data["of"]))
        case "custom":
            return CustomType(python=data["python"], of=TypeRef.from_json(data["of"]))
    raise ValueError(f"unknown type kind {data['kind']!r}")


@dataclass(frozen=True, slots=True)
class IR:
    module: str
    doc: str | None
    package: str
    service: str
    functions: tuple[Function, ...]
    types: Mapping[str, TypeDef]

    @property
    def full_service(self) -> str:
        return f"{self.package}.{self.service}"

    @property
    def stem(self) -> str:
        """The base name of the generated files: the module with dots as underscores."""
        return module_stem(self.module)

    def model(self, name: str) -> ModelType:
        type_def = self.types[name]
        assert isinstance(type_def, ModelType), name
        return type_def

    def enum(self, name: str) -> EnumType:
        type_def = self.types[name]
        assert isinstance(type_def, EnumType), name
        return type_def

    def tuple(self, name: str) -> TupleType:
        type_def = self.types[name]
        assert isinstance(type_def, TupleType), name
        return type_def

    def union(self, name: str) -> UnionType:
        type_def = self.types[name]
        assert isinstance(type_def, UnionType), name
        return type_def

    def custom(self, name: str) -> CustomType:
        type_def = self.types[name]
        assert isinstance(type_def, CustomType), name
        return type_def

    def names(self, kind: str) -> list[str]:
        """The names of the named types of one kind, sorted."""
        return sorted(name for name, type_def in self.types.items() if type_def.kind == kind)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": IR_VERSION,
            "module": self.module,
            "doc": self.doc,
            "package": self.package,
            "service": self.service,
            "functions": [function.to_json() for function in self.functions],
            "types": {name: self.types[name].to_json() for name in sorted(self.types)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IR:
        if data.get("version") != IR_VERSION:
            raise ValueError(f"unsupported IR version {data.get('version')!r}")
        return cls(
            module=data["module"],
            doc=data.get("doc"),
            package=data["package"],
            service=data["service"],
            functions=tuple(Function.from_json(f) for f in data["functions"]),
            types={name: type_def_from_json(t) for name, t in sorted(data["types"].items())},
        )


# ---- names ----


def module_stem(module: str) -> str:
    return module.replace(".", "_")


def camel(name: str) -> str:
    """`process_data` → `ProcessData`; capitals inside a part are kept (`get_HTTP` → `GetHTTP`)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def upper_snake(name: str) -> str:
    """`InputData` → `INPUT_DATA`, `HTTPCode` → `HTTP_CODE`."""
    return snake(name).upper()


def snake(name: str) -> str:
    """`InputData` → `input_data`, `ListOfInt64` → `list_of_int64`."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return name.lower()


def enum_prefix(enum_name: str) -> str:
    """The prefix of an enum's value names: `Color` → `COLOR` (`COLOR_RED`, `COLOR_UNSPECIFIED`)."""
    return upper_snake(enum_name)


def label(t: TypeRef) -> str:
    """The CamelCase label of a type, used to name tuples, unions and wrappers."""
    if t.kind in _LABELS:
        return _LABELS[t.kind]
    if t.kind == "list":
        return "ListOf" + label(t.inner)
    if t.kind == "dict":
        return "MapOf" + label(t.inner)
    if t.kind == "optional":
        return "Optional" + label(t.inner)
    if t.name is not None:
        return t.name
    raise ValueError(f"no label for {t}")


# ---- wire layout (see the module docstring) ----


def field_wrapper(t: TypeRef, presence: bool) -> TypeRef | None:
    """For a field holding `t`: the list or dict type its wrapper message holds, if any."""
    if t.kind == "optional" and t.inner.kind in CONTAINERS:
        return t.inner
    if t.kind in CONTAINERS and presence:
        return t
    return None


def element_wrapped(t: TypeRef) -> bool:
    """Whether a list element or dict value of type `t` is wrapped (in a wrapper of `t`)."""
    return t.kind in (*CONTAINERS, "optional")


def member_wrapped(t: TypeRef) -> bool:
    """Whether a union member of type `t` is wrapped (in a wrapper of `t`)."""
    return t.kind in CONTAINERS


def wrappers_of_field(t: TypeRef, presence: bool) -> Iterator[TypeRef]:
    """The types wrapped anywhere in a field holding `t` (named types not entered)."""
    wrapped = field_wrapper(t, presence)
    if wrapped is not None:
        yield wrapped
        yield from wrappers_of_field(wrapped, False)
    elif t.kind == "optional":
        yield from wrappers_of_field(t.inner, False)
    elif t.kind in CONTAINERS:
        yield from _wrappers_of_element(t.inner)


def _wrappers_of_element(t: TypeRef) -> Iterator[TypeRef]:
    if element_wrapped(t):
        yield t
        yield from wrappers_of_field(t, False)


def wrappers_of_member(t: TypeRef) -> Iterator[TypeRef]:
    if member_wrapped(t):
        yield t
        yield from wrappers_of_field(t, False)
    else:
        yield from wrappers_of_field(t, False)


def uses_timestamp(ir: IR) -> bool:
    def refs() -> Iterator[TypeRef]:
        for function in ir.functions:
            yield function.returns
            for param in function.params:
                yield param.type
        for type_def in ir.types.values():
            if isinstance(type_def, ModelType):
                yield from (f.type for f in type_def.fields)
            elif isinstance(type_def, TupleType):
                yield from type_def.items
            elif isinstance(type_def, UnionType):
                yield from (m.type for m in type_def.members)
            elif isinstance(type_def, WrapperType):
                yield type_def.of

    def has(t: TypeRef) -> bool:
        return t.kind == "datetime" or (t.of is not None and has(t.of))

    return any(has(t) for t in refs())
