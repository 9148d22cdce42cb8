defmodule SynapseCore.TelemetryTest do
  # `:telemetry` events, against the in-repo stand-in of its API
  # (test/support/telemetry_stand_in.ex).
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Tool}

  @moduletag capture_log: true

  # Forwards every Synapse event about `agent` to the test process.
  defp attach(agent) do
    id = {__MODULE__, make_ref()}
    test = self()

    :ok =
      :telemetry.attach_many(
        id,
        SynapseCore.Telemetry.events(),
        fn event, measurements, metadata, _config ->
          if metadata[:agent] == agent, do: send(test, {:event, event, measurements, metadata})
        end,
        nil
      )

    on_exit(fn -> :telemetry.detach(id) end)
  end

  defp script(calls) do
    calls =
      Enum.map_join(calls, ",", fn {name, a} -> ~s({"name":"#{name}","args":{"a":#{a}}}) end)

    ~s({"calls":[#{calls}],"retry_calls":false})
  end

  test "a tool call's start and stop, and a failing one's exception with the retry prompt" do
    name = start_fixture_agent!("calling_agent")
    attach(name)

    good = Tool.new(name: "good", parameters: [a: :integer], function: fn %{a: a} -> a end)
    bad = Tool.new(name: "bad", parameters: [a: :integer], function: fn _ -> {:error, "no"} end)

    {:ok, _} = Agent.run_sync(name, script([{"good", 1}, {"bad", 2}]), tools: [good, bad])

    assert_receive {:event, [:synapse, :tool, :start], %{system_time: _},
                    %{tool: "good", telemetry_span_context: good_span}}

    assert_receive {:event, [:synapse, :tool, :stop], %{duration: duration},
                    %{tool: "good", telemetry_span_context: ^good_span}}

    assert is_integer(duration) and duration >= 0

    assert_receive {:event, [:synapse, :tool, :start], _, %{tool: "bad"}}

    assert_receive {:event, [:synapse, :tool, :exception], %{duration: _},
                    %{tool: "bad", reason: "no", run_id: run_id}}

    assert is_binary(run_id)
  end
end

defmodule SynapseCore.TelemetryAbsentTest do
  # Without the `:telemetry` module, runs and tool calls work and emit
  # nothing. Not async: it unloads the module every other test may use.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Tool}

  @moduletag capture_log: true

  test "with :telemetry not loaded, tools run and nothing is emitted" do
    name = start_fixture_agent!("calling_agent")
    test = self()
    handler = fn event, _, _, _ -> send(test, {:event, event}) end
    :ok = :telemetry.attach_many(:absent_test, SynapseCore.Telemetry.events(), handler, nil)

    :code.purge(:telemetry)
    :code.delete(:telemetry)
    :code.purge(:telemetry)

    on_exit(fn ->
      {:module, :telemetry} = Code.ensure_loaded(:telemetry)
      :telemetry.detach(:absent_test)
    end)

    refute function_exported?(:telemetry, :execute, 3)
    tool = Tool.new(name: "one", parameters: [a: :integer], function: fn %{a: a} -> a end)
    script = ~s({"calls":[{"name":"one","args":{"a":1}}],"retry_calls":false})
    assert {:ok, _} = Agent.run_sync(name, script, tools: [tool])
    refute_received {:event, _}
  end
end
