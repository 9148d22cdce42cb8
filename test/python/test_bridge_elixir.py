"""The generated Elixir client: it compiles cleanly, is formatted, and its codec is right.

The codec check runs the generated client against a stand-in for
`SynapseCore.Bridge` (the NIF is not needed): for each call of the server
tests' cases, Python computes the request the client should send (the request
message as the NIF would present it, a wire map) and the response the real
server gives (a wire map too); the client, called with the arguments written as
Elixir data, must send that request and decode that response into the Elixir
form of what the Python function returns. Skipped without Elixir.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from pydantic import BaseModel

from bridge_support import EDGES, EDGES_STEM, EXAMPLES, FIXTURE, FIXTURE_STEM, BridgeClient
from synapse_fixtures import bridge_edges as be
from synapse_fixtures import bridge_types as bt
from synapse_python import Worker
from synapse_python._bridge._codec import Codec
from synapse_python._bridge._elixir_gen import _float, _string
from synapse_python._bridge._introspect import introspect_module
from synapse_python._bridge._ir import IR, TypeRef
from synapse_python.bridge import generate, write
from test_bridge_server import CASES, EDGE_CASES, direct

pytestmark = pytest.mark.skipif(
    shutil.which("elixirc") is None or shutil.which("elixir") is None,
    reason="Elixir is not installed",
)

STUB = r"""
defmodule SynapseCore.Error do
  defexception [:kind, :message, details: %{}]
  @type t :: %__MODULE__{}
end

defmodule SynapseCore.Bridge do
  # Stands in for the runtime: the "server" argument carries the reply.
  def call({:canned, reply}, descriptor, method, request, opts) do
    send(self(), {:request, descriptor, method, request, opts})
    reply
  end

  def stream({:canned, items}, descriptor, method, request, opts) do
    send(self(), {:request, descriptor, method, request, opts})
    items
  end
end

