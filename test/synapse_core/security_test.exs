defmodule SynapseCore.SecurityTest do
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Result}

  @moduletag capture_log: true

  defp env_agent(extra) do
    opts =
      Keyword.merge(
        [
          name: unique_name(),
          agent: "synapse_fixtures.faults:env_agent",
          python_path: [fixtures_path()]
        ],
        extra
      )

    start_supervised!({Agent, opts}, id: opts[:name])
    {:ok, %Result{output: json}} = Agent.run_sync(opts[:name], "env")
    {:ok, names} = SynapseCore.JSON.decode(json)
    names
  end

  test "workers see only the allow-listed environment and what the agent passes" do
    secret = "SYNAPSE_TEST_SECRET_#{System.unique_integer([:positive])}"
    System.put_env(secret, "hunter2")
    on_exit(fn -> System.delete_env(secret) end)

    names = env_agent([])
    refute secret in names
    assert "PATH" in names
    assert "PYTHONPATH" in names

    assert secret in env_agent(env: [secret])
    assert "EXPLICIT" in env_agent(env: [{"EXPLICIT", "1"}])
  end

  test "the worker's socket is private and removed with it" do
    name = start_fixture_agent!("echo_agent")
    [%{address: "unix:" <> socket}] = Agent.workers(name)
    dir = Path.dirname(socket)

    assert {:ok, %File.Stat{mode: dir_mode}} = File.stat(dir)
    assert Bitwise.band(dir_mode, 0o777) == 0o700
    assert {:ok, %File.Stat{mode: socket_mode, type: :other}} = File.lstat(socket)
    assert Bitwise.band(socket_mode, 0o077) == 0

    stop_supervised!({Agent, name})
    refute File.exists?(dir)
  end
end
