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

  describe "runs" do
    test "run_sync: :start with the agent, mode, node and worker, :stop with the usage" do
      name = start_fixture_agent!("echo_agent")
      attach(name)

      {:ok, result} = Agent.run_sync(name, "hello")

      assert_receive {:event, [:synapse, :run, :start], %{system_time: _, monotonic_time: _},
                      %{mode: :sync, node: node, worker: 0, telemetry_span_context: span}}

      assert node == node()

      assert_receive {:event, [:synapse, :run, :stop], %{duration: duration},
                      %{mode: :sync, telemetry_span_context: ^span, usage: usage}}

      assert usage == result.usage and usage.requests == 1
      assert is_integer(duration) and duration >= 0
      refute_received {:event, [:synapse, :run, _], _, _}
    end

    test "run/3 and await/2: a failing run's :exception carries the error and its kind" do
      name = start_fixture_agent!("failing_agent")
      attach(name)

      {:ok, run} = Agent.run(name, "boom")
      assert_receive {:event, [:synapse, :run, :start], _, %{mode: :async}}
      refute_received {:event, [:synapse, :run, _], _, _}

      {:error, error} = Agent.await(run)

      assert_receive {:event, [:synapse, :run, :exception], %{duration: _},
                      %{mode: :async, error: ^error, error_kind: kind}}

      assert kind == error.kind
    end

    test "a run with Elixir tools: one :start and one :stop around its tool calls" do
      name = start_fixture_agent!("calling_agent")
      attach(name)
      tool = Tool.new(name: "good", parameters: [a: :integer], function: fn %{a: a} -> a end)

      {:ok, result} = Agent.run_sync(name, script([{"good", 1}]), tools: [tool])

      assert_receive {:event, [:synapse, :run, :start], _, %{telemetry_span_context: span}}
      assert_receive {:event, [:synapse, :tool, :stop], _, %{tool: "good"}}

      assert_receive {:event, [:synapse, :run, :stop], _,
                      %{telemetry_span_context: ^span, usage: usage}}

      assert usage == result.usage
      refute_received {:event, [:synapse, :run, _], _, _}
    end

    test "a run that cannot start emits its :start and :exception at once" do
      name = unique_name()
      attach(name)

      {:error, %{kind: :unknown_agent}} = Agent.run_sync(name, "hello")

      assert_receive {:event, [:synapse, :run, :start], _,
                      %{mode: :sync, node: nil, worker: nil, telemetry_span_context: span}}

      assert_receive {:event, [:synapse, :run, :exception], _,
                      %{telemetry_span_context: ^span, error_kind: :unknown_agent}}
    end

    test "a run refused as it starts (its tools clash with the agent's) ends its span" do
      name =
        start_fixture_agent!("echo_agent",
          tools: [Tool.new(name: "twice", parameters: [], function: &Function.identity/1)]
        )

      attach(name)
      clash = Tool.new(name: "twice", parameters: [], function: &Function.identity/1)

      assert_raise ArgumentError, ~r/both have a tool named "twice"/, fn ->
        Agent.run_sync(name, "hello", tools: [clash])
      end

      assert_receive {:event, [:synapse, :run, :start], _, %{telemetry_span_context: span}}

      assert_receive {:event, [:synapse, :run, :exception], _,
                      %{telemetry_span_context: ^span, error_kind: :invalid_argument}}
    end

    test "run_stream: :stop when the stream ends, :exception (cancelled) when halted early" do
      name = start_fixture_agent!("echo_stream_agent")
      attach(name)

      events = name |> Agent.run_stream("one two three") |> Enum.to_list()
      {:result, result} = List.last(events)

      assert_receive {:event, [:synapse, :run, :start], _,
                      %{mode: :stream, telemetry_span_context: span}}

      assert_receive {:event, [:synapse, :run, :stop], _,
                      %{telemetry_span_context: ^span, usage: usage}}

      assert usage == result.usage

      # A stream still running when halted: 5 chunks, 1 s apart.
      slow = start_fixture_agent!("slow_stream_agent")
      attach(slow)
      [_first] = slow |> Agent.run_stream("5 1") |> Enum.take(1)

      assert_receive {:event, [:synapse, :run, :start], _,
                      %{mode: :stream, telemetry_span_context: halted}}

      assert_receive {:event, [:synapse, :run, :exception], _,
                      %{telemetry_span_context: ^halted, error_kind: :cancelled}}
    end

    test "stream_to: the run's :stop is emitted as it answers, the receiver doing nothing more" do
      name = start_fixture_agent!("echo_stream_agent")
      attach(name)

      {:ok, run} = Agent.run_stream(name, "one two", stream_to: self())
      ref = run.ref
      assert_receive {:synapse_event, ^ref, {:result, result}}, 10_000

      assert_receive {:event, [:synapse, :run, :start], _,
                      %{mode: :stream, telemetry_span_context: span}}

      assert_receive {:event, [:synapse, :run, :stop], _,
                      %{telemetry_span_context: ^span, usage: usage}}

      assert usage == result.usage
    end
  end

  describe "stream back-pressure" do
    # The worker streams the words at once; the consumer takes its time
    # over them, so the worker waits for room in the window.
    @words Enum.map_join(1..8, " ", &"w#{&1}")

    test "an enumerated stream reports the waits of its worker before its :stop" do
      name = start_fixture_agent!("echo_stream_agent")
      attach(name)

      name
      |> Agent.run_stream(@words, window: 1)
      |> Enum.each(fn _event -> Process.sleep(20) end)

      assert_receive {:event, [:synapse, :run, :start], _, %{telemetry_span_context: span}}

      assert_receive {:event, [:synapse, :stream, :backpressure],
                      %{count: count, duration: waited}, %{telemetry_span_context: ^span}}

      assert count >= 1 and waited > 0
      assert_receive {:event, [:synapse, :run, :stop], _, %{telemetry_span_context: ^span}}
    end

    test "a stream_to run reports them too; a window that is never full, none" do
      name = start_fixture_agent!("echo_stream_agent")
      attach(name)

      {:ok, run} = Agent.run_stream(name, @words, stream_to: self(), window: 1)
      ref = run.ref
      slow_receiver(ref, run)

      assert_receive {:event, [:synapse, :stream, :backpressure], %{count: count}, _}
      assert count >= 1
      assert_receive {:event, [:synapse, :run, :stop], _, _}

      _ = name |> Agent.run_stream(@words, window: :infinity) |> Enum.to_list()
      assert_receive {:event, [:synapse, :run, :stop], _, _}
      refute_received {:event, [:synapse, :stream, :backpressure], _, _}
    end
  end

  defp slow_receiver(ref, run) do
    receive do
      {:synapse_event, ^ref, {:result, _}} ->
        :ok

      {:synapse_event, ^ref, _event} ->
        Process.sleep(20)
        Agent.ack(run)
        slow_receiver(ref, run)
    after
      10_000 -> flunk("the stream did not end")
    end
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
