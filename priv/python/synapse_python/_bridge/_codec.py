"""Protobuf messages ↔ Python values, driven by the IR (the layout rules are in `_ir`).

Reading a message gives "raw" values for Pydantic to validate: dicts for
models, plain values for enums (the Enum member, or the Literal value), `date`
and `datetime` objects (a Timestamp is UTC). An unset field is left out, so
Python applies its default or reports "Field required". The one exception: a
model inside a union is validated here, into an instance, so that Pydantic
never has to guess which member a dict was meant for.

Writing a message takes the function's result as Python returned it. It is
strict: a value that does not fit its annotation (an int beyond int64, a str
where an int goes) raises `TypeError`/`OverflowError` naming where it sits,
never a narrowed or coerced value. Naive datetimes are taken as UTC.

A custom type (the bridge config's `types`) is read as its scalar, which
Pydantic then validates into the type; it is written as what Pydantic
serializes it to (JSON mode; Python mode for `bytes`), which must be its scalar.
"""

from __future__ import annotations

import datetime
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from synapse_python import _errors
from synapse_python._bridge._ir import (
    IR,
    CustomType,
    EnumType,
    Field,
    Function,
    TypeRef,
    element_wrapped,
    field_wrapper,
    member_wrapped,
)
from synapse_python._convert import wire_text

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MESSAGE_KINDS = ("model", "tuple", "union", "datetime")
# Kinds whose field holds the value itself, read as it is.
_AS_IS = frozenset({"int", "float", "bool", "str", "bytes", "custom"})
# Kinds written with one `setattr` of `_scalar`'s value.
_SET_AS_SCALAR = _AS_IS | {"date", "enum"}

Loc = tuple[str | int, ...]


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""An unset field (not the same as None)."""


class InvalidArguments(Exception):
    """Request values Pydantic rejected, as Pydantic's error dicts with full locations."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(summarize(errors))


