defmodule SynapseCore.OrphansTest do
  # Stops the whole application and kills whole BEAMs: not async.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Result, Shepherd}

  @moduletag capture_log: true

  # An agent whose worker starts a long-lived subprocess (`sleep`), in the
  # worker's process group; returns what the tests look at, and a function
  # reading the pids of every such subprocess started so far.
  defp start_grandchild_agent(extra \\ []) do
    dir = Path.join(System.tmp_dir!(), "synapse-orphans-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    pids = Path.join(dir, "pids")
    name = unique_name()
    # session: true puts the subprocess in a session (and group) of its own.
    {session, extra} = Keyword.pop(extra, :session, false)
    session_env = if session, do: [{"SYNAPSE_TEST_GRANDCHILD_SESSION", "1"}], else: []

    opts =
      fixture_agent("x",
        name: name,
        agent: "synapse_fixtures.grandchild:agent",
        env: [{"SYNAPSE_TEST_GRANDCHILD_PID", pids} | session_env]
      )

    {:ok, _} = SynapseCore.start_agent(Keyword.merge(opts, extra))

    on_exit(fn ->
      SynapseCore.stop_agent(name)
      # A test that failed must not leave its subprocesses behind.
      for pid <- read_pids(pids), do: System.cmd("kill", ["-9", Integer.to_string(pid)])
      File.rm_rf!(dir)
    end)

    grandchildren = fn -> read_pids(pids) end
    [%{pid: worker}] = await_workers(name)
    Map.merge(%{name: name, grandchildren: grandchildren}, processes(worker, grandchildren))
  end

  # The worker's processes, on both sides.
  defp processes(worker, grandchildren) do
    {_state, data} = :sys.get_state(worker)

    %{
      worker: worker,
      os_pid: data.os_pid,
      grandchild: List.last(grandchildren.()),
      shepherd: data.shepherd,
      shepherd_os_pid: Shepherd.os_pid(data.shepherd)
    }
  end

  defp read_pids(file) do
    file |> File.read!() |> String.split("\n", trim: true) |> Enum.map(&String.to_integer/1)
  end

  defp signal(os_pid, signal), do: System.cmd("kill", ["-#{signal}", Integer.to_string(os_pid)])

  defp all_gone?(os_pids), do: not Enum.any?(os_pids, &os_alive?/1)

  describe "no process of a worker's group survives" do
    test "a SIGKILLed shepherd: its worker's subprocess dies too, and a new worker serves" do
      agent = start_grandchild_agent()

      signal(agent.shepherd_os_pid, "KILL")

      eventually(fn -> all_gone?([agent.os_pid, agent.grandchild]) end)
      eventually(fn -> length(agent.grandchildren.()) == 2 end, 30_000)
      await_workers(agent.name)
      assert {:ok, %Result{}} = Agent.run_sync(agent.name, "hi")
    end

    test "a stopped (SIGSTOP) shepherd: stop_agent ends the group and the shepherd itself" do
      agent = start_grandchild_agent(shutdown_timeout: 500)

      signal(agent.shepherd_os_pid, "STOP")
      assert :ok = SynapseCore.stop_agent(agent.name)

      assert all_gone?([agent.os_pid, agent.grandchild, agent.shepherd_os_pid])
    end

    test "a subprocess in a session of its own, its shepherd stopped: stop_agent ends it too" do
      agent = start_grandchild_agent(shutdown_timeout: 500, session: true)

      signal(agent.shepherd_os_pid, "STOP")
      assert :ok = SynapseCore.stop_agent(agent.name)

      assert all_gone?([agent.os_pid, agent.grandchild, agent.shepherd_os_pid])
    end

    test "the BEAM-side processes killed: the worker's group goes with them" do
      agent = start_grandchild_agent()

      Process.exit(agent.worker, :kill)
      eventually(fn -> all_gone?([agent.os_pid, agent.grandchild]) end, 10_000)
      eventually(fn -> not Process.alive?(agent.shepherd) end)

      # Its replacement; then the same with the shepherd's BEAM process.
      eventually(fn -> length(agent.grandchildren.()) == 2 end, 30_000)
      [%{pid: worker}] = await_workers(agent.name)
      replacement = processes(worker, agent.grandchildren)

      Process.exit(replacement.shepherd, :kill)
      eventually(fn -> all_gone?([replacement.os_pid, replacement.grandchild]) end, 10_000)
    end

    test "the BEAM-side process killed while its shepherd is stopped" do
      agent = start_grandchild_agent(shutdown_timeout: 500)

      signal(agent.shepherd_os_pid, "STOP")
      Process.exit(agent.worker, :kill)

      eventually(
        fn -> all_gone?([agent.os_pid, agent.grandchild, agent.shepherd_os_pid]) end,
        10_000
      )
    end
  end

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
