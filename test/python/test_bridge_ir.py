"""Introspection: the IR of the fixture module, and the types the Bridge refuses."""

from __future__ import annotations

import json
import textwrap
import types
from typing import Any

import pytest

from bridge_support import FIXTURE
from synapse_python._bridge._introspect import introspect, introspect_module, select_functions
from synapse_python._bridge._ir import IR, NO_DEFAULT, TypeRef
from synapse_python.bridge import GenerationError


@pytest.fixture(scope="module")
def ir() -> IR:
    return introspect_module(FIXTURE).ir


def t(kind: str, of: TypeRef | None = None, name: str | None = None) -> TypeRef:
    return TypeRef(kind, of, name)


def module_from(source: str, name: str = "bridged") -> types.ModuleType:
    """A module made of `source` (functions defined in it, as in a real file)."""
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


def describe(source: str, *names: str, **options: Any) -> IR:
    module = module_from(source)
    return introspect(module, select_functions(module, names or None), **options).ir


def test_module_service_and_functions(ir: IR) -> None:
    assert (ir.module, ir.package, ir.service) == (
        FIXTURE,
        "synapse.bridge.synapse_fixtures_bridge_types",
        "BridgeTypes",
    )
    assert ir.doc is not None and ir.doc.startswith("Every type the Synapse Bridge supports")
    kinds = {f.name: f.kind for f in ir.functions}
    assert kinds["describe"] == "sync"
    assert kinds["add_days"] == "async"
    assert kinds["count_up"] == kinds["people"] == "stream"
    # Definition order; only functions defined in the module (not Field, asyncio, ...).
    assert [f.name for f in ir.functions][:3] == ["describe", "echo_person", "team_summary"]
    assert "Field" not in kinds and "asyncio" not in kinds


def test_function_params_defaults_and_returns(ir: IR) -> None:
    functions = {f.name: f for f in ir.functions}
    scalars = functions["scalars"]
    assert scalars.rpc == "Scalars" and scalars.request == "ScalarsRequest"
    assert [(p.name, p.type, p.required) for p in scalars.params] == [
        ("i", t("int"), True),
        ("f", t("float"), True),
        ("b", t("bool"), True),
        ("s", t("str"), True),
        ("raw", t("bytes"), True),
        ("maybe", t("optional", t("int")), False),
    ]
    assert scalars.params[-1].default is None
    assert scalars.returns == t("tuple", name="TupleOfInt64AndDoubleAndBoolAndStringAndBytes")

    days = functions["add_days"].params[1]
    assert (days.default, dict(days.constraints)) == (1, {"ge": -1000, "le": 1000})
    assert functions["nothing"].returns == t("none")
    assert functions["count_up"].returns == t("int")  # AsyncIterator[int]: the item type
    assert functions["people"].returns == t("model", name="Person")
    assert functions["choose"].returns == t("optional", t("union", name="StringOrInt64"))
    containers = {p.name: p for p in functions["containers"].params}
    assert containers["many"].type == t("list", t("int"))  # tuple[int, ...]
    assert containers["many"].default == []
    assert containers["fixed"].default == [0, "", False]


def test_models_fields_descriptions_constraints(ir: IR) -> None:
    person = ir.model("Person")
    assert person.python == f"{FIXTURE}:Person"
    assert person.doc == "A person, with a field of every kind."
    fields = {f.name: f for f in person.fields}
    assert fields["name"].description == "Full name."
    assert dict(fields["name"].constraints) == {"min_length": 1, "max_length": 50}
    assert dict(fields["age"].constraints) == {"ge": 0, "le": 150}
    assert fields["age"].required and fields["age"].default is NO_DEFAULT
    assert (fields["height"].default, fields["favourite"].default) == (1.75, "red")
    assert fields["tags"].default == [] and dict(fields["tags"].constraints) == {"max_length": 10}
    assert fields["friends"].type == t("list", t("model", name="Person"))  # recursive
    assert fields["matrix"].type == t("list", t("list", t("int")))
    assert fields["born"].type == t("optional", t("date"))
    assert fields["last_seen"].type == t("optional", t("datetime"))
    assert fields["ident"].type == t("union", name="Int64OrString")
    assert fields["location"].type == t("optional", t("tuple", name="TupleOfDoubleAndDouble"))
    postcode = {f.name: f for f in ir.model("Address").fields}["postcode"]
    assert dict(postcode.constraints) == {"pattern": "^[0-9]{5}$"}
    # Presence decides wrappers: a non-empty default needs one, an empty one not.
    assert not fields["tags"].presence and fields["groups"].presence


