defmodule SynapseCore.BusyWaitTest do
  # `:busy_wait_us` reaches the event loop of the workers started here
  # (`synapse_python._busy_wait`), as the report of an agent running on it
  # says: the default, a value given, and 0 for asyncio's own loop.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, JSON}

  @agent "synapse_fixtures.event_loop:loop_agent"

  for {given, expected} <- [{[], 100}, {[busy_wait_us: 250], 250}, {[busy_wait_us: 0], nil}] do
    test "#{inspect(given)}: the worker's loop polls for #{inspect(expected)} µs" do
      name = start_fixture_agent!("loop_agent", [agent: @agent] ++ unquote(given))
      {:ok, result} = Agent.run_sync(name, "how do you wait?")
      assert JSON.decode(result.output) == {:ok, %{"busy_wait_us" => unquote(expected)}}
    end
  end
end