defmodule BridgeCheck do
  def check(index, call, expected) do
    result = call.()

    {request, method, opts} =
      receive do
        {:request, descriptor, method, request, opts} ->
          true = is_binary(descriptor) and byte_size(descriptor) > 0
          {request, method, opts}
      after
        0 -> {nil, nil, nil}
      end

    result = if is_struct(result, Stream), do: Enum.to_list(result), else: result

    IO.puts(
      "{" <>
        ~s("case":#{index},"method":#{enc(method)},"request":#{enc(request)},) <>
        ~s("opts":#{enc(opts)},"ok":#{result == expected},) <>
        ~s("got":#{enc(inspect(result))},"expected":#{enc(inspect(expected))}) <> "}"
    )
  end

  def enc(nil), do: "null"
  def enc(true), do: "true"
  def enc(false), do: "false"
  def enc(v) when is_atom(v), do: ~s({"atom":"#{Base.encode64(Atom.to_string(v))}"})
  def enc(v) when is_integer(v), do: ~s({"int":"#{v}"})
  def enc(v) when is_float(v), do: ~s({"float":#{Float.to_string(v)}})
  def enc(v) when is_binary(v), do: ~s({"bin":"#{Base.encode64(v)}"})
  def enc(v) when is_list(v), do: "[" <> Enum.map_join(v, ",", &enc/1) <> "]"
  def enc(v) when is_tuple(v), do: ~s({"tuple":) <> enc(Tuple.to_list(v)) <> "}"

  def enc(%{} = v) do
    entries = Enum.map_join(v, ",", fn {key, value} -> "[#{enc(key)},#{enc(value)}]" end)
    ~s({"map":[#{entries}]})
  end
end
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's and the example's clients, compiled (with the stand-in) into `ebin`."""
    out = tmp_path_factory.mktemp("elixir")
    write(out, generate(FIXTURE).files)
    write(out, generate(EDGES).files)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        write(out, generate("my_module").files)
    (out / "stub.ex").write_text(STUB)
    (out / "ebin").mkdir()
    result = subprocess.run(
        [
            "elixirc",
            "--warnings-as-errors",
            "-o",
            "ebin",
            "stub.ex",
            f"{FIXTURE_STEM}.ex",
            f"{EDGES_STEM}.ex",
            "my_module.ex",
        ],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout + result.stderr
    return out


def elixir(directory: Path, script: str) -> str:
    (directory / "script.exs").write_text(script)
    result = subprocess.run(
        ["elixir", "-pa", "ebin", "script.exs"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_clients_are_formatted(compiled: Path) -> None:
    output = elixir(
        compiled,
        f"""
        for file <- ["{FIXTURE_STEM}.ex", "{EDGES_STEM}.ex", "my_module.ex"] do
          source = File.read!(file)
          formatted = IO.iodata_to_binary([Code.format_string!(source), "\\n"])
          IO.puts("#{{file}}: #{{formatted == source}}")
        end
        """,
    )
    assert output.splitlines() == [
        f"{FIXTURE_STEM}.ex: true",
        f"{EDGES_STEM}.ex: true",
        "my_module.ex: true",
    ]


def test_the_example_client(compiled: Path) -> None:
    output = elixir(
        compiled,
        """
        reply = {:ok, %{"value" => "Hello, Alice! You are 30 years old."}}
        {:ok, greeting} = MyModule.process_data({:canned, reply}, %{name: "Alice", age: 30})
        receive do
          {:request, descriptor, method, request, opts} ->
            true = descriptor == MyModule.__bridge__().descriptor
            IO.inspect({greeting, method, request, opts}, width: :infinity)
        end
        struct = %MyModule.InputData{name: "Bo", age: 3}
        "Hi" = MyModule.process_data!({:canned, {:ok, %{"value" => "Hi"}}}, struct, timeout: 5)
        receive do
          {:request, _, _, request, opts} -> IO.inspect({request, opts})
        end
        error = SynapseCore.Error.exception(kind: :python_error, message: "boom")
        {:error, ^error} = MyModule.process_data({:canned, {:error, error}}, struct)
        try do
          MyModule.process_data!({:canned, {:error, error}}, struct)
        rescue
          raised in SynapseCore.Error -> IO.inspect(raised.message)
        end
        IO.inspect(Map.delete(MyModule.__bridge__(), :descriptor))
        """,
    )
    assert output.splitlines() == [
        '{"Hello, Alice! You are 30 years old.", "synapse.bridge.my_module.MyModule/ProcessData",'
        ' %{"data" => %{"age" => 30, "name" => "Alice"}}, []}',
        '{%{"data" => %{"age" => 3, "name" => "Bo"}}, [timeout: 5]}',
        '"boom"',
        '%{module: "my_module", service: "synapse.bridge.my_module.MyModule"}',
    ]


# ---- the codec, against the real server ----


def wire(message: Message) -> dict[str, Any]:
    """A message as the NIF gives it to Elixir (and takes it, absent keys aside)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            out[field.name] = None
            continue
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            out[field.name] = {key: _wire_value(value_field, v) for key, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_wire_value(field, v) for v in value]
        else:
            out[field.name] = _wire_value(field, value)
    return out


def _wire_value(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return wire(value)
    if field.type == field.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def literal(value: Any) -> str:
    """A wire value written as Elixir."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, bytes):
        return "<<" + ", ".join(str(b) for b in value) + ">>"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "%{" + ", ".join(f"{literal(k)} => {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


class ElixirValues:
    """Python values written as the Elixir values the client takes and returns."""

    def __init__(self, ir: IR, codec: Codec) -> None:
        self.ir = ir
        self.codec = codec

    def __call__(self, value: Any, t: TypeRef, *, as_map: bool = False) -> str:
        kind = t.kind
        if value is None or kind == "none":
            return "nil"
        if kind == "optional":
            return self(value, t.inner, as_map=as_map)
        if kind in ("int", "float", "bool", "str", "bytes"):
            return literal(float(value) if kind == "float" else value)
        if kind == "date":
            return f"~D[{value.isoformat()}]"
        if kind == "datetime":
            value = value.astimezone(dt.UTC)
            fraction = f".{value.microsecond:06d}" if value.microsecond else ""
            return f"~U[{value:%Y-%m-%d %H:%M:%S}{fraction}Z]"
        if kind == "list":
            return "[" + ", ".join(self(v, t.inner, as_map=as_map) for v in value) + "]"
        if kind == "dict":
            items = ", ".join(
                f"{_string(k)} => {self(v, t.inner, as_map=as_map)}" for k, v in value.items()
            )
            return "%{" + items + "}"
        assert t.name is not None
        if kind == "tuple":
            items = self.ir.tuple(t.name).items
            return (
                "{"
                + ", ".join(self(v, i, as_map=as_map) for v, i in zip(value, items, strict=True))
                + "}"
            )
        if kind == "union":
            for member in self.ir.union(t.name).members:
                if self.codec._matches(member.type, value):
                    return self(value, member.type, as_map=as_map)
            raise AssertionError((value, t))
        if kind == "enum":
            for enum_value in self.ir.enum(t.name).values:
                found = (
                    value.name == enum_value.member
                    if isinstance(value, enum.Enum)
                    else value == enum_value.python
                )
                if found:
                    v = enum_value.elixir
                    return f":{_string(v)}" if isinstance(v, str) else str(v)
            raise AssertionError((value, t))
        if kind == "model":
            assert isinstance(value, BaseModel)
            fields = ", ".join(
                f"{f.name}: {self(getattr(value, f.name), f.type, as_map=as_map)}"
                for f in self.ir.model(t.name).fields
            )
            module = f"{self.ir.elixir_module}.{t.name}"
            return f"%{{{fields}}}" if as_map else f"%{module}{{{fields}}}"
        raise AssertionError(t)


def normalized(value: Any) -> Any:
    """Without unset fields, empty lists and maps; UTF-8 binaries as str (as the NIF sees them)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {normalized(k): normalized(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def decoded(value: Any) -> Any:
    """What `BridgeCheck.enc/1` wrote."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, list):
        return [decoded(v) for v in value]
    ((tag, inner),) = value.items()
    if tag == "int":
        return int(inner)
    if tag == "float":
        return float(inner)
    if tag == "bin":
        return base64.b64decode(inner)
    if tag == "atom":
        return ("atom", base64.b64decode(inner).decode())
    if tag == "tuple":
        return tuple(decoded(inner))
    if tag == "map":
        return {decoded(k): decoded(v) for k, v in inner}
    raise AssertionError(value)


@pytest.fixture
async def served(bridge_dir: Path, tmp_path: Path) -> Any:
    worker = Worker()
    worker.load_bridge(FIXTURE)
    worker.load_bridge(EDGES)
    address = await worker.start(f"unix:{tmp_path / 'worker.sock'}")
    async with grpc.aio.insecure_channel(address) as channel:
        yield channel
    await worker.stop(grace=0)


async def test_the_client_encodes_and_decodes_like_the_server(
    compiled: Path, bridge_dir: Path, served: grpc.aio.Channel
) -> None:
    streams = [
        ("count_up", {"start": 1, "stop": 8, "step": 3}),
        ("people", {"names": ["Ann", "Bob"], "color": bt.Color.BLUE}),
    ]
    client = BridgeClient(served, bridge_dir, FIXTURE)
    await check_codec(compiled, client, bt, [*CASES, *streams])


async def test_awkward_names_and_deep_nesting(
    compiled: Path, bridge_dir: Path, served: grpc.aio.Channel
) -> None:
    client = BridgeClient(served, bridge_dir, EDGES)
    await check_codec(compiled, client, be, [*EDGE_CASES, ("statuses", {"count": 3})])


async def check_codec(
    compiled: Path, served: BridgeClient, module: Any, cases: list[tuple[str, dict[str, Any]]]
) -> None:
    introspection = introspect_module(module.__name__)
    ir = introspection.ir
    descriptor_set = (compiled / f"{ir.stem}.desc").read_bytes()
    values = ElixirValues(ir, Codec(ir, descriptor_set, introspection.classes))
    checks, expectations = [], []
    for index, (name, arguments) in enumerate(cases):
        function = served.function(name)
        request = served.codec.write_request(function, arguments)
        if function.kind == "stream":
            responses = [r async for r in served.raw_stream(name, **arguments)]
            reply = "[" + ", ".join(literal(wire(r)) for r in responses) + "]"
            result = [item async for item in getattr(module, name)(**arguments)]
            expected = "[" + ", ".join(values(item, function.returns) for item in result) + "]"
        else:
            response = await served.unary(name, **arguments)
            reply = f"{{:ok, {literal(wire(response))}}}"
            result = await direct(name, arguments, module)
            expected = f"{{:ok, {values(result, function.returns)}}}"
        as_map = index % 2 == 1  # models as structs, or as plain maps
        positional = [
            values(arguments[p.name], p.type, as_map=as_map) for p in function.params if p.required
        ]
        options = [
            f"{p.name}: {values(arguments[p.name], p.type, as_map=as_map)}"
            for p in function.params
            if not p.required and p.name in arguments
        ]
        call_args = ", ".join([f"{{:canned, {reply}}}", *positional, *options])
        call = f"{ir.elixir_module}.{name}({call_args})"
        checks.append(f"BridgeCheck.check({index}, fn -> {call} end, {expected})")
        expectations.append((function, normalized(wire(request))))

    output = elixir(compiled, "\n".join(checks) + "\n")
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == len(expectations)
    for line, (function, request) in zip(lines, expectations, strict=True):
        method = f"{ir.full_service}/{function.rpc}"
        assert decoded(line["method"]) == method.encode()
        assert decoded(line["opts"]) == []
        assert normalized(decoded(line["request"])) == request, function.name
        got, expected = decoded(line["got"]).decode(), decoded(line["expected"]).decode()
        assert line["ok"], f"{function.name}: got {got}, expected {expected}"