def test_enums_literals_unions_and_wrappers(ir: IR) -> None:
    color = ir.enum("Color")
    assert [(v.name, v.number, v.member, v.python) for v in color.values] == [
        ("COLOR_RED", 1, "RED", "red"),
        ("COLOR_GREEN", 2, "GREEN", "green"),
        ("COLOR_BLUE", 3, "BLUE", "blue"),
    ]
    priority = ir.enum("Priority")
    assert [(v.name, v.member, v.python) for v in priority.values] == [
        ("PRIORITY_LOW", "LOW", 1),
        ("PRIORITY_HIGH", "HIGH", 10),
    ]
    # Literals are named after where they are used.
    assert [(v.member, v.python) for v in ir.enum("PersonMode").values] == [
        (None, "fast"),
        (None, "slow"),
    ]
    first_level = ir.enum("PersonLevel").values[0]
    assert (first_level.name, first_level.python) == ("PERSON_LEVEL_1", 1)
    assert ir.enum("ChooseMode").python is None
    union = ir.union("Int64OrStringOrAddress")
    assert [(m.field, m.type) for m in union.members] == [
        ("int64_value", t("int")),
        ("string_value", t("str")),
        ("address_value", t("model", name="Address")),
    ]
    wrappers = {name: d.of for name, d in ir.types.items() if d.kind == "wrapper"}
    assert wrappers == {
        "ListOfInt64": t("list", t("int")),
        "ListOfString": t("list", t("str")),
        "MapOfListOfString": t("dict", t("list", t("str"))),
        "OptionalInt64": t("optional", t("int")),
    }


def test_ir_json_round_trip(ir: IR) -> None:
    data = ir.to_json()
    assert IR.from_json(json.loads(json.dumps(data))) == ir
    assert list(data["types"]) == sorted(data["types"])
    described = next(f for f in data["functions"] if f["name"] == "add_days")
    assert described["params"][1] == {
        "name": "days",
        "type": {"kind": "int"},
        "required": False,
        "default": 1,
        "description": None,
        "constraints": {"ge": -1000, "le": 1000},
    }


def test_function_selection() -> None:
    only = introspect_module(FIXTURE, ["people", "describe"]).ir
    assert [f.name for f in only.functions] == ["describe", "people"]  # module order
    assert set(only.types) == {"Address", "Color", "Person", "PersonMode", "PersonLevel",
                               "Priority", "Int64OrString", "TupleOfDoubleAndDouble",
                               "ListOfInt64", "ListOfString", "MapOfListOfString"}  # fmt: skip
    with pytest.raises(GenerationError, match="has no function named 'nope'"):
        introspect_module(FIXTURE, ["nope"])
    with pytest.raises(GenerationError, match="no function \\(it is a ModelMetaclass\\)"):
        introspect_module(FIXTURE, ["Person"])


def test_service_name() -> None:
    assert describe("def f(x: int) -> int: ...").service == "Bridged"
    assert describe("def f(x: int) -> int: ...", service="Greeter").service == "Greeter"
    assert introspect_module("synapse_fixtures.bridge_edges").ir.service == "BridgeEdges"
    with pytest.raises(GenerationError, match=r"invalid service name 'my\.service'"):
        describe("def f(x: int) -> int: ...", service="my.service")


