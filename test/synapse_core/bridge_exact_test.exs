defmodule SynapseCore.BridgeExactTest do
  # Data crosses the Bridge exactly or is refused with a clear error: the
  # client generated for synapse_fixtures.bridge_exact, calling real bridge
  # workers (one per transport), with values a naive encoding would narrow,
  # drop or reinterpret.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias Mix.Tasks.Synapse.Gen.Bridge, as: GenBridge
  alias SynapseCore.{Bridge, Error}
  alias SynapseFixtures.BridgeExact, as: Exact

  @moduletag capture_log: true

  @module "synapse_fixtures.bridge_exact"

  setup_all do
    dir = tmp_dir("synapse-bridge-exact")
    opts = [python_path: fixtures_path(), lib: Path.join(dir, "lib"), out: Path.join(dir, "priv")]
    {:ok, files} = GenBridge.generate(@module, opts)
    [source] = Enum.filter(files, &String.ends_with?(&1, ".ex"))
    Code.compile_file(source)

    bridges =
      for transport <- SynapseCore.Transports.all(), into: %{} do
        name = :"bridge_exact_#{System.unique_integer([:positive])}"

        {:ok, pid} =
          Bridge.start_link(
            name: name,
            module: @module,
            python_path: [Path.join(dir, "priv"), fixtures_path()],
            transport: transport
          )

        Process.unlink(pid)
        {transport, {name, pid}}
      end

    on_exit(fn ->
      for {_transport, {_name, pid}} <- bridges, do: stop_unlinked(pid)
      File.rm_rf!(dir)
    end)

    %{bridges: bridges}
  end

  setup %{bridges: bridges, transport: transport} do
    {name, _pid} = bridges[transport]
    %{name: name}
  end

  defp exact(function, args), do: apply(Exact, function, args)

  test "an enum is given by its Elixir value: a number is refused, never taken as the value at that position",
       %{name: name} do
    assert exact(:priority, [name, :high]) == {:ok, "HIGH"}
    assert exact(:level, [name, 20]) == {:ok, 20}

    # 2 is not a Priority (LOW is 1, HIGH 10); 1 and 2 are not values of
    # Literal[10, 20, 30]; 0 is no value at all. Each was taken as the
    # protobuf value at that position (HIGH, 10, 20, None).
    for {function, args} <- [
          priority: [2],
          priority: [1],
          level: [1],
          level: [2],
          options: [[shade: 1]],
          options: [[shade: 0]]
        ] do
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               exact(function, [name | args]),
             "#{function}#{inspect(args)}"

      assert message =~ ~r/expected a value of (Priority|LevelValue|Shade), got an integer/
    end

    assert {:error, %Error{kind: :invalid_argument}} =
             exact(:options, [name, [shade: :SHADE_UNSPECIFIED]])
  end

  test "a T | None option or model field left out (or nil) takes its Python default, as in Python",
       %{name: name} do
    assert exact(:options, [name]) == {:ok, "(5, <Shade.LIGHT: 'light'>, ['x'], None)"}
    assert exact(:options, [name, [level: nil, tags: nil]]) == exact(:options, [name])

    assert exact(:options, [name, [level: 0, shade: :dark, tags: [], note: ""]]) ==
             {:ok, "(0, <Shade.DARK: 'dark'>, [], '')"}

    assert {:ok,
            %{
              __struct__: Exact.Settings,
              level: 5,
              shade: :light,
              tags: ["x"],
              note: nil,
              given: nil
            }} = exact(:settings, [name, %{}])

    assert {:ok, %{__struct__: Exact.Settings, level: 0, shade: :dark, tags: [], given: 3}} =
             exact(:settings, [name, %{level: 0, shade: :dark, tags: [], given: 3}])
  end

  test "a map whose atom and string keys name one key is refused, not merged", %{name: name} do
    assert exact(:table, [name, %{a: 1, b: 2}]) == {:ok, %{"a" => 1, "b" => 2}}

    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             exact(:table, [name, %{:a => 1, "a" => 2}])

    assert message =~ ~s(both :a and "a")
  end

  test "a model given as a map with keys that are not its fields is refused, not dropped",
       %{name: name} do
    # A string key (the model's fields are atoms), and a misspelt one: each
    # was dropped, and the field took its default.
    for {settings, key} <- [{%{"level" => 7}, ~s("level")}, {%{levl: 7}, ":levl"}] do
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               exact(:settings, [name, settings])

      assert message =~ "Settings has no field #{key}"
    end

    struct = struct(Exact.Settings, level: 7)
    assert {:ok, %{__struct__: Exact.Settings, level: 7}} = exact(:settings, [name, struct])
  end

  test "a result that is a plain value of a union's member arrives as that value, not as an enum",
       %{name: name} do
    assert exact(:priority_or_int, [name, 1, false]) == {:ok, 1}
    assert exact(:priority_or_int, [name, 1, true]) == {:ok, :low}
    assert exact(:shade_or_str, [name, "dark", false]) == {:ok, "dark"}
    assert exact(:shade_or_str, [name, "dark", true]) == {:ok, :dark}
  end

  test "an enum result of another type (a bool, a float equal to a member's value) is refused",
       %{name: name} do
    for what <- ["bool", "float"] do
      assert {:error, %Error{kind: :python_error, message: message}} =
               exact(:not_a_priority, [name, what])

      assert message =~ "result must be a value of Priority"
    end
  end

  test "a str holding a lone surrogate is :unrepresentable, naming where it is", %{name: name} do
    assert {:error, %Error{kind: :unrepresentable, message: message}} =
             exact(:lone_surrogate, [name, "value"])

    assert message =~ "result.k holds"

    assert {:error, %Error{kind: :unrepresentable, message: message}} =
             exact(:lone_surrogate, [name, "key"])

    assert message =~ "a key of result"
  end
end
