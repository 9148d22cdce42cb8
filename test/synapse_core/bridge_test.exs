defmodule SynapseCore.BridgeTest do
  # The Bridge end to end: a client generated (by `mix synapse.gen.bridge`)
  # from a fixture module that uses every supported type, compiled here,
  # calling a real bridge worker through the NIF. Each result is compared
  # with what calling the Python function directly returns.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Bridge, Error}

  @moduletag capture_log: true

  @module "synapse_fixtures.bridge_types"
  @client SynapseFixtures.BridgeTypes
  @stem "synapse_fixtures_bridge_types"
  @cases Path.expand("../support/bridge/cases.json", __DIR__)

  setup_all do
    dir =
      Path.join(System.tmp_dir!(), "synapse-bridge-test-#{System.unique_integer([:positive])}")

    opts = [python_path: fixtures_path(), lib: Path.join(dir, "lib"), out: Path.join(dir, "priv")]
    {:ok, files} = Mix.Tasks.Synapse.Gen.Bridge.generate(@module, opts)
    [source] = Enum.filter(files, &String.ends_with?(&1, ".ex"))
    Code.compile_file(source)

    {:ok, ir} =
      dir |> Path.join("priv/#{@stem}.ir.json") |> File.read!() |> SynapseCore.JSON.decode()

    name = :"bridge_#{System.unique_integer([:positive])}"

    {:ok, bridge} =
      Bridge.start_link(
        name: name,
        module: @module,
        python_path: [Path.join(dir, "priv"), fixtures_path()]
      )

    Process.unlink(bridge)

    on_exit(fn ->
      Process.exit(bridge, :shutdown)
      File.rm_rf!(dir)
    end)

    %{name: name, ir: ir, dir: dir, opts: opts}
  end

  test "every function returns through the Elixir client what it returns in Python", %{
    name: name,
    ir: ir
  } do
    {:ok, cases} = @cases |> File.read!() |> SynapseCore.JSON.decode()
    expected = python_expectations()
    assert length(expected) == length(cases)

    for {%{"function" => function, "args" => args}, want} <- Enum.zip(cases, expected) do
      spec = Enum.find(ir["functions"], &(&1["name"] == function))
      got = call(name, ir, spec, args)

      assert got == want,
             "#{function}(#{inspect(args)}): got #{inspect(got)}, Python gives #{inspect(want)}"
    end
  end

  test "validation errors arrive as data with field paths", %{name: name} do
    person = %{name: "", age: 200, address: %{street: "x", city: "Lyon", postcode: "abc"}}

    assert {:error, %Error{kind: :invalid_argument, details: %{errors: errors}}} =
             @client.describe(name, person)

    paths = errors |> Enum.map(& &1["loc"]) |> Enum.sort()
    assert paths == [["person", "address", "postcode"], ["person", "age"], ["person", "name"]]
    assert Enum.all?(errors, &(is_binary(&1["msg"]) and is_binary(&1["type"])))
  end

  test "other exceptions keep their type and message; bang variants raise", %{name: name} do
    assert {:error,
            %Error{
              kind: :python_error,
              message: "ValueError: boom",
              details: %{type: "ValueError"}
            }} = @client.fail(name, "boom")

    assert_raise Error, ~r/boom/, fn -> @client.fail!(name, "boom") end
  end

  test "an int64 overflow in a result is an error, never a narrowed value", %{name: name} do
    assert {:error, %Error{message: message}} = @client.overflow(name)
    assert message =~ ~r/int64|range|overflow/i
  end

  test "data protobuf cannot carry is refused before it is sent", %{name: name} do
    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             @client.big_numbers(name, 2 ** 64)

    assert message =~ "64-bit integer"
  end

  test "a stream is lazy and can be halted early", %{name: name} do
    assert [0, 1, 2] = name |> @client.slow_stream(tag: "halted") |> Enum.take(3)
    assert [5, 6] = name |> @client.count_up(5, 7) |> Enum.to_list()
  end

  test "calls to an unknown bridge" do
    assert {:error, %Error{kind: :unknown_agent}} =
             @client.describe(:no_such_bridge, %{name: "x", age: 1})
  end

  test "the generated files are deterministic, and --check sees staleness", %{
    opts: opts,
    dir: dir
  } do
    assert {:ok, _} = Mix.Tasks.Synapse.Gen.Bridge.generate(@module, [{:check, true} | opts])

    proto = Path.join(dir, "priv/#{@stem}.proto")
    original = File.read!(proto)
    File.write!(proto, original <> "// edited\n")

    assert {:error, message} =
             Mix.Tasks.Synapse.Gen.Bridge.generate(@module, [{:check, true} | opts])

    assert message =~ "#{@stem}.proto (differs)"
    File.write!(proto, original)
  end

  test "an unsupported type is refused at generation time, naming function, parameter and type" do
    assert {:error, message} =
             Mix.Tasks.Synapse.Gen.Bridge.generate("synapse_fixtures.bridge_unsupported",
               python_path: fixtures_path(),
               lib: "/nonexistent",
               out: "/nonexistent"
             )

    assert message =~ "count_distinct"
    assert message =~ "'values'"
    assert message =~ "set[int]"
  end

  test "a bridge whose module does not import fails to start with Python's message" do
    Process.flag(:trap_exit, true)

    assert {:error, %Error{kind: :startup_failed, message: message}} =
             Bridge.start_link(
               name: :broken_bridge,
               module: "synapse_fixtures.no_such_module",
               python_path: [fixtures_path()]
             )

    assert message =~ "No module named"
  end

  test "the original example, examples/bridge/my_module.py" do
    dir =
      Path.join(System.tmp_dir!(), "synapse-bridge-example-#{System.unique_integer([:positive])}")

    on_exit(fn -> File.rm_rf!(dir) end)
    examples = Path.expand("../../examples/bridge", __DIR__)
    opts = [python_path: examples, lib: Path.join(dir, "lib"), out: Path.join(dir, "priv")]

    {:ok, files} = Mix.Tasks.Synapse.Gen.Bridge.generate("my_module", opts)
    files |> Enum.filter(&String.ends_with?(&1, ".ex")) |> Enum.each(&Code.compile_file/1)
    name = :"my_module_#{System.unique_integer([:positive])}"

    start_supervised!(
      {Bridge, name: name, module: "my_module", python_path: [Path.join(dir, "priv"), examples]}
    )

    assert {:ok, "Hello, Alice! You are 30 years old."} =
             apply(MyModule, :process_data, [name, %{name: "Alice", age: 30}])
  end

  ## The expectations, from Python

  defp python_expectations do
    {:ok, python} = SynapseCore.Python.interpreter()
    env = [{"PYTHONPATH", Enum.join([fixtures_path(), SynapseCore.Python.package_dir()], ":")}]
    {json, 0} = System.cmd(python, ["-m", "synapse_fixtures.bridge_expect", @cases], env: env)
    {:ok, expected} = SynapseCore.JSON.decode(json)
    expected
  end

  ## Calling the generated client with the case's arguments

  defp call(name, ir, spec, args) do
    {required, optional} = Enum.split_with(spec["params"], & &1["required"])

    positional =
      for param <- required, do: to_elixir(ir, param["type"], Map.fetch!(args, param["name"]))

    options =
      for param <- optional,
          Map.has_key?(args, param["name"]),
          do: {String.to_atom(param["name"]), to_elixir(ir, param["type"], args[param["name"]])}

    result = apply(@client, String.to_atom(spec["name"]), [name | positional] ++ [options])

    case spec["kind"] do
      "stream" ->
        Enum.map(result, &to_json(ir, spec["returns"], &1))

      _ ->
        {:ok, value} = result
        to_json(ir, spec["returns"], value)
    end
  end

  # The case's JSON form (what Pydantic validates) as the Elixir data the
  # generated client takes.
  defp to_elixir(_ir, _type, nil), do: nil
  defp to_elixir(_ir, %{"kind" => "bytes"}, %{"$bytes" => b64}), do: Base.decode64!(b64)
  defp to_elixir(_ir, %{"kind" => "date"}, iso), do: Date.from_iso8601!(iso)

  defp to_elixir(_ir, %{"kind" => "datetime"}, iso) do
    {:ok, moment, 0} = DateTime.from_iso8601(iso)
    moment
  end

  defp to_elixir(ir, %{"kind" => "optional", "of" => of}, value), do: to_elixir(ir, of, value)

  defp to_elixir(ir, %{"kind" => "list", "of" => of}, list),
    do: Enum.map(list, &to_elixir(ir, of, &1))

  defp to_elixir(ir, %{"kind" => "dict", "of" => of}, map),
    do: Map.new(map, fn {key, value} -> {key, to_elixir(ir, of, value)} end)

  defp to_elixir(ir, %{"kind" => kind, "name" => type_name}, value)
       when kind in ~w(model enum tuple union) do
    typedef(ir, type_name, value)
  end

  defp to_elixir(_ir, _scalar, value), do: value

  defp typedef(ir, type_name, value) do
    case ir["types"][type_name] do
      %{"kind" => "model", "fields" => fields} ->
        for field <- fields, Map.has_key?(value, field["name"]), into: %{} do
          {String.to_atom(field["name"]), to_elixir(ir, field["type"], value[field["name"]])}
        end

      %{"kind" => "enum", "values" => values} ->
        values |> Enum.find(&(&1["python"] == value)) |> Map.fetch!("elixir") |> enum_value()

      %{"kind" => "tuple", "items" => items} ->
        items
        |> Enum.zip(value)
        |> Enum.map(fn {type, item} -> to_elixir(ir, type, item) end)
        |> List.to_tuple()

      %{"kind" => "union", "members" => members} ->
        member = Enum.find(members, &fits?(ir, &1["type"], value))
        to_elixir(ir, member["type"], value)

      %{"kind" => "wrapper", "of" => of} ->
        to_elixir(ir, of, value)
    end
  end

  defp fits?(_ir, %{"kind" => "int"}, value), do: is_integer(value)
  defp fits?(_ir, %{"kind" => "str"}, value), do: is_binary(value)
  defp fits?(_ir, %{"kind" => "model"}, value), do: is_map(value)
  defp fits?(_ir, _type, _value), do: false

  defp enum_value(name) when is_binary(name), do: String.to_atom(name)
  defp enum_value(number), do: number

  # What the client returned, in the canonical JSON form of bridge_expect.py.
  defp to_json(_ir, _type, nil), do: nil
  defp to_json(_ir, %{"kind" => "bytes"}, binary), do: %{"$bytes" => Base.encode64(binary)}
  defp to_json(_ir, %{"kind" => "date"}, %Date{} = date), do: Date.to_iso8601(date)

  defp to_json(_ir, %{"kind" => "datetime"}, %DateTime{} = moment) do
    {microseconds, _} = moment.microsecond
    moment |> Map.put(:microsecond, {microseconds, 6}) |> DateTime.to_iso8601()
  end

  defp to_json(ir, %{"kind" => "optional", "of" => of}, value), do: to_json(ir, of, value)

  defp to_json(ir, %{"kind" => "list", "of" => of}, list),
    do: Enum.map(list, &to_json(ir, of, &1))

  defp to_json(ir, %{"kind" => "dict", "of" => of}, map),
    do: Map.new(map, fn {key, value} -> {key, to_json(ir, of, value)} end)

  defp to_json(ir, %{"kind" => kind, "name" => type_name}, value)
       when kind in ~w(model enum tuple union) do
    case ir["types"][type_name] do
      %{"kind" => "model", "fields" => fields} ->
        for field <- fields, into: %{} do
          {field["name"],
           to_json(ir, field["type"], Map.fetch!(value, String.to_atom(field["name"])))}
        end

      %{"kind" => "enum", "values" => values} ->
        Enum.find(values, &(enum_value(&1["elixir"]) == value))["python"]

      %{"kind" => "tuple", "items" => items} ->
        items
        |> Enum.zip(Tuple.to_list(value))
        |> Enum.map(fn {type, item} -> to_json(ir, type, item) end)

      %{"kind" => "union", "members" => members} ->
        member = Enum.find(members, &fits?(ir, &1["type"], value))
        to_json(ir, member["type"], value)
    end
  end

  defp to_json(_ir, _scalar, value), do: value
end
