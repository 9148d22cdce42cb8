defmodule SynapseCore.NotStartedTest do
  # Calls made while the :synapse_core application is not running say so.
  # Not async: it stops the application every other test uses.
  use ExUnit.Case, async: false

  alias SynapseCore.{Agent, Error}

  @moduletag capture_log: true

  test "calls and starts before the application is started say so" do
    :ok = Application.stop(:synapse_core)
    on_exit(fn -> {:ok, _} = Application.ensure_all_started(:synapse_core) end)

    for result <- [
          Agent.run_sync(:any, "hi"),
          Agent.run(:any, "hi"),
          SynapseCore.start_agent(name: :any, model: "test"),
          SynapseCore.stop_agent(:any)
        ] do
      assert {:error, %Error{kind: :unavailable, message: message}} = result
      assert message =~ "the :synapse_core application is not started"
    end
  end
end