def test_the_unsupported_fixture_names_function_parameter_and_type() -> None:
    with pytest.raises(GenerationError) as raised:
        introspect_module("synapse_fixtures.bridge_unsupported")
    assert str(raised.value) == (
        "synapse_fixtures.bridge_unsupported.count_distinct: parameter 'values' has "
        "unsupported type set[int]: sets have no protobuf form; use list[int]"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "from typing import Any\ndef f(x: Any) -> int: ...",
            "bridged.f: parameter 'x' has unsupported type Any: it has no protobuf form",
        ),
        ("def f(x: object) -> int: ...", "parameter 'x' has unsupported type object"),
        ("def f(x: list) -> int: ...", "parameter 'x' has unsupported type list: give the item"),
        ("def f(x: dict[int, str]) -> int: ...", "dict[int, str]: dict keys must be str"),
        (
            "from collections.abc import Callable\ndef f(x: Callable[[int], int]) -> int: ...",
            "callables cannot be sent",
        ),
        ("def f(x: tuple) -> int: ...", "give the item types"),
        ("def f(x: frozenset[str]) -> int: ...", "frozenset[str]: sets have no protobuf form"),
        ("def f(x: complex) -> int: ...", "unsupported type complex: not a supported type"),
        ("def f(x: int) -> set[int]: ...", "bridged.f: return type has unsupported type set[int]"),
        ("def f(x) -> int: ...", "bridged.f: parameter 'x': has no type annotation"),
        ("def f(x: int): ...", "bridged.f: return type: has no annotation"),
        ("def f(*xs: int) -> int: ...", "*args and **kwargs cannot be bridged"),
        ("def f(x: int) -> int:\n    yield x", "generator functions are not supported"),
        (
            "async def f(x: int) -> list[int]:\n    yield x",
            "an async generator must be annotated -> AsyncIterator[T]",
        ),
        ("def f(x: None) -> int: ...", "None alone is not a value type"),
        ("def f(x: str | bytes) -> int: ...", "members String and Bytes are both binaries"),
        ("def f(x: list[int] | list[str]) -> int: ...", "are both lists in Elixir"),
        (
            "from typing import Literal\ndef f(x: Literal[1, 'a']) -> int: ...",
            "a Literal's values must be all str or all int",
        ),
        ("from typing import Literal\ndef f(x: Literal[True]) -> int: ...", "all str or all int"),
        (
            "import enum\nclass F(enum.Flag):\n    A = 1\ndef f(x: F) -> int: ...",
            "unsupported type F: Flag enums are not supported",
        ),
        (
            "from pydantic import BaseModel\n"
            "class M(BaseModel):\n    tags: set[str]\n"
            "def f(data: M) -> int: ...",
            "bridged.f: parameter 'data' (in M.tags) has unsupported type set[str]",
        ),
        (
            "from pydantic import BaseModel\n"
            "class M(BaseModel):\n    x: int\n"
            "def f(a: M, b: list[int]) -> int: ...\n"
            "def g(m: dict[str, M]) -> int: ...\n"
            "def _make():\n"
            "    class M(BaseModel):\n        y: int\n"
            "    return M\n"
            "def h(m: _make()) -> int: ...",
            "type _make.<locals>.M: the class must be defined at a module's top level",
        ),
        (
            "from pydantic import BaseModel\n"
            "class ProcessRequest(BaseModel):\n    x: int\n"
            "def process(data: ProcessRequest) -> int: ...",
            "the model ProcessRequest clashes with a message of process",
        ),
        (
            "import enum\nclass E(enum.Enum):\n    A_B = 'x'\n    a_b = 'y'\n"
            "def f(x: E) -> int: ...",
            "the values 'x' and 'y' of E get one name (E_A_B); rename one",
        ),
        (
            "def timed(x: int, timeout: float = 1.0) -> int: ...",
            "an optional parameter cannot be named 'timeout'",
        ),
        (
            "from collections.abc import AsyncIterator\n"
            "async def ticks(n: int, window: int = 8) -> AsyncIterator[int]:\n    yield n",
            "bridged.ticks: parameter 'window': an optional parameter of an async generator "
            "cannot be named 'window'",
        ),
        (
            "import math\ndef f(limit: float = math.inf) -> int: ...",
            "bridged.f: parameter 'limit': its default inf has no JSON form",
        ),
        (
            "def f(sep: bytes = b'\\xff') -> int: ...",
            "bridged.f: parameter 'sep': its default b'\\xff' has no JSON form",
        ),
        (
            "from pydantic import BaseModel, Field\n"
            "class M(BaseModel):\n    x: float = Field(0.0, le=float('nan'))\n"
            "def f(m: M) -> int: ...",
            "bridged.f: parameter 'm' (in M.x): its constraint le nan has no JSON form",
        ),
    ],
)
def test_unsupported_types_are_generation_errors(source: str, message: str) -> None:
    with pytest.raises(GenerationError) as raised:
        describe(source)
    assert message in str(raised.value)


