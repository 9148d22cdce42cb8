"""From a Python module to the Bridge's IR, with `inspect`, `typing` and Pydantic's fields.

Functions come from `inspect.signature` and `typing.get_type_hints` (string
annotations and `from __future__ import annotations` resolved); each parameter
goes through `FieldInfo.from_annotated_attribute`, as Pydantic itself does for
a model field, so `Annotated[int, Field(ge=0)]`, `x: int = Field(5, le=9)` and
`conint(...)` all give the same constraints. Models are read from Pydantic's
`model_fields` (annotation, default, description, constraint metadata).

Anything without a faithful protobuf form is a `GenerationError` naming the
function, the parameter (or "return type"), where in it the type sits, and the
type, e.g.

    bridge_unsupported.count_distinct: parameter 'values' has unsupported type
    set[int]: sets have no protobuf form; use list[int]
"""

from __future__ import annotations

import collections.abc
import datetime
import enum
import importlib
import inspect
import math
import re
import traceback
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import pydantic_core
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from synapse_python._bridge._ir import (
    CONSTRAINT_KEYS,
    IR,
    NO_DEFAULT,
    CustomType,
    EnumType,
    EnumValue,
    Field,
    Function,
    FunctionKind,
    GenerationError,
    ModelType,
    TupleType,
    TypeDef,
    TypeRef,
    UnionMember,
    UnionType,
    WrapperType,
    camel,
    enum_prefix,
    label,
    module_stem,
    snake,
    wrappers_of_field,
    wrappers_of_member,
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")
_ASYNC_ITERATORS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)
_SUPPORTED = (
    "supported: int, float, bool, str, bytes, None, datetime, date, list[T], "
    "tuple[...], dict[str, T], Literal, str/int Enum, unions (X | Y) and Pydantic models"
)


@dataclass(frozen=True)
class ParamSpec:
    """A parameter as the server validates it."""

    name: str
    annotation: Any  # the type, with Pydantic's metadata (constraints) applied
    positional_only: bool


@dataclass
class Introspection:
    """The IR and the live Python objects it was made from."""

    ir: IR
    functions: dict[str, Callable[..., Any]]  # by Python name
    params: dict[str, tuple[ParamSpec, ...]]  # by function name
    classes: dict[str, type]  # model, Enum and custom classes, by IR type name


def default_service(module: str) -> str:
    """The gRPC service's default name: `my_module` → `MyModule`, `pkg.sub_mod` → `SubMod`."""
    return camel(module.rpartition(".")[2])


def introspect_module(
    module_name: str,
    function_names: Sequence[str] | None = None,
    *,
    service: str | None = None,
    custom_types: Mapping[type, str] | None = None,
    on_loop: Collection[str] = (),
) -> Introspection:
    """Import `module_name` and describe its functions (all public ones it defines by default)."""
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception(exc)).rstrip()
        raise GenerationError(f"cannot import module {module_name!r}:\n{detail}") from exc
    return introspect(
        module,
        select_functions(module, function_names),
        service=service,
        custom_types=custom_types,
        on_loop=on_loop,
    )


def select_functions(
    module: types.ModuleType, names: Sequence[str] | None
) -> list[tuple[str, Callable[..., Any]]]:
    """The functions to export, in the module's definition order.

    Without `names`: every public function defined in the module itself (not
    the ones it imports). With `names`: those, which must be functions of the module.
    """
    defined = [
        (name, value)
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]
    if not names:
        if not defined:
            raise GenerationError(f"module {module.__name__} defines no public function")
        return defined
    position = {name: index for index, name in enumerate(vars(module))}
    selected = []
    for name in dict.fromkeys(names):
        value = getattr(module, name, None)
        if not inspect.isfunction(value):
            what = (
                "no function" if value is None else f"no function (it is a {type(value).__name__})"
            )
            raise GenerationError(f"module {module.__name__} has {what} named {name!r}")
        selected.append((name, value))
    return sorted(selected, key=lambda item: position.get(item[0], len(position)))