def summarize(errors: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """`2 validation error(s): person.age: Input should be ...; ...`."""
    shown = "; ".join(
        f"{format_loc(error['loc']) or '<root>'}: {error['msg']}" for error in errors[:limit]
    )
    more = len(errors) - limit
    return f"{len(errors)} validation error(s): {shown}" + (
        f"; and {more} more" if more > 0 else ""
    )


def format_loc(loc: Sequence[str | int]) -> str:
    """`("team", "members", 0, "age")` → `team.members[0].age`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_errors(exc: pydantic.ValidationError, prefix: Loc = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as `{"loc": [...], "msg": ..., "type": ...}`, under `prefix`."""
    return [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def message_classes(descriptor_set: bytes) -> descriptor_pool.DescriptorPool:
    """A private descriptor pool holding a generated FileDescriptorSet (imports first)."""
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    for file in files.file:
        pool.Add(file)
    return pool


class Codec:
    """Reads and writes the messages of one bridge.

    `classes` are the live model and Enum classes by IR type name (from
    `_introspect`): with them (the server), a model value must be an instance
    of its class and a model in a union is read as one. Without them (a
    client), models are written from dicts or any object with the attributes,
    and read as dicts; Enums are read as their values.
    """

    def __init__(
        self,
        ir: IR,
        descriptor_set: bytes,
        classes: Mapping[str, type],
        *,
        unset_is_default: bool = True,
    ) -> None:
        self.ir = ir
        # Whether an unset optional parameter or field that has a default
        # stands for that default (requests: a client sends nil, or leaves
        # the value out, for "the default"), or for None (responses: the
        # server writes None as unset).
        self._unset_is_default = unset_is_default
        self.pool = message_classes(descriptor_set)
        self._classes = dict(classes)
        self._enum_read: dict[str, dict[int, Any]] = {}
        self._enum_write: dict[str, Callable[[Any], int | None]] = {}
        self._custom_write: dict[str, Callable[[Any], Any]] = {}
        self._message_classes: dict[str, type[Message]] = {}
        for name, type_def in ir.types.items():
            if isinstance(type_def, EnumType):
                self._enum_read[name], self._enum_write[name] = self._enum_tables(
                    type_def, self._classes.get(name)
                )
            elif isinstance(type_def, CustomType) and name in self._classes:
                adapter = pydantic.TypeAdapter(self._classes[name])
                mode = "python" if type_def.of.kind == "bytes" else "json"
                self._custom_write[name] = lambda value, a=adapter, m=mode: a.dump_python(
                    value, mode=m
                )

    def message_class(self, name: str) -> type[Message]:
        """The class of the message `name` (in the bridge's package)."""
        found = self._message_classes.get(name)
        if found is None:
            found = GetMessageClass(self.pool.FindMessageTypeByName(f"{self.ir.package}.{name}"))
            self._message_classes[name] = found
        return found

    def function(self, name: str) -> Function:
        for function in self.ir.functions:
            if function.name == name:
                return function
        raise KeyError(name)

    # ---- the two sides of a call ----

    def request_reader(self, function: Function) -> Callable[[Message], dict[str, Any]]:
        """What reads the parameters a request of `function` sets, as raw values
        (unset ones left out); made once per function, used per call."""
        # Scalars are read as they are (what `_read_field` does for them, inline).
        plain = [param.name for param in function.params if param.type.kind in _AS_IS]
        others = [
            (param.name, param.type, param.presence, self._defaulted(param))
            for param in function.params
            if param.type.kind not in _AS_IS
        ]
        read_field = self._read_field

        def read(request: Message) -> dict[str, Any]:
            values = {}
            # A loop, not a comprehension: Python 3.11 calls a function for that.
            for name in plain:
                if request.HasField(name):
                    values[name] = getattr(request, name)
            for name, t, presence, defaulted in others:
                value = read_field(request, name, t, presence, (name,), defaulted)
                if value is not ABSENT:
                    values[name] = value
            return values

        return read

    def write_request(self, function: Function, arguments: Mapping[str, Any]) -> Message:
        """The request message for `arguments` (a client's side; None or absent: unset)."""
        request = self.message_class(function.request)()
        for param in function.params:
            value = arguments.get(param.name)
            if value is not None or param.type.kind == "optional":
                self._write_field(
                    request, param.name, param.type, param.presence, value, (param.name,)
                )
        return request

    def response_writer(self, function: Function) -> Callable[[Any], Message]:
        """What writes the response message for one result (or stream item) of
        `function`; made once per function, used per call."""
        response_class = self.message_class(function.response)
        returns = function.returns
        kind = returns.kind
        scalar, write_field = self._scalar, self._write_field

        def write(value: Any) -> Message:
            response = response_class()
            if kind in _SET_AS_SCALAR:  # what `_write_field` does for them, inline
                response.value = scalar(returns, value, ("result",))  # type: ignore[attr-defined]
            elif kind != "none":
                write_field(response, "value", returns, False, value, ("result",))
            return response

        return write

    def read_response(self, function: Function, response: Message) -> Any:
        """The raw value a response carries (a client's side)."""
        if function.returns.kind == "none":
            return None
        value = self._read_field(response, "value", function.returns, False, ("value",))
        return None if value is ABSENT else value

    # ---- reading ----

    def _defaulted(self, f: Field) -> bool:
        """Whether an unset `f` is left out, for Python to apply its default."""
        return self._unset_is_default and not f.required

    def _read_field(
        self,
        msg: Message,
        name: str,
        t: TypeRef,
        presence: bool,
        loc: Loc,
        defaulted: bool = False,
    ) -> Any:
        """The raw value of the field `name`; ABSENT when unset and not None:
        an unset `T | None` is None unless `defaulted` (the parameter or model
        field has a default, which Python then applies)."""
        wrapped = field_wrapper(t, presence)
        if wrapped is not None:
            if not msg.HasField(name):
                return None if t.kind == "optional" and not defaulted else ABSENT
            return self._read_field(getattr(msg, name), "value", wrapped, False, loc)
        if t.kind == "optional":
            if not msg.HasField(name):
                return ABSENT if defaulted else None
            return self._read_single(getattr(msg, name), t.inner, loc)
        if t.kind == "list":
            return [
                self._read_element(item, t.inner, (*loc, index))
                for index, item in enumerate(getattr(msg, name))
            ]
        if t.kind == "dict":
            entries = getattr(msg, name)
            return {
                key: self._read_element(entries[key], t.inner, (*loc, key))
                for key in sorted(entries)
            }
        if not msg.HasField(name):
            return ABSENT
        return self._read_single(getattr(msg, name), t, loc)

    def _read_element(self, value: Any, t: TypeRef, loc: Loc) -> Any:
        if element_wrapped(t):
            return self._read_field(value, "value", t, False, loc)
        return self._read_single(value, t, loc)

    def _read_single(self, value: Any, t: TypeRef, loc: Loc) -> Any:
        kind = t.kind
        if kind in _AS_IS:
            return value
        if kind == "date":
            try:
                return datetime.date.fromisoformat(value)
            except ValueError:
                return value  # Pydantic says what is wrong with it
        if kind == "datetime":
            try:
                return _EPOCH + datetime.timedelta(
                    seconds=value.seconds, microseconds=value.nanos // 1000
                )
            except OverflowError as exc:
                raise InvalidArguments(
                    [
                        {
                            "loc": list(loc),
                            "msg": f"Timestamp out of range: {exc}",
                            "type": "value_error",
                        }
                    ]
                ) from exc
        if kind == "enum":
            return self._enum_read[t.name].get(value)  # type: ignore[index]
        if kind == "model":
            model = self.ir.model(t.name)  # type: ignore[arg-type]
            fields = {}
            for f in model.fields:
                read = self._read_field(
                    value, f.name, f.type, f.presence, (*loc, f.name), self._defaulted(f)
                )
                if read is not ABSENT:
                    fields[f.name] = read
            return fields
        if kind == "tuple":
            items = self.ir.tuple(t.name).items  # type: ignore[arg-type]
            read_items = []
            for index, item in enumerate(items):
                read = self._read_field(value, f"item_{index}", item, False, (*loc, index))
                read_items.append(None if read is ABSENT else read)
            return read_items
        if kind == "union":
            which = value.WhichOneof("value")
            if which is None:
                return None
            member = next(m for m in self.ir.union(t.name).members if m.field == which)  # type: ignore[arg-type]
            if member_wrapped(member.type):
                return self._read_field(getattr(value, which), "value", member.type, False, loc)
            read = self._read_single(getattr(value, which), member.type, loc)
            cls = self._classes.get(member.type.name or "")
            if member.type.kind == "model" and cls is not None:
                try:
                    return cls.model_validate(read, by_alias=False, by_name=True)  # type: ignore[attr-defined]
                except pydantic.ValidationError as exc:
                    raise InvalidArguments(validation_errors(exc, loc)) from exc
            return read
        raise AssertionError(t)

    # ---- writing ----

    def _write_field(
        self, msg: Message, name: str, t: TypeRef, presence: bool, value: Any, loc: Loc
    ) -> None:
        wrapped = field_wrapper(t, presence)
        if t.kind == "optional":
            if value is None:
                return
            if wrapped is None:
                t = t.inner
        if wrapped is not None:
            wrapper = getattr(msg, name)
            wrapper.SetInParent()
            self._write_field(wrapper, "value", wrapped, False, value, loc)
        elif t.kind == "list":
            if not isinstance(value, list | tuple):
                raise _wrong(loc, "a list", value)
            container = getattr(msg, name)
            for index, item in enumerate(value):
                self._append(container, t.inner, item, (*loc, index))
        elif t.kind == "dict":
            if not isinstance(value, Mapping):
                raise _wrong(loc, "a dict", value)
            entries = getattr(msg, name)
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _wrong((*loc, repr(key)), "a str key", key)
                key = str(wire_text(key, f"a key of {format_loc(loc) or 'the value'}"))
                self._put(entries, key, t.inner, item, (*loc, key))
        elif t.kind in _MESSAGE_KINDS:
            sub = getattr(msg, name)
            sub.SetInParent()
            self._fill(sub, t, value, loc)
        else:
            setattr(msg, name, self._scalar(t, value, loc))

    def _append(self, container: Any, t: TypeRef, item: Any, loc: Loc) -> None:
        if element_wrapped(t):
            self._write_field(container.add(), "value", t, False, item, loc)
        elif t.kind in _MESSAGE_KINDS:
            self._fill(container.add(), t, item, loc)
        else:
            container.append(self._scalar(t, item, loc))

    def _put(self, entries: Any, key: str, t: TypeRef, item: Any, loc: Loc) -> None:
        if element_wrapped(t):
            self._write_field(entries[key], "value", t, False, item, loc)
        elif t.kind in _MESSAGE_KINDS:
            self._fill(entries[key], t, item, loc)
        else:
            entries[key] = self._scalar(t, item, loc)

    def _fill(self, sub: Message, t: TypeRef, value: Any, loc: Loc) -> None:
        kind = t.kind
        if kind == "datetime":
            if not isinstance(value, datetime.datetime):
                raise _wrong(loc, "a datetime", value)
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            delta = value - _EPOCH
            seconds = delta.days * 86400 + delta.seconds
            sub.seconds, sub.nanos = seconds, delta.microseconds * 1000  # type: ignore[attr-defined]
        elif kind == "model":
            model = self.ir.model(t.name)  # type: ignore[arg-type]
            cls = self._classes.get(t.name)  # type: ignore[arg-type]
            if cls is not None and not isinstance(value, cls):
                raise _wrong(loc, f"a {t.name}", value)
            for f in model.fields:
                item = (
                    value.get(f.name)
                    if isinstance(value, Mapping)
                    else getattr(value, f.name, None)
                )
                # A model's required field set to None past validation is
                # written, and so refused as any wrong value is, not left out
                # as if unset (a mapping without it is unset).
                if (
                    item is not None
                    or f.type.kind == "optional"
                    or (f.required and not isinstance(value, Mapping))
                ):
                    self._write_field(sub, f.name, f.type, f.presence, item, (*loc, f.name))
        elif kind == "tuple":
            items = self.ir.tuple(t.name).items  # type: ignore[arg-type]
            if not isinstance(value, tuple | list) or len(value) != len(items):
                raise _wrong(loc, f"a tuple of {len(items)}", value)
            for index, (item_type, item) in enumerate(zip(items, value, strict=True)):
                self._write_field(sub, f"item_{index}", item_type, False, item, (*loc, index))
        elif kind == "union":
            members = self.ir.union(t.name).members  # type: ignore[arg-type]
            member = next((m for m in members if self._matches(m.type, value)), None)
            if member is None:
                member = next(
                    (m for m in members if self._matches(m.type, value, loose=True)), None
                )
            if member is None:
                raise _wrong(loc, " or ".join(str(m.type) for m in members), value)
            if member_wrapped(member.type):
                wrapper = getattr(sub, member.field)
                wrapper.SetInParent()
                self._write_field(wrapper, "value", member.type, False, value, loc)
            else:
                self._write_field(sub, member.field, member.type, False, value, loc)
        else:
            raise AssertionError(t)

    def _matches(self, t: TypeRef, value: Any, *, loose: bool = False) -> bool:
        """Whether `value` is a value of the union member `t` (loose: int for float)."""
        kind = t.kind
        if kind == "int":
            return isinstance(value, int) and not isinstance(value, bool | enum.Enum)
        if kind == "float":
            return isinstance(value, float) or (loose and isinstance(value, int))
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "str":
            return isinstance(value, str) and not isinstance(value, enum.Enum)
        if kind == "bytes":
            return isinstance(value, bytes | bytearray)
        if kind == "datetime":
            return isinstance(value, datetime.datetime)
        if kind == "date":
            return isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)
        if kind == "enum":
            # A plain value is a member of an Enum class's type only loosely:
            # an exact member of the union (1 for `Priority | int`) wins.
            if (
                not loose
                and not isinstance(value, enum.Enum)
                and self.ir.enum(t.name).python is not None  # type: ignore[arg-type]
            ):
                return False
            return self._enum_write[t.name](value) is not None  # type: ignore[index]
        if kind == "model":
            cls = self._classes.get(t.name)  # type: ignore[arg-type]
            if cls is not None:
                return isinstance(value, cls)
            return isinstance(value, Mapping | pydantic.BaseModel)
        if kind == "tuple":
            return isinstance(value, tuple) and len(value) == len(self.ir.tuple(t.name).items)  # type: ignore[arg-type]
        if kind == "list":
            return isinstance(value, list | tuple)
        if kind == "dict":
            return isinstance(value, Mapping) and not isinstance(value, pydantic.BaseModel)
        return False

    def _scalar(self, t: TypeRef, value: Any, loc: Loc) -> Any:
        kind = t.kind
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong(loc, "an int", value)
            if not INT64_MIN <= value <= INT64_MAX:
                raise OverflowError(
                    f"{format_loc(loc) or 'the value'}: {value} does not fit in int64 "
                    "(a bridge never narrows an int)"
                )
            return int(value)
        if kind == "float":
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _wrong(loc, "a float", value)
            if not math.isfinite(value):
                # The BEAM's floats have no NaN nor infinities.
                raise _errors.unrepresentable(
                    f"{format_loc(loc) or 'the value'} is {value}, which the BEAM has no float for"
                )
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise _wrong(loc, "a bool", value)
            return value
        if kind == "str":
            if not isinstance(value, str):
                raise _wrong(loc, "a str", value)
            return str(wire_text(value, format_loc(loc) or "the value"))
        if kind == "bytes":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise _wrong(loc, "bytes", value)
            return bytes(value)
        if kind == "date":
            if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
                raise _wrong(loc, "a date", value)
            return value.isoformat()
        if kind == "enum":
            number = self._enum_write[t.name](value)  # type: ignore[index]
            if number is None:
                raise _wrong(loc, f"a value of {t.name}", value)
            return number
        if kind == "custom":
            assert t.name is not None
            cls = self._classes.get(t.name)
            if cls is not None:
                if not isinstance(value, cls):
                    raise _wrong(loc, f"a {cls.__qualname__}", value)
                value = self._custom_write[t.name](value)
            return self._scalar(self.ir.custom(t.name).of, value, loc)
        raise AssertionError(t)

    @staticmethod
    def _enum_tables(
        enum_type: EnumType, cls: type | None
    ) -> tuple[dict[int, Any], Callable[[Any], int | None]]:
        if enum_type.python is not None and cls is not None:
            members = {value.member: value.number for value in enum_type.values}
            read = {value.number: cls[value.member] for value in enum_type.values}  # type: ignore[index]
            # A member's plain value (a model with `use_enum_values` holds
            # those) is taken when of the very type of the member's value:
            # not True nor 1.0 for an IntEnum's 1.
            plain = {(type(value.python), value.python): value.number for value in enum_type.values}

            def write_member(value: Any) -> int | None:
                if isinstance(value, cls):
                    return members.get(value.name)
                if isinstance(value, enum.Enum):
                    return None
                return plain.get((type(value), value))

            return read, write_member
        by_value = {(type(value.python), value.python): value.number for value in enum_type.values}
        read = {value.number: value.python for value in enum_type.values}

        def write_value(value: Any) -> int | None:
            if isinstance(value, enum.Enum):
                value = value.value
            return by_value.get((type(value), value))

        return read, write_value


def _wrong(loc: Loc, expected: str, value: Any) -> TypeError:
    return TypeError(
        f"{format_loc(loc) or 'the value'} must be {expected}, "
        f"got {type(value).__name__}: {value!r:.80}"
    )