def test_names_protobuf_reads_as_one_are_an_error_naming_both() -> None:
    # protoc refuses two fields of a message whose JSON names (underscores
    # dropped, the letter after one capitalized) are the same.
    with pytest.raises(GenerationError) as raised:
        describe("def g(user_id: int, userId: int) -> int: ...")
    assert str(raised.value) == (
        "bridged.g: the parameters 'user_id' and 'userId' are one name to protobuf "
        "(its JSON name userId); rename one"
    )
    with pytest.raises(GenerationError) as raised:
        describe(
            "from pydantic import BaseModel\n"
            "class M(BaseModel):\n    x_1: int\n    x1: int\n"
            "def f(m: list[M]) -> int: ..."
        )
    assert str(raised.value) == (
        "bridged: the fields 'x_1' and 'x1' of the model M are one name to protobuf "
        "(its JSON name x1); rename one"
    )
    # Names that only differ in case stay apart.
    describe("def g(fooBar: int, FooBar: int, x_: int, X: int) -> int: ...")


def test_union_members_protobuf_reads_as_one_are_an_error_naming_both() -> None:
    # A union's members are fields named after their types: `A1` and `A_1`
    # are `a1_value` and `a_1_value` (one JSON name), `AB` and `Ab` both `ab_value`.
    for first, second, fields in [
        ("A1", "A_1", "the fields 'a1_value' and 'a_1_value', JSON name a1Value"),
        ("AB", "Ab", "both the field 'ab_value'"),
    ]:
        with pytest.raises(GenerationError) as raised:
            describe(
                "from pydantic import BaseModel\n"
                f"class {first}(BaseModel):\n    x: int\n"
                f"class {second}(BaseModel):\n    y: str\n"
                f"def f(v: {first} | {second}) -> int: ..."
            )
        assert str(raised.value) == (
            f"bridged: the members {first} and {second} of the union {first}Or{second} are "
            f"one name to protobuf ({fields}); rename one"
        )


def test_two_models_with_one_name_are_an_error() -> None:
    first = module_from("from pydantic import BaseModel\nclass Item(BaseModel):\n    x: int\n", "a")
    second = module_from(
        "from pydantic import BaseModel\nclass Item(BaseModel):\n    y: str\n", "b"
    )
    module = module_from("def f(a: A, b: B) -> int: ...", "c")
    module.A, module.B = first.Item, second.Item
    with pytest.raises(GenerationError, match=r"two types are named Item: a\.Item and b\.Item"):
        introspect(module, [("f", module.f)])


def test_literal_unions_merge_and_optional_literals() -> None:
    ir = describe(
        "from typing import Literal\n"
        "def f(x: Literal['a'] | Literal['b'] | None,\n"
        "      y: Literal['in progress', 'done']) -> int: ..."
    )
    params = {p.name: p for p in ir.functions[0].params}
    assert params["x"].type == t("optional", t("enum", name="FX"))
    assert [v.name for v in ir.enum("FX").values] == ["FX_A", "FX_B"]
    assert [(v.name, v.python) for v in ir.enum("FY").values] == [
        ("FY_IN_PROGRESS", "in progress"),
        ("FY_DONE", "done"),
    ]


def test_positional_only_keyword_only_and_annotated_parameters() -> None:
    ir = describe(
        "from typing import Annotated\n"
        "from pydantic import Field\n"
        "def f(a: int, /, b: Annotated[str, Field(min_length=2, description='B.')] = 'bb',"
        " *, c: int = Field(3, le=9)) -> int: ..."
    )
    a, b, c = ir.functions[0].params
    assert (a.required, b.required, c.required) == (True, False, False)
    assert (b.default, b.description, dict(b.constraints)) == ("bb", "B.", {"min_length": 2})
    assert (c.default, dict(c.constraints)) == (3, {"le": 9})
