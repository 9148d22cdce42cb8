defmodule SynapseCore.OrphansTest do
  # Stops the whole application and kills whole BEAMs: not async.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  test "stopping the application stops every worker" do
    name = unique_name()
    {:ok, _} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name))
    os_pid = worker_os_pid(name)

    :ok = Application.stop(:synapse_core)
    refute os_alive?(os_pid)
  after
    {:ok, _} = Application.ensure_all_started(:synapse_core)
  end

  test "no worker outlives a BEAM killed with SIGKILL" do
    script = """
    {:ok, _} = Application.ensure_all_started(:synapse_core)
    {:ok, _} = SynapseCore.start_agent(name: :orphan, agent: "synapse_fixtures.agents:echo_agent",
      python_path: [#{inspect(fixtures_path())}])
    [%{os_pid: worker}] = SynapseCore.Agent.workers(:orphan)
    IO.puts("PIDS \#{System.pid()} \#{worker}")
    Process.sleep(:infinity)
    """

    ebin = Path.join(Mix.Project.build_path(), "lib/synapse_core/ebin")

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-pa", ebin, "-e", script]
      ])

    {beam, worker} = read_pids(port, "")
    assert os_alive?(worker)

    System.cmd("kill", ["-9", Integer.to_string(beam)])
    assert_receive {^port, {:exit_status, _}}, 10_000

    eventually(fn -> not os_alive?(worker) end, 5_000)
  end

  defp read_pids(port, buffer) do
    receive do
      {^port, {:data, data}} ->
        buffer = buffer <> data

        case Regex.run(~r/PIDS (\d+) (\d+)/, buffer) do
          [_, beam, worker] -> {String.to_integer(beam), String.to_integer(worker)}
          nil -> read_pids(port, buffer)
        end

      {^port, {:exit_status, status}} ->
        flunk("the child BEAM exited with #{status}: #{buffer}")
    after
      60_000 -> flunk("the child BEAM printed no pids: #{buffer}")
    end
  end
end
