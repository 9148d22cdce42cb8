defmodule SynapseCore.FanOutTest do
  # One streamed run's events to several subscribers (`stream_to:` a list
  # of pids or a :pg group), with real pydantic-ai streams
  # (synapse_fixtures.agents:slow_stream_agent: "N DELAY" streams N chunks).
  # Subscribers on other nodes: test/synapse_core/cluster_test.exs.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, Run, TestListener}

  @moduletag capture_log: true

  test "every subscriber gets every event, in order, then the result" do
    name = start_fixture_agent!("slow_stream_agent")
    listeners = for _ <- 1..3, do: TestListener.start(self())

    {:ok, %Run{ref: ref} = run} = Agent.run_stream(name, "20 0", stream_to: listeners, window: 4)
    assert is_pid(run.fan_out)

    [first | others] =
      for listener <- listeners do
        assert_receive {^listener, _, {:synapse_subscribed, %Run{ref: ^ref, receiver: ^listener}}}
        TestListener.events(listener, ref)
      end

    assert Enum.all?(others, &(&1 == first))
    {:result, %Result{output: output}} = List.last(first)
    texts = for {:text_delta, text} <- first, do: text
    assert length(texts) == 20
    assert Enum.join(texts) == output
  end

  test "the slowest subscriber bounds the run" do
    name = start_fixture_agent!("slow_stream_agent")
    fast = TestListener.start(self())

    {:ok, %Run{ref: ref}} = Agent.run_stream(name, "50 0", stream_to: [fast, self()], window: 4)

    assert_receive {:synapse_subscribed, %Run{} = mine}, 10_000

    # The fast subscriber acknowledges everything; this one nothing yet:
    # neither gets more than the window.
    for _ <- 1..4,
        do: assert_receive({^fast, _, {:synapse_event, ^ref, {:text_delta, _}}}, 10_000)

    refute_receive {^fast, _, {:synapse_event, ^ref, _}}, 500
    delivered = take_events(ref)
    assert length(delivered) == 4

    # Acknowledged here too: the run goes on, to the end, for both.
    :ok = Agent.ack(mine, 4)
    {rest, fast_rest} = both_to_the_end(mine, fast, {[], []})

    assert length(fast_rest) == 47
    assert rest == fast_rest
    assert {:result, %Result{}} = List.last(rest)
  end

  # This process's events (acknowledged) and `fast`'s, until both have the result.
  defp both_to_the_end(%Run{ref: ref} = mine, fast, {here, there}) do
    done? = &match?([{:result, _} | _], &1)

    if done?.(here) and done?.(there) do
      {Enum.reverse(here), Enum.reverse(there)}
    else
      receive do
        {:synapse_event, ^ref, event} ->
          unless match?({:result, _}, event), do: :ok = Agent.ack(mine)
          both_to_the_end(mine, fast, {[event | here], there})

        {^fast, _, {:synapse_event, ^ref, event}} ->
          both_to_the_end(mine, fast, {here, [event | there]})
      after
        15_000 -> flunk("the stream stalled")
      end
    end
  end

  test "a subscriber that exits is dropped; the run is cancelled when none is left" do
    name = start_fixture_agent!("slow_stream_agent")
    [one, two] = listeners = for _ <- 1..2, do: TestListener.start(self())

    {:ok, %Run{ref: ref} = run} =
      Agent.run_stream(name, "1000 0.01", stream_to: listeners, window: 4)

    hub = Process.monitor(run.fan_out)
    assert_receive {^one, _, {:synapse_event, ^ref, _}}, 10_000
    Process.exit(one, :kill)
    # The other still gets events.
    assert_receive {^two, _, {:synapse_event, ^ref, _}}, 10_000
    assert_receive {^two, _, {:synapse_event, ^ref, _}}, 10_000
    Process.exit(two, :kill)
    assert_receive {:DOWN, ^hub, :process, _, _}, 10_000

    # The run was cancelled in Python too.
    eventually(fn ->
      {:ok, %Result{output: output}} = Agent.run_sync(name, "cancelled?")
      output =~ "1000 0.01"
    end)
  end

  test "cancel/1 from the caller ends the run for every subscriber" do
    name = start_fixture_agent!("slow_stream_agent")
    listeners = for _ <- 1..2, do: TestListener.start(self())

    {:ok, %Run{ref: ref} = run} =
      Agent.run_stream(name, "1000 0.01", stream_to: listeners, window: 4)

    for listener <- listeners,
        do: assert_receive({^listener, _, {:synapse_event, ^ref, _}}, 10_000)

    :ok = Agent.cancel(run)

    for listener <- listeners do
      assert {:error, %Error{kind: :cancelled}} =
               listener |> TestListener.events(ref) |> List.last()
    end
  end

  test "a :pg group's members; a group with none, and bad subscribers" do
    name = start_fixture_agent!("slow_stream_agent")
    scope = :"watchers_#{System.unique_integer([:positive])}"
    start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
    listeners = for _ <- 1..2, do: TestListener.start(self(), {scope, :tabs})

    {:ok, %Run{ref: ref}} = Agent.run_stream(name, "5 0", stream_to: {:pg, scope, :tabs})
    [first, second] = Enum.map(listeners, &TestListener.events(&1, ref))
    assert first == second
    assert {:result, %Result{output: "chunk1 chunk2 chunk3 chunk4 chunk5 "}} = List.last(first)

    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             Agent.run_stream(name, "5 0", stream_to: {:pg, scope, :nobody})

    assert message =~ "no subscriber"

    for bad <- [[], [self(), :me], "me", {:pg}] do
      assert_raise ArgumentError, ~r/:stream_to/, fn ->
        Agent.run_stream(name, "5 0", stream_to: bad)
      end
    end
  end
end

defmodule SynapseCore.FanOutStartTest do
  # The hub's start, alone: SynapseCore.FanOut.start/3 with a start function
  # standing for the run's (which, for a run on another node, waits for it).
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  test "a caller that exits while it starts the run leaves no hub behind" do
    test = self()
    subscriber = spawn(fn -> Process.sleep(:infinity) end)
    on_exit(fn -> Process.exit(subscriber, :kill) end)

    caller =
      spawn(fn ->
        SynapseCore.FanOut.start([subscriber], 4, fn hub ->
          send(test, {:hub, hub})
          Process.sleep(:infinity)
        end)
      end)

    assert_receive {:hub, hub}, 5_000
    Process.exit(caller, :kill)
    eventually(fn -> not Process.alive?(hub) end)
  end
end
