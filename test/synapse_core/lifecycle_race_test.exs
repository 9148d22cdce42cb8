defmodule SynapseCore.LifecycleRaceTest do
  # Starts and stops meeting an agent that is going away. Suspends the
  # application's agent registry: not async.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.Error

  @moduletag capture_log: true

  # The registry forgets a dead process when it handles its exit, a moment
  # after the exit: held back here, that moment lasts as long as the test
  # needs.
  defp with_registry_held(fun) do
    partitions =
      for {_, pid, _, _} <- Supervisor.which_children(SynapseCore.AgentRegistry), do: pid

    Enum.each(partitions, &:sys.suspend/1)

    try do
      fun.()
    after
      Enum.each(partitions, &:sys.resume/1)
    end
  end

  test "stop_agent on an agent that has just stopped answers :unknown_agent, not a misuse" do
    name = unique_name()
    {:ok, supervisor} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name))
    monitor = Process.monitor(supervisor)

    result =
      with_registry_held(fn ->
        # Stopped normally, not killed: an agent is a :transient child, and
        # one that crashes is restarted at once, the new one taking over its
        # name in the registry.
        :ok = Supervisor.stop(supervisor, :normal)
        assert_receive {:DOWN, ^monitor, :process, _, :normal}
        # The registry still lists the dead supervisor under the name.
        assert [{^supervisor, _}] = Registry.lookup(SynapseCore.AgentRegistry, name)
        SynapseCore.stop_agent(name)
      end)

    assert {:error, %Error{kind: :unknown_agent}} = result
  end
end
