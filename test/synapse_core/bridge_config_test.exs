defmodule SynapseCore.BridgeConfigTest do
  # A bridge's configuration file (test/support/bridge/custom.json): the
  # functions exported and renamed, the client module and service names,
  # custom types (Decimal through SynapseCore.TestDecimal, UUID as a
  # string), generated and called against a real worker; and the errors a
  # bad file gets, each naming the key.
  #
  # Not async: the client is compiled with its docs (the test reads them),
  # and while `mix test` is still loading test files, which async modules do
  # not wait for, the compiler's :docs option is off.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias Mix.Tasks.Synapse.Gen.Bridge, as: GenBridge
  alias SynapseCore.Bridge.{Config, Generator}
  alias SynapseCore.{Bridge, Error, TestDecimal}

  @moduletag capture_log: true

  @config Path.expand("../support/bridge/custom.json", __DIR__)
  @client SynapseFixtures.Shop

  setup_all do
    dir = tmp_dir("synapse-bridge-config")

    ebin = Path.join(dir, "ebin")
    File.mkdir_p!(ebin)

    opts = [
      config: @config,
      python_path: fixtures_path(),
      lib: Path.join(dir, "lib"),
      out: Path.join(dir, "priv")
    ]

    {:ok, files} = GenBridge.generate(nil, opts)
    [source] = Enum.filter(files, &String.ends_with?(&1, ".ex"))
    # Compiled to a directory, so that its docs and specs can be read.
    {:ok, _modules, []} = Kernel.ParallelCompiler.compile_to_path([source], ebin)
    Code.prepend_path(ebin)

    name = :"shop_#{System.unique_integer([:positive])}"

    {:ok, bridge} =
      Bridge.start_link(
        name: name,
        module: "synapse_fixtures.bridge_custom",
        python_path: [Path.join(dir, "priv"), fixtures_path()]
      )

    Process.unlink(bridge)

    # The same bridge over gRPC: on the lane, calls of a function on the
    # loop are answered at once, without a task.
    grpc = :"shop_grpc_#{System.unique_integer([:positive])}"

    {:ok, grpc_bridge} =
      Bridge.start_link(
        name: grpc,
        module: "synapse_fixtures.bridge_custom",
        python_path: [Path.join(dir, "priv"), fixtures_path()],
        transport: :grpc
      )

    Process.unlink(grpc_bridge)

    on_exit(fn ->
      stop_unlinked(bridge)
      stop_unlinked(grpc_bridge)
      File.rm_rf!(dir)
    end)

    %{name: name, grpc: grpc, source: source, dir: dir, opts: opts}
  end

  defp shop(function, args), do: apply(@client, function, args)

  test "the config names the module, the functions and their Elixir names", %{source: source} do
    assert Path.basename(source) == "shop.ex"
    assert function_exported?(@client, :sum_prices, 3)
    assert function_exported?(@client, :sum_prices!, 3)
    refute function_exported?(@client, :total, 3)
    refute function_exported?(@client, :not_exported, 3)
    assert shop(:__bridge__, []).service == "synapse.bridge.synapse_fixtures_bridge_custom.Shop"
    assert File.read!(source) =~ "mix synapse.gen.bridge --config #{@config}"
  end

  test "a custom type with an Elixir conversion: Decimal both ways, exactly", %{name: name} do
    prices = [
      %{amount: TestDecimal.new("1.10")},
      %{amount: TestDecimal.new("2.05"), currency: "USD"}
    ]

    assert {:ok, %TestDecimal{coef: 300, places: 2}} =
             shop(:sum_prices, [name, prices, [discount: TestDecimal.new("0.15")]])

    assert shop(:sum_prices!, [name, [%{amount: TestDecimal.new("-0.5")}]]) ==
             TestDecimal.new("-0.5")
  end

  test "a custom type without one is its scalar: UUIDs as strings", %{name: name} do
    assert shop(:order_id, [name, 42]) == {:ok, "00000000-0000-0000-0000-00000000002a"}

    upper = "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"

    assert shop(:echo_id, [name, upper, [others: ["00000000-0000-0000-0000-000000000001"]]]) ==
             {:ok, [String.downcase(upper), "00000000-0000-0000-0000-000000000001"]}

    assert {:error, %Error{kind: :invalid_argument, details: %{errors: [%{"loc" => ["id"]}]}}} =
             shop(:echo_id, [name, "not a uuid"])
  end

  test "what the conversion function raises is an error of the call, naming it", %{name: name} do
    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             shop(:sum_prices, [name, [%{amount: 1.5}]])

    assert message == "SynapseCore.TestDecimal.to_wire/1 raised ArgumentError: not a decimal: 1.5"

    assert_raise Error, ~r/TestDecimal.to_wire/, fn ->
      shop(:sum_prices!, [name, [%{amount: 1.5}]])
    end
  end

  test "what the conversion function raises on a result is an error of the call", %{name: name} do
    assert shop(:scale, [name, TestDecimal.new("1.5"), 1]) == {:ok, TestDecimal.new("15")}

    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             shop(:scale, [name, TestDecimal.new("1"), 2])

    assert message ==
             ~s(SynapseCore.TestDecimal.from_wire/1 raised ArgumentError: not a decimal: "1E+2")
  end

  test "a function the config has on the loop runs on the worker's event loop", %{name: name} do
    assert shop(:on_the_loop, [name]) == {:ok, "MainThread"}
    assert {:ok, thread} = shop(:in_a_thread, [name])
    assert thread != "MainThread"

    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(@client)

    {_, _, _, %{"en" => doc}, _} =
      Enum.find(docs, &match?({{:function, :on_the_loop, 2}, _, _, _, _}, &1))

    assert doc =~
             "called on the worker's event loop: while it runs, the worker serves nothing else."
  end

  test "a sync function, on the loop or in a thread, answers on the lane as over gRPC, failures included",
       %{name: name, grpc: grpc} do
    calls = [
      on_the_loop_checked: [3],
      on_the_loop_checked: [0],
      on_the_loop_checked: [-1],
      on_the_loop_checked: [2, [fail: "value"]],
      on_the_loop_checked: [2, [fail: "model"]],
      on_the_loop_checked: [2, [fail: "model"]],
      on_the_loop_later: [7],
      on_the_loop_later: [7, [fail: true]],
      on_the_loop: [],
      in_a_thread: [],
      in_a_thread_checked: [3],
      in_a_thread_checked: [-1],
      in_a_thread_checked: [2, [fail: "value"]],
      in_a_thread_checked: [2, [fail: "model"]],
      in_a_thread_later: [7],
      in_a_thread_later: [7, [fail: true]]
    ]

    for {function, args} <- calls do
      on_lane = shop(function, [name | args])
      on_grpc = shop(function, [grpc | args])

      # `in_a_thread` names the thread it ran in: see below.
      if function != :in_a_thread do
        assert user_part(on_lane) == user_part(on_grpc), "#{function} #{inspect(args)}"
      end

      case {function, args} do
        {checked, [3]} when checked in [:on_the_loop_checked, :in_a_thread_checked] ->
          assert on_lane == {:ok, [0, 1, 2]}

        {checked, [-1]} when checked in [:on_the_loop_checked, :in_a_thread_checked] ->
          assert {:error, %Error{kind: :invalid_argument, details: %{errors: [error]}}} = on_lane
          assert error["loc"] == ["count"]

        {checked, [2, [fail: "value"]]}
        when checked in [:on_the_loop_checked, :in_a_thread_checked] ->
          assert {:error, %Error{kind: :python_error, message: message}} = on_lane
          assert message =~ "ValueError: no counting today"

        {checked, [2, [fail: "model"]]}
        when checked in [:on_the_loop_checked, :in_a_thread_checked] ->
          assert {:error, %Error{kind: :invalid_argument, details: %{errors: [error]}}} = on_lane
          assert error["loc"] == ["amount"]

        {later, [7]} when later in [:on_the_loop_later, :in_a_thread_later] ->
          assert on_lane == {:ok, "7 after waiting in MainThread"}

        {later, [7, [fail: true]]} when later in [:on_the_loop_later, :in_a_thread_later] ->
          assert {:error, %Error{kind: :python_error, message: message}} = on_lane
          assert message =~ "ValueError: 7 was too late"

        {:in_a_thread, []} ->
          # On the lane, the thread that read the call runs it (the lane's
          # own: see the `threads` of LaneHello); over gRPC, the pool's.
          assert {:ok, "synapse-lane-sync"} = on_lane
          assert {:ok, "synapse-sync"} = on_grpc

        _ ->
          assert {:ok, _} = on_lane
      end
    end
  end

  test "sync calls in threads and on the loop, made at once on the lane, each get their own answer",
       %{name: name} do
    # A sync function's calls that are not on the loop take a connection of
    # their own, whose hello asks the worker's threads to answer them; the
    # others keep the loop's. Made all at once, each must come back with
    # its own answer, from where it ran.
    calls =
      for n <- 1..10,
          {function, args, expected} <- [
            {:in_a_thread, [], {:ok, "synapse-lane-sync"}},
            {:in_a_thread_checked, [n], {:ok, Enum.to_list(0..(n - 1))}},
            {:in_a_thread_later, [n], {:ok, "#{n} after waiting in MainThread"}},
            {:on_the_loop, [], {:ok, "MainThread"}},
            {:on_the_loop_checked, [n], {:ok, Enum.to_list(0..(n - 1))}},
            {:on_the_loop_later, [n], {:ok, "#{n} after waiting in MainThread"}}
          ] do
        {function, args, expected, Task.async(fn -> shop(function, [name | args]) end)}
      end

    for {function, args, expected, task} <- calls do
      assert Task.await(task, 30_000) == expected, "#{function} #{inspect(args)}"
    end

    # Both connections of unary calls are read by the worker's lane reader.
    [%{pid: worker}] = SynapseCore.Agent.workers(name)
    {_state, data} = :sys.get_state(worker)
    {:links, links} = Process.info(data.channel.reader, :links)
    assert [_, _] = Enum.filter(links, &is_port/1)
  end

  # A Python traceback's frames from the user's code on: the frames of
  # Synapse's own that call the function differ between the two paths.
  defp user_part({:error, %Error{details: %{traceback: traceback} = details} = error}) do
    [_synapse, user] = String.split(traceback, ~r/(?=  File "[^"]*synapse_fixtures)/, parts: 2)
    {:error, %{error | details: %{details | traceback: user}}}
  end

  defp user_part(outcome), do: outcome

  test "docs and specs show the custom types" do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(@client)

    {_, _, _, %{"en" => doc}, _} =
      Enum.find(docs, &match?({{:function, :sum_prices, 3}, _, _, _, _}, &1))

    assert doc =~ "`:discount` (`SynapseCore.TestDecimal.t()`) - Defaults to `\"0\"`."
    assert doc =~ "Calls `synapse_fixtures.bridge_custom.total`"

    {:ok, specs} = Code.Typespec.fetch_specs(@client)
    {_, [spec]} = Enum.find(specs, &match?({{:sum_prices, 3}, _}, &1))

    assert Macro.to_string(Code.Typespec.spec_to_quoted(:sum_prices, spec)) =~
             "{:ok, SynapseCore.TestDecimal.t()}"
  end

  ## Errors, each naming the key

  defp parse(data), do: Config.parse(data, "bridge.json")

  test "the elixir section is checked, naming the key" do
    assert parse([]) ==
             {:error, "bridge config bridge.json: the file: expected an object, got a list"}

    assert parse(%{"elixir" => %{"modul" => "X"}}) ==
             {:error,
              "bridge config bridge.json: elixir.modul: unknown key (the keys are module, functions, types)"}

    assert parse(%{"elixir" => %{"module" => "my_app.shop"}}) ==
             {:error,
              ~s(bridge config bridge.json: elixir.module: "my_app.shop" is not an Elixir module name)}

    assert parse(%{"elixir" => %{"functions" => %{"total" => 1}}}) ==
             {:error,
              ~s|bridge config bridge.json: elixir.functions["total"]: expected the Elixir function's name (a string), got a number|}

    assert parse(%{
             "elixir" => %{"types" => %{"decimal.Decimal" => %{"encode" => "e", "decode" => "d"}}}
           }) ==
             {:error,
              ~s(bridge config bridge.json: elixir.types["decimal.Decimal"].module: missing: the Elixir module holding the conversion)}

    conversion = %{"module" => "M", "encode" => "Encode", "decode" => "d"}

    assert parse(%{"elixir" => %{"types" => %{"uuid.UUID" => conversion}}}) ==
             {:error,
              ~s(bridge config bridge.json: elixir.types["uuid.UUID"].encode: "Encode" is not an Elixir function name)}

    conversion = %{"module" => "M", "encode" => "e", "decode" => "d", "spec" => "M.t("}

    assert parse(%{"elixir" => %{"types" => %{"uuid.UUID" => conversion}}}) ==
             {:error,
              ~s(bridge config bridge.json: elixir.types["uuid.UUID"].spec: "M.t(" is not an Elixir typespec)}

    assert {:ok, %{module: "m", elixir: elixir}} =
             parse(%{
               "module" => "m",
               "elixir" => %{"types" => %{"uuid.UUID" => %{conversion | "spec" => "M.t()"}}}
             })

    assert elixir[:types] == %{
             "uuid:UUID" => %{module: "M", encode: "e", decode: "d", spec: "M.t()"}
           }
  end

  test "a file that cannot be read or is not JSON" do
    assert {:error,
            "cannot read the bridge config /nonexistent/b.json: no such file or directory"} =
             Config.read("/nonexistent/b.json")

    dir = tmp_dir("synapse-bridge-json")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    path = Path.join(dir, "bridge.json")
    File.write!(path, "{")
    assert {:error, "the bridge config " <> message} = Config.read(path)
    assert message =~ "is not valid JSON"
  end

  test "renames and type conversions must name what the bridge has", %{dir: dir} do
    {:ok, ir} =
      dir
      |> Path.join("priv/synapse_fixtures_bridge_custom.ir.json")
      |> File.read!()
      |> SynapseCore.JSON.decode()

    assert {:error, message} = Generator.render(ir, "", functions: %{"totl" => "sum"})

    assert message =~
             ~s(the bridge renames "totl", which synapse_fixtures.bridge_custom does not export)

    assert {:error, message} = Generator.render(ir, "", functions: %{"total" => "order_id"})
    assert message == "the functions order_id and total would both be order_id in Elixir"

    conversion = %{module: "M", encode: "e", decode: "d", spec: nil}
    assert {:error, message} = Generator.render(ir, "", types: %{"datetime:date" => conversion})
    assert message =~ ~s(elixir.types names "datetime:date", which is not a custom type)
  end

  test "the module and the Elixir module may not be given twice, differently", %{opts: opts} do
    assert {:error, message} = GenBridge.generate("my_module", opts)

    assert message =~
             ~s(the module is "my_module", but the bridge config #{@config} says "synapse_fixtures.bridge_custom")

    assert {:error, message} = GenBridge.generate(nil, [{:elixir_module, "Other"} | opts])
    assert message =~ "given both by --elixir-module and by the bridge config's elixir.module"
  end

  test "the Python side's errors name the key too", %{dir: dir, opts: opts} do
    path = Path.join(dir, "bad.json")

    File.write!(
      path,
      ~s({"module": "synapse_fixtures.bridge_custom", "types": {"decimal.Decimal": {"proto": "str"}}})
    )

    assert {:error, message} = GenBridge.generate(nil, Keyword.put(opts, :config, path))

    assert message =~
             ~s|bridge config #{path}: types["decimal.Decimal"].proto: expected one of string, bytes, int64, double, bool, got 'str'|
  end

  test "a conversion function that does not exist fails the client's compilation" do
    source = """
    defmodule SynapseCore.BridgeConfigTest.NoSuchConversion do
      use SynapseCore.Bridge.Client, python_module: "m", service: "p.S", descriptor: ""
      deftype(Decimal, python: "decimal:Decimal", proto: :string, elixir: {SynapseCore.TestDecimal, :to_wire, :parse})
    end
    """

    assert_raise ArgumentError,
                 "the custom type Decimal (Python decimal:Decimal) converts with SynapseCore.TestDecimal.parse/1, which is not defined",
                 fn -> Code.compile_string(source) end
  end
end
