defmodule SynapseCore.EnvSecretsTest do
  # `{"NAME", "value"}` pairs of `:env` are how keys reach a worker when they
  # are not in the BEAM's environment: like the token, their values are in
  # no state, child spec, error or crash report, and still reach the worker.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Result}

  @moduletag capture_log: true

  @value "sk-#{System.unique_integer([:positive])}-never-shown"

  defp refute_value(term) do
    text = if is_binary(term), do: term, else: inspect(term, limit: :infinity)
    refute text =~ @value, "the value shows in: #{text}"
  end

  # What a crash report or a supervisor report shows: the states and the
  # child spec.
  test "the states of an agent's processes and its child spec do not carry env values" do
    opts =
      fixture_agent("x", agent: "synapse_fixtures.faults:env_agent", env: [{"MY_KEY", @value}])

    refute_value(Agent.child_spec(opts))

    {:ok, supervisor} = SynapseCore.start_agent(opts)
    on_exit(fn -> SynapseCore.stop_agent(opts[:name]) end)
    [%{pid: worker}] = Agent.workers(opts[:name])

    refute_value(:sys.get_state(worker))
    refute_value(:sys.get_state(supervisor))
    refute_value(:sys.get_state(SynapseCore.AgentsSupervisor))

    # And the worker has it.
    assert {:ok, %Result{output: names}} = Agent.run_sync(opts[:name], "env")
    assert names =~ ~s("MY_KEY")
  end

  test "an invalid env entry is refused without showing its value" do
    error =
      assert_raise ArgumentError, fn ->
        # A charlist, as :os.getenv/1 gives it.
        Agent.child_spec(fixture_agent("echo_agent", env: [{"MY_KEY", to_charlist(@value)}]))
      end

    assert error.message =~ "MY_KEY"
    refute_value(error.message)
  end
end