def introspect(
    module: types.ModuleType,
    functions: Sequence[tuple[str, Callable[..., Any]]],
    *,
    service: str | None = None,
    custom_types: Mapping[type, str] | None = None,
    on_loop: Collection[str] = (),
) -> Introspection:
    """Describe `functions` (name, function) of `module` as an IR.

    `custom_types` maps classes to the IR kind of the scalar each travels as
    (the `types` of the bridge's config); `on_loop` names the sync functions
    to call on the event loop rather than in a thread (the config's `on_loop`).
    """
    service = service or default_service(module.__name__)
    if not _TYPE_NAME.fullmatch(service):
        raise GenerationError(
            f"invalid service name {service!r}: it must start with an ASCII capital and be an "
            "identifier"
        )
    builder = _Builder(module.__name__, custom_types=dict(custom_types or {}))
    described = []
    for name, function in functions:
        described.append(builder.function(name, function))
    for index, function in enumerate(described):
        if function.name in on_loop:
            if function.kind != "sync":
                what = "an async generator" if function.kind == "stream" else "async def"
                raise GenerationError(
                    f"{module.__name__}.{function.name}: on_loop is for sync functions; this "
                    f"one is {what}, which runs on the event loop already"
                )
            described[index] = replace(function, on_loop=True)
    builder.add_wrappers(described)
    ir = IR(
        module=module.__name__,
        doc=_doc(module.__doc__),
        package=f"synapse.bridge.{module_stem(module.__name__)}",
        service=service,
        functions=tuple(described),
        types={name: builder.types[name] for name in sorted(builder.types)},
    )
    _check_names(ir)
    return Introspection(
        ir=ir,
        functions=dict(functions),
        params=builder.params,
        classes=builder.classes,
    )


@dataclass(frozen=True)
class _Where:
    """Where a type sits, for error messages and for naming the Literals found there."""

    function: str  # module.function
    what: str  # "parameter 'x'" or "return type"
    literal_name: str
    path: tuple[str, ...] = ()

    def inside(self, step: str, literal_name: str | None = None) -> _Where:
        return replace(
            self, path=(*self.path, step), literal_name=literal_name or self.literal_name
        )

    def error(self, tp: Any, reason: str) -> GenerationError:
        return GenerationError(
            f"{self.function}: {self.what}{self._inside()} has unsupported type "
            f"{display(tp)}: {reason}"
        )

    def problem(self, message: str) -> GenerationError:
        return GenerationError(f"{self.function}: {self.what}{self._inside()}: {message}")

    def _inside(self) -> str:
        return f" (in {', '.join(self.path)})" if self.path else ""


