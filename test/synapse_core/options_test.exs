defmodule SynapseCore.OptionsTest do
  # Every option is declared once (type, range, default, doc): these check
  # that the declaration refuses what the layers below cannot take, before
  # anything starts, and that it is what the docs show.
  use ExUnit.Case, async: true

  alias SynapseCore.{Agent, Bridge, Options, Tool}
  alias SynapseCore.Agent.Options, as: AgentOptions

  @too_long Options.max_ms() + 1

  defp agent_opts(extra), do: Keyword.merge([name: :options_test, model: "test"], extra)

  describe "start options" do
    for {key, bad} <- [
          workers: 10_000_000,
          workers: -1,
          workers: 1.0,
          startup_timeout: @too_long,
          startup_timeout: 0,
          shutdown_timeout: -1,
          shutdown_timeout: @too_long,
          health_interval: 0,
          health_interval: @too_long,
          health_timeout: @too_long,
          max_backoff: 0,
          busy_wait_us: -1,
          busy_wait_us: 10_001,
          busy_wait_us: 1.5,
          max_message_bytes: Integer.pow(2, 64),
          # grpcio takes it as a C int: a start with it could never succeed.
          max_message_bytes: 2_147_483_648,
          max_message_bytes: 0,
          python: "a\0b",
          python: ~c"python3",
          cwd: "",
          python_path: ["ok", "bad\0path"],
          env: [{"A", "b\0c"}],
          env: [{"A=B", "c"}],
          env: [:atom],
          model: "",
          agent: "no colon",
          tools: [:not_a_tool_module],
          tools: [SynapseCore.TestTools | :oops],
          env: ["A" | "B"],
          capabilities: [{"Thinking", [{:effort, "low"} | :oops]}],
          capabilities: [%{"MCP" => %{"headers" => ["a" | "b"]}}],
          # What has no JSON form, refused before a worker is started for
          # it (which could only fail to build the agent).
          capabilities: [{"WebSearch", %{"user_location" => {"city", "Paris"}}}],
          metadata: %{"team" => {:support, 1}},
          metadata: %{"team" => <<255>>},
          output_schema: %{"type" => "object", "required" => ["a" | "b"]},
          model_settings: [temperature: {0.2}]
        ] do
      test "#{key}: #{inspect(bad)} is refused, naming the option" do
        error =
          assert_raise ArgumentError, fn ->
            SynapseCore.start_agent(agent_opts([{unquote(key), unquote(Macro.escape(bad))}]))
          end

        assert Exception.message(error) =~ inspect(unquote(key))
      end
    end

    test "the largest accepted values are accepted" do
      options =
        AgentOptions.agent!(
          agent_opts(
            workers: 256,
            startup_timeout: Options.max_ms(),
            shutdown_timeout: 0,
            health_interval: :infinity,
            max_message_bytes: 2_147_483_647,
            busy_wait_us: 10_000
          )
        )

      assert options.workers == 256
      assert options.startup_timeout == Options.max_ms()
      assert options.health_interval == :infinity
      assert options.busy_wait_us == 10_000
    end

    test "defaults come from the declaration" do
      options = AgentOptions.agent!(agent_opts([]))

      for {key, spec} <- AgentOptions.agent_schema(),
          Keyword.has_key?(spec, :default),
          key != :tools do
        assert Map.fetch!(options, key) == spec[:default], "default of #{inspect(key)}"
      end
    end

    test "an unknown option is named, and no value is shown" do
      error =
        assert_raise ArgumentError, fn ->
          AgentOptions.agent!(agent_opts(bogus: "value-not-shown", other: 1))
        end

      assert Exception.message(error) =~ ":bogus, :other"
      refute Exception.message(error) =~ "value-not-shown"
    end

    test "a bridge needs its module" do
      assert_raise ArgumentError, ~r/:module option is required/, fn ->
        Bridge.child_spec(name: :b)
      end

      assert_raise ArgumentError, ~r/:module/, fn ->
        Bridge.child_spec(name: :b, module: "a-b")
      end
    end
  end

  describe "run options" do
    for {key, bad} <- [
          timeout: @too_long,
          timeout: 0,
          timeout: "1000",
          model_settings: [1, 2],
          usage_limits: "none",
          message_history: "none",
          message_history: [%{"kind" => "request"} | :oops],
          tools: :none,
          tools: [SynapseCore.TestTools | :oops],
          trace_context: [{"tracestate", "a=b"} | :oops]
        ] do
      test "#{key}: #{inspect(bad)} is refused before anything runs" do
        assert_raise ArgumentError, ~r/#{inspect(unquote(key))}/, fn ->
          Agent.run_sync(:no_such_agent, "hi", [{unquote(key), unquote(Macro.escape(bad))}])
        end
      end
    end

    for {key, bad} <- [
          window: 0,
          window: Options.max_int32() + 1,
          stream_to: :name,
          events: [:text_delta | :oops],
          events: [:text_delta, :tool_call | :result]
        ] do
      test "stream #{key}: #{inspect(bad)} is refused" do
        assert_raise ArgumentError, ~r/#{inspect(unquote(key))}/, fn ->
          Agent.run_stream(:no_such_agent, "hi", [{unquote(key), unquote(Macro.escape(bad))}])
        end
      end
    end

    test "stream_to: an improper list of pids is refused" do
      assert_raise ArgumentError, ~r/:stream_to/, fn ->
        Agent.run_stream(:no_such_agent, "hi", stream_to: [self() | self()])
      end
    end

    test "bridge calls check their timeout and window" do
      assert_raise ArgumentError, ~r/:timeout/, fn ->
        Bridge.call(:no_such_bridge, {"", ""}, "p.S/M", %{}, timeout: @too_long)
      end

      assert_raise ArgumentError, ~r/:window/, fn ->
        Bridge.stream(:no_such_bridge, {"", ""}, "p.S/M", %{}, window: 0) |> Enum.take(1)
      end
    end
  end

  describe "tool options" do
    for {key, bad} <- [
          max_retries: Options.max_int32() + 1,
          max_retries: -1,
          timeout: @too_long,
          timeout: 0,
          name: "has space",
          description: 5,
          parameters: %{"type" => "array"},
          parameters: [a: [{:type, :integer} | :oops]],
          parameters: [a: {:enum, ["x" | "y"]}],
          # Sent as JSON with every run: refused here, not at each run.
          parameters: %{"type" => "object", "properties" => %{"a" => {:integer}}},
          parameters: %{"type" => "object", "required" => ["a" | "b"]},
          parameters: [a: [type: :string, description: <<255>>]]
        ] do
      test "#{key}: #{inspect(bad)} is refused" do
        assert_raise ArgumentError, ~r/#{inspect(unquote(key))}/, fn ->
          Tool.new(
            Keyword.merge([name: "t", function: fn _ -> :ok end], [
              {unquote(key), unquote(Macro.escape(bad))}
            ])
          )
        end
      end
    end
  end

  describe "what the options are given as" do
    @secret "sk-live-0123456789abcdef"

    for {what, given} <- [
          {"a map", quote(do: %{name: :x, remote: ["tcp://h:1"], token: @secret})},
          {"a list with a stray element", quote(do: [{:name, :x}, {:token, @secret}, :oops])},
          {"an env entry written NAME=value",
           quote(do: [name: :x, model: "test", env: ["OPENAI_API_KEY=" <> @secret]])},
          {"an env entry as a [name, value] list",
           quote(do: [name: :x, model: "test", env: [["OPENAI_API_KEY", @secret]]])}
        ] do
      test "#{what} is refused without showing its values" do
        error = assert_raise ArgumentError, fn -> Agent.child_spec(unquote(given)) end
        refute Exception.message(error) =~ @secret
      end
    end

    test "improper lists are refused with an ArgumentError" do
      assert_raise ArgumentError, ~r/keyword list/, fn ->
        AgentOptions.call!([{:timeout, 1_000} | :junk])
      end

      assert_raise ArgumentError, ~r/python_path/, fn ->
        Agent.child_spec(name: :x, model: "test", python_path: ["a" | "b"])
      end
    end

    test "an improper :env list is refused without showing its entries" do
      error =
        assert_raise ArgumentError, ~r/:env option: .*improper list/, fn ->
          Agent.child_spec(name: :x, model: "test", env: [{"KEY", @secret} | "B"])
        end

      refute Exception.message(error) =~ @secret
    end

    test "an option given twice is refused as given twice" do
      assert_raise ArgumentError, "the :timeout option is given more than once", fn ->
        AgentOptions.call!(timeout: 1_000, timeout: -5)
      end
    end

    test "a %Tool{} built by hand gets the checks of Tool.new/1" do
      tool = %Tool{
        name: "not a valid name!",
        parameters: %{"type" => "object"},
        function: fn _ -> :ok end,
        timeout: -1,
        max_retries: Integer.pow(2, 40)
      }

      assert_raise ArgumentError, fn -> AgentOptions.call!(tools: [tool]) end

      assert %{tools: [_]} =
               AgentOptions.call!(tools: [%{tool | name: "ok", timeout: 1_000, max_retries: 1}])
    end
  end

  test "every default that is a value is what its option's cast makes of it" do
    # The docs show the declared default: it is the value the option holds
    # (a default is cast as a given value is, so one that does not cast
    # would fail every call that leaves the option out).
    for {set, schema} <- [
          agent: AgentOptions.agent_schema(),
          bridge: AgentOptions.bridge_schema(),
          run: AgentOptions.call_schema(),
          stream: AgentOptions.stream_schema(),
          bridge_call: AgentOptions.bridge_call_schema(),
          bridge_stream: AgentOptions.bridge_stream_schema()
        ],
        {key, spec} <- schema,
        default = Keyword.get(spec, :default),
        default != nil do
      assert Options.cast(spec[:type], default) == {:ok, default},
             "the #{set} option #{inspect(key)}: #{inspect(default)} is not in its cast form"
    end
  end

  describe "the docs are the declaration" do
    defp doc(module, function, arity) do
      {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(module)

      Enum.find_value(docs, fn
        {{:function, ^function, ^arity}, _, _, %{"en" => text}, _} -> text
        _ -> nil
      end)
    end

    test "every option of every set is documented where it is taken" do
      for {module, function, arity, schema} <- [
            {Agent, :start_link, 1, AgentOptions.agent_schema()},
            {Agent, :run_sync, 3, AgentOptions.call_schema()},
            {Agent, :run_stream, 3, AgentOptions.stream_schema()},
            {Tool, :new, 1, []}
          ],
          {key, _spec} <- schema do
        assert doc(module, function, arity) =~ "`#{inspect(key)}`",
               "#{inspect(key)} is not in the docs of #{inspect(module)}.#{function}/#{arity}"
      end

      for key <- Tool.option_keys() do
        assert doc(Tool, :new, 1) =~ "`#{inspect(key)}`"
      end

      for key <- AgentOptions.worker_keys() do
        assert doc(Bridge, :start_link, 1) =~ "`#{inspect(key)}`"
      end
    end

    test "the docs give ranges and defaults" do
      text = doc(Agent, :start_link, 1)
      assert text =~ "`:workers` - "
      assert text =~ "from 0 to 256"
      assert text =~ "Defaults to `30_000`"
    end
  end
end