@dataclass
class _Builder:
    module: str
    custom_types: dict[type, str] = field(default_factory=dict)
    types: dict[str, TypeDef] = field(default_factory=dict)
    classes: dict[str, type] = field(default_factory=dict)
    params: dict[str, tuple[ParamSpec, ...]] = field(default_factory=dict)
    # Named types being described (recursive models refer to themselves).
    _pending: set[str] = field(default_factory=set)

    # ---- functions ----

    def function(self, name: str, function: Callable[..., Any]) -> Function:
        qualified = f"{self.module}.{name}"
        if not _IDENTIFIER.fullmatch(name):
            raise GenerationError(f"{qualified}: the name is not an ASCII identifier")
        if inspect.isasyncgenfunction(function):
            kind: FunctionKind = "stream"
        elif inspect.iscoroutinefunction(function):
            kind = "async"
        elif inspect.isgeneratorfunction(function):
            raise GenerationError(
                f"{qualified}: generator functions are not supported; "
                "make it an async generator (async def ... yield) to stream"
            )
        else:
            kind = "sync"
        try:
            signature = inspect.signature(function)
            hints = typing.get_type_hints(function, include_extras=True)
        except Exception as exc:
            raise GenerationError(
                f"{qualified}: cannot read the signature: {type(exc).__name__}: {exc}"
            ) from exc
        rpc = camel(name)
        params = []
        specs = []
        for parameter in signature.parameters.values():
            where = _Where(qualified, f"parameter {parameter.name!r}", rpc + camel(parameter.name))
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise where.problem("*args and **kwargs cannot be bridged")
            if not _IDENTIFIER.fullmatch(parameter.name):
                raise where.problem("the name is not an ASCII identifier")
            if parameter.name not in hints:
                raise where.problem("has no type annotation")
            default = (
                PydanticUndefined if parameter.default is parameter.empty else parameter.default
            )
            info = FieldInfo.from_annotated_attribute(hints[parameter.name], default)
            type_ref = self.convert(info.annotation, where)
            param = self.field(parameter.name, type_ref, info, where)
            if param.name == "timeout" and not param.required:
                raise where.problem(
                    "an optional parameter cannot be named 'timeout': the Elixir client's "
                    ":timeout option is the call's"
                )
            # A stream's options also hold the stream's `:window`: an option of
            # the same name would take it, leaving the stream's unreachable.
            if param.name == "window" and not param.required and kind == "stream":
                raise where.problem(
                    "an optional parameter of an async generator cannot be named 'window': "
                    "the Elixir client's :window option is the stream's"
                )
            params.append(param)
            specs.append(
                ParamSpec(
                    parameter.name,
                    Annotated[info.annotation, info],
                    parameter.kind is parameter.POSITIONAL_ONLY,
                )
            )
        self.params[name] = tuple(specs)
        returns = self._returns(qualified, rpc, kind, hints)
        return Function(
            name=name,
            rpc=rpc,
            kind=kind,
            doc=_doc(function.__doc__),
            params=tuple(params),
            returns=returns,
        )

    def _returns(
        self, qualified: str, rpc: str, kind: FunctionKind, hints: dict[str, Any]
    ) -> TypeRef:
        where = _Where(qualified, "return type", rpc + "Result")
        if "return" not in hints:
            raise where.problem(
                "has no annotation (annotate it; -> None for a function without a result)"
            )
        returned = hints["return"]
        if kind == "stream":
            if get_origin(returned) not in _ASYNC_ITERATORS or not get_args(returned):
                raise where.problem(
                    f"an async generator must be annotated -> AsyncIterator[T], got "
                    f"{display(returned)}"
                )
            return self.convert(get_args(returned)[0], where.inside("stream item"))
        return self.convert(returned, where, allow_none=True)

    def field(self, name: str, type_ref: TypeRef, info: FieldInfo, where: _Where) -> Field:
        required = info.is_required()
        default: Any = NO_DEFAULT
        factory = None
        if not required:
            if info.default_factory is not None:
                made = info.default_factory
                if made in (list, dict, tuple):
                    default = _json_fact(made(), "default", where)  # type: ignore[call-arg]
                else:
                    factory = f"{made.__module__}:{made.__qualname__}"
            else:
                default = _json_fact(info.default, "default", where)
        return Field(
            name=name,
            type=type_ref,
            required=required,
            default=default,
            default_factory=factory,
            description=info.description,
            constraints=_constraints(info.metadata, where),
        )

    # ---- types ----

    def convert(self, tp: Any, where: _Where, *, allow_none: bool = False) -> TypeRef:
        tp = _strip(tp)
        if tp is type(None) or tp is None:
            if allow_none:
                return TypeRef("none")
            raise where.error(tp, "None alone is not a value type; use T | None")
        if isinstance(tp, type) and tp in self.custom_types:
            return self._custom(tp, where)
        if tp is Any or tp is object:
            raise where.error(tp, f"it has no protobuf form; give a concrete type ({_SUPPORTED})")
        origin = get_origin(tp)
        if origin is Literal:
            return self._literal(tp, where)
        if origin in (Union, types.UnionType):
            return self._union(tp, where)
        if origin is list or tp is list:
            args = get_args(tp)
            if not args:
                raise where.error(tp, "give the item type, e.g. list[int]")
            return TypeRef("list", self.convert(args[0], where))
        if origin is dict or tp is dict:
            args = get_args(tp)
            if not args:
                raise where.error(tp, "give the key and value types, e.g. dict[str, int]")
            if _strip(args[0]) is not str:
                raise where.error(tp, "dict keys must be str")
            return TypeRef("dict", self.convert(args[1], where))
        if origin is tuple or tp is tuple:
            return self._tuple(tp, where)
        if origin in (set, frozenset) or tp in (set, frozenset):
            raise where.error(tp, f"sets have no protobuf form; use list[{_item_display(tp)}]")
        if origin is collections.abc.Callable:
            raise where.error(tp, "callables cannot be sent")
        if origin is None and isinstance(tp, type):
            if issubclass(tp, enum.Enum):
                return self._enum(tp, where)
            if issubclass(tp, pydantic.BaseModel):
                return self._model(tp, where)
            if tp in _SCALAR_TYPES:
                return TypeRef(_SCALAR_TYPES[tp])
        raise where.error(tp, f"not a supported type ({_SUPPORTED})")

    def _literal(self, tp: Any, where: _Where) -> TypeRef:
        values = get_args(tp)
        nullable = None in values
        values = tuple(v for v in values if v is not None)
        if not values:
            raise where.error(tp, "Literal[None] carries no value")
        if all(isinstance(v, str) for v in values):
            kind = "str"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind = "int"
        else:
            raise where.error(tp, "a Literal's values must be all str or all int")
        name = where.literal_name
        prefix = enum_prefix(name)
        enum_values = []
        for number, value in enumerate(dict.fromkeys(values), start=1):
            suffix = (
                _value_name(value)
                if kind == "str"
                else f"{'MINUS_' if value < 0 else ''}{abs(value)}"  # type: ignore[operator, arg-type]
            )
            enum_values.append(
                EnumValue(
                    name=f"{prefix}_{suffix}",
                    number=number,
                    member=None,
                    python=value,
                )
            )
        self._check_enum_values(name, enum_values, where, tp)
        self._register(name, EnumType(python=None, doc=None, values=tuple(enum_values)), where)
        ref = TypeRef("enum", name=name)
        return TypeRef("optional", ref) if nullable else ref

    def _enum(self, cls: type[enum.Enum], where: _Where) -> TypeRef:
        name = cls.__name__
        if self.classes.get(name) is cls:
            return TypeRef("enum", name=name)
        if issubclass(cls, enum.Flag):
            raise where.error(cls, "Flag enums are not supported (their values combine)")
        members = list(cls)
        if not members:
            raise where.error(cls, "the enum has no members")
        values = [member.value for member in members]
        if not (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise where.error(cls, "an Enum's values must be all str or all int")
        self._check_type_name(cls, where)
        prefix = enum_prefix(name)
        enum_values = tuple(
            EnumValue(
                name=f"{prefix}_{_value_name(member.name)}",
                number=number,
                member=member.name,
                python=member.value,
            )
            for number, member in enumerate(members, start=1)
        )
        self._check_enum_values(name, list(enum_values), where, cls)
        self._register(
            name,
            EnumType(
                python=f"{cls.__module__}:{cls.__qualname__}",
                doc=_doc(cls.__dict__.get("__doc__")),
                values=enum_values,
            ),
            where,
            cls,
        )
        return TypeRef("enum", name=name)

    def _check_enum_values(
        self, name: str, values: list[EnumValue], where: _Where, tp: Any
    ) -> None:
        seen: dict[str, Any] = {f"{enum_prefix(name)}_UNSPECIFIED": "UNSPECIFIED (value 0)"}
        for value in values:
            if value.name in seen:
                raise where.error(
                    tp,
                    f"the values {seen[value.name]!r} and {value.python!r} of {name} get one "
                    f"name ({value.name}); rename one",
                )
            seen[value.name] = value.python

    def _model(self, cls: type[pydantic.BaseModel], where: _Where) -> TypeRef:
        name = cls.__name__
        ref = TypeRef("model", name=name)
        if self.classes.get(name) is cls:
            return ref
        self._check_type_name(cls, where)
        if not cls.__pydantic_complete__:
            try:
                cls.model_rebuild(raise_errors=True)
            except Exception as exc:
                raise where.error(cls, f"the model is not fully defined: {exc}") from exc
        self.classes[name] = cls
        self._pending.add(name)
        fields = []
        for field_name, info in cls.model_fields.items():
            inner = where.inside(f"{name}.{field_name}", literal_name=name + camel(field_name))
            if not _IDENTIFIER.fullmatch(field_name):
                raise inner.problem("the field name is not an ASCII identifier")
            type_ref = self.convert(info.annotation, inner)
            fields.append(self.field(field_name, type_ref, info, inner))
        self._pending.discard(name)
        self.types[name] = ModelType(
            python=f"{cls.__module__}:{cls.__qualname__}",
            doc=_doc(cls.__dict__.get("__doc__")),
            fields=tuple(fields),
        )
        return ref

    def _custom(self, cls: type, where: _Where) -> TypeRef:
        name = cls.__name__
        if self.classes.get(name) is not cls:
            self._check_type_name(cls, where)
            custom = CustomType(
                python=f"{cls.__module__}:{cls.__qualname__}",
                of=TypeRef(self.custom_types[cls]),
            )
            self._register(name, custom, where, cls)
        return TypeRef("custom", name=name)

    def _check_type_name(self, cls: type, where: _Where) -> None:
        name = cls.__name__
        if not _TYPE_NAME.fullmatch(name):
            reason = (
                "generic models are not supported"
                if "[" in name
                else "the class name must start with an ASCII capital and be an identifier"
            )
            raise where.error(cls, reason)
        if "<locals>" in cls.__qualname__:
            raise where.error(cls, "the class must be defined at a module's top level")
        other = self.classes.get(name)
        if (other is not None and other is not cls) or (name in self.types and other is None):
            first = f"{other.__module__}.{other.__qualname__}" if other else "another type"
            raise where.problem(
                f"two types are named {name}: {first} and {cls.__module__}.{cls.__qualname__}"
            )

    def _tuple(self, tp: Any, where: _Where) -> TypeRef:
        args = get_args(tp)
        if not args:
            raise where.error(tp, "give the item types, e.g. tuple[int, str] or tuple[int, ...]")
        if len(args) == 2 and args[1] is Ellipsis:
            return TypeRef("list", self.convert(args[0], where))
        if Ellipsis in args:
            raise where.error(tp, "only tuple[T, ...] may use ...")
        items = tuple(
            self.convert(arg, where.inside(f"item {index}", where.literal_name + f"Item{index}"))
            for index, arg in enumerate(args)
        )
        name = "TupleOf" + "And".join(label(item) for item in items)
        self._register(name, TupleType(items=items), where)
        return TypeRef("tuple", name=name)

    def _union(self, tp: Any, where: _Where) -> TypeRef:
        args = [_strip(arg) for arg in get_args(tp)]
        nullable = type(None) in args
        rest = [arg for arg in args if arg is not type(None)]
        literals = [arg for arg in rest if get_origin(arg) is Literal]
        if len(literals) > 1:  # Literal["a"] | Literal["b"] is Literal["a", "b"]
            merged = Literal[tuple(v for lit in literals for v in get_args(lit))]  # type: ignore[valid-type]
            first = rest.index(literals[0])
            rest = [arg for arg in rest if get_origin(arg) is not Literal]
            rest.insert(first, merged)
        if len(rest) == 1:
            inner = self.convert(rest[0], where)
            if inner.kind == "optional":
                return inner
            return TypeRef("optional", inner) if nullable else inner
        members = [self.convert(arg, where) for arg in rest]
        shapes: dict[str, TypeRef] = {}
        for member in members:
            if member.kind == "optional":
                raise where.error(tp, f"a union member cannot itself be optional ({member})")
            shape = self._elixir_shape(member, where)
            if shape in shapes:
                raise where.error(
                    tp,
                    f"its members {label(shapes[shape])} and {label(member)} are both "
                    f"{shape} in Elixir, so a value cannot tell which one it is",
                )
            shapes[shape] = member
        name = "Or".join(label(member) for member in members)
        self._register(
            name,
            UnionType(
                members=tuple(
                    UnionMember(f"{snake(label(member))}_value", member) for member in members
                )
            ),
            where,
        )
        ref = TypeRef("union", name=name)
        return TypeRef("optional", ref) if nullable else ref

    def _elixir_shape(self, t: TypeRef, where: _Where) -> str:
        """What a value of `t` looks like in Elixir; union members must differ in it."""
        if t.kind == "enum":
            enum_type = self.types[t.name]  # type: ignore[index]
            assert isinstance(enum_type, EnumType)
            # A Literal of ints is integers in Elixir; Enum members and str Literals are atoms.
            is_int = enum_type.python is None and isinstance(enum_type.values[0].python, int)
            return "integers" if is_int else "atoms"
        if t.kind == "tuple":
            return f"{len(self.types[t.name].items)}-tuples"  # type: ignore[index, union-attr]
        if t.kind == "model":
            return f"{t.name} structs"
        if t.kind == "custom":
            raise where.problem(
                f"the custom type {t.name} cannot be a member of a union (nothing tells which "
                "member a value is)"
            )
        return _SHAPES[t.kind]

    def _register(
        self, name: str, type_def: TypeDef, where: _Where, cls: type | None = None
    ) -> None:
        existing = self.types.get(name)
        if (existing is not None and existing != type_def) or name in self._pending:
            raise where.problem(f"two different types would both be named {name}")
        if cls is not None:
            self.classes[name] = cls
        self.types[name] = type_def

    def add_wrappers(self, functions: list[Function]) -> None:
        """Name the wrapper messages the layout needs (see `_ir`)."""
        wrapped: list[tuple[TypeRef, str]] = []
        for function in functions:
            for param in function.params:
                wrapped += [
                    (t, function.name) for t in wrappers_of_field(param.type, param.presence)
                ]
            if function.returns.kind != "none":
                wrapped += [(t, function.name) for t in wrappers_of_field(function.returns, False)]
        for name, type_def in list(self.types.items()):
            if isinstance(type_def, ModelType):
                for f in type_def.fields:
                    wrapped += [(t, name) for t in wrappers_of_field(f.type, f.presence)]
            elif isinstance(type_def, TupleType):
                for item in type_def.items:
                    wrapped += [(t, name) for t in wrappers_of_field(item, False)]
            elif isinstance(type_def, UnionType):
                for member in type_def.members:
                    wrapped += [(t, name) for t in wrappers_of_member(member.type)]
        for t, owner in wrapped:
            name = label(t)
            existing = self.types.get(name)
            if existing is not None and existing != WrapperType(of=t):
                raise GenerationError(
                    f"{self.module}.{owner}: the wrapper message for {t} would be named "
                    f"{name}, which is taken by another type"
                )
            self.types[name] = WrapperType(of=t)


def _check_names(ir: IR) -> None:
    """Message, enum and service names share the package's namespace; so do enum value names."""
    owners: dict[str, str] = {ir.service: "the service"}
    for function in ir.functions:
        for name in (function.request, function.response):
            if name in owners:
                raise GenerationError(
                    f"{ir.module}.{function.name}: its message {name} clashes with {owners[name]}"
                )
            owners[name] = f"a message of {function.name}"
    for name, type_def in ir.types.items():
        if name in owners:
            raise GenerationError(
                f"{ir.module}: the {type_def.kind} {name} clashes with {owners[name]}; rename it"
            )
        owners[name] = f"the {type_def.kind} {name}"
    values: dict[str, str] = {}
    for name, type_def in ir.types.items():
        if isinstance(type_def, EnumType):
            for value in (enum_prefix(name) + "_UNSPECIFIED", *(v.name for v in type_def.values)):
                if value in values and values[value] != name:
                    raise GenerationError(
                        f"{ir.module}: the enums {values[value]} and {name} both have a "
                        f"value named {value}; rename one"
                    )
                values[value] = name
    for function in ir.functions:
        _check_json_names(
            [param.name for param in function.params],
            lambda a, b, json_name, f=function: (
                f"{ir.module}.{f.name}: the parameters {a!r} and {b!r} are one name to "
                f"protobuf (its JSON name {json_name}); rename one"
            ),
        )
    for name, type_def in ir.types.items():
        if isinstance(type_def, ModelType):
            _check_json_names(
                [f.name for f in type_def.fields],
                lambda a, b, json_name, model=name: (
                    f"{ir.module}: the fields {a!r} and {b!r} of the model {model} are one "
                    f"name to protobuf (its JSON name {json_name}); rename one"
                ),
            )
        elif isinstance(type_def, UnionType):
            _check_union_fields(ir.module, name, type_def)


def _check_union_fields(module: str, name: str, union: UnionType) -> None:
    """Each member of a union is a field named after its type: two types can ask for one.

    `AB` and `Ab` both ask for `ab_value`, `A1` and `A_1` for fields of one JSON
    name; protoc would refuse the message, pointing at a temporary file.
    """
    seen: dict[str, UnionMember] = {}
    for member in union.members:
        json_name = _json_name(member.field)
        first = seen.setdefault(json_name, member)
        if first is member:
            continue
        fields = (
            f"both the field {member.field!r}"
            if first.field == member.field
            else f"the fields {first.field!r} and {member.field!r}, JSON name {json_name}"
        )
        raise GenerationError(
            f"{module}: the members {label(first.type)} and {label(member.type)} of the "
            f"union {name} are one name to protobuf ({fields}); rename one"
        )


def _check_json_names(names: Sequence[str], clash: Callable[[str, str, str], str]) -> None:
    """protoc refuses a message two of whose fields have one JSON name (`user_id`, `userId`)."""
    seen: dict[str, str] = {}
    for name in names:
        json_name = _json_name(name)
        if json_name in seen:
            raise GenerationError(clash(seen[json_name], name, json_name))
        seen[json_name] = name


def _json_name(name: str) -> str:
    """protoc's default JSON name of a field: each `_` dropped, the character after it upper."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


_SCALAR_TYPES: dict[type, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bytes",
    datetime.datetime: "datetime",
    datetime.date: "date",
}

_SHAPES = {
    "int": "integers",
    "float": "floats",
    "bool": "booleans",
    "str": "binaries",
    "bytes": "binaries",
    "datetime": "DateTime structs",
    "date": "Date structs",
    "list": "lists",
    "dict": "maps",
}


def _strip(tp: Any) -> Any:
    """Without `Annotated[...]` (its metadata is Pydantic's business) and `NewType`."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif hasattr(tp, "__supertype__"):
            tp = tp.__supertype__
        else:
            return tp


def display(tp: Any) -> str:
    """A type as a reader wrote it: `set[int]`, `Any`, `InputData`."""
    tp = _strip(tp)
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__qualname__
    text = repr(tp)
    for prefix in ("typing.", "collections.abc.", "datetime."):
        text = text.replace(prefix, "")
    return re.sub(r"<class '([^']+)'>", lambda m: m.group(1).rpartition(".")[2], text)


def _item_display(tp: Any) -> str:
    args = get_args(tp)
    return display(args[0]) if args else "T"


def _value_name(value: str) -> str:
    """A Literal value or member name as the tail of a proto enum value name."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", value).strip("_")
    if not cleaned:
        return "EMPTY" if value == "" else "VALUE"
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", cleaned).upper()


def _constraints(metadata: Sequence[Any], where: _Where) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for key in CONSTRAINT_KEYS:
            value = getattr(item, key, None)
            if value is not None:
                found[key] = (
                    value.pattern
                    if isinstance(value, re.Pattern)
                    else _json_fact(value, f"constraint {key}", where)
                )
    return {key: found[key] for key in CONSTRAINT_KEYS if key in found}


def _json_fact(value: Any, what: str, where: _Where) -> Any:
    """A default or a constraint as the JSON the IR holds it in (for the client's docs).

    JSON has no NaN nor infinities (nor has the BEAM) and its text is UTF-8:
    such a value is refused here, naming it, rather than making an IR that
    Elixir cannot read or a traceback.
    """
    try:
        data = _jsonable(value)
    except ValueError:  # bytes that are not UTF-8
        data = None
    else:
        if _finite(data):
            return data
    raise where.problem(
        f"its {what} {value!r:.80} has no JSON form, which the bridge's IR needs (to show it in "
        "the Elixir docs): JSON has no NaN nor infinities, and bytes must be UTF-8 text"
    )


def _finite(data: Any) -> bool:
    """Whether JSON data holds no NaN nor infinite float."""
    if isinstance(data, float):
        return math.isfinite(data)
    if isinstance(data, list):
        return all(_finite(item) for item in data)
    if isinstance(data, dict):
        return all(_finite(item) for item in data.values())
    return True


def _jsonable(value: Any) -> Any:
    return pydantic_core.to_jsonable_python(
        value, fallback=lambda v: f"<{type(v).__qualname__}>", serialize_unknown=True
    )


def _doc(doc: str | None) -> str | None:
    if not doc or not doc.strip():
        return None
    return inspect.cleandoc(doc)
