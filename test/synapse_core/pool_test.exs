defmodule SynapseCore.PoolTest do
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result}

  @moduletag capture_log: true

  setup do
    {name, os_pids} = start_pool!()
    %{name: name, os_pids: Enum.sort(os_pids)}
  end

  # A pool of 3 workers whose agent answers with its worker's OS pid, with
  # `options`: its name, and its workers' OS pids once they all serve.
  defp start_pool!(options \\ []) do
    name = unique_name()

    start_supervised!(
      {Agent,
       [
         name: name,
         agent: "synapse_fixtures.faults:pid_agent",
         python_path: [fixtures_path()],
         workers: 3
       ] ++ options},
      id: name
    )

    {name, name |> await_workers(3) |> Enum.map(& &1.os_pid)}
  end

  defp served_by(name, count, seconds) do
    1..count
    |> Task.async_stream(fn _ -> Agent.run_sync(name, seconds, timeout: 30_000) end,
      max_concurrency: count,
      timeout: 40_000
    )
    |> Enum.map(fn {:ok, reply} -> reply end)
  end

  test "concurrent calls spread over all the workers", %{name: name, os_pids: os_pids} do
    replies = served_by(name, 30, "0.3")
    served = for {:ok, %Result{output: pid}} <- replies, do: String.to_integer(pid)

    assert length(served) == 30
    assert served |> Enum.uniq() |> Enum.sort() == os_pids
    # Least-loaded routing: no worker got most of the calls.
    assert served |> Enum.frequencies() |> Map.values() |> Enum.max() <= 20
  end

  # Each process has a worker of its own, which its calls go to while it is
  # no busier than another: calls one after the other find it awake. (No
  # health checks: one in flight would count as a call.)
  test "a process's calls one after the other stay on one worker" do
    {name, _os_pids} = start_pool!(health_interval: :infinity)

    for pids <- sequential_outputs(name, "0"), do: assert([_one] = Enum.uniq(pids))
  end

  test "a worker killed under load fails only its own calls; the pool returns to 3",
       %{name: name, os_pids: os_pids} do
    [victim | survivors] = os_pids
    load = Task.async(fn -> served_by(name, 30, "1.5") end)
    Process.sleep(500)
    System.cmd("kill", ["-9", Integer.to_string(victim)])

    replies = Task.await(load, 60_000)
    exited = Enum.count(replies, &match?({:error, %Error{kind: :worker_exited}}, &1))
    served = for {:ok, %Result{output: pid}} <- replies, do: String.to_integer(pid)

    assert exited > 0
    assert exited + length(served) == 30
    assert Enum.all?(served, &(&1 in survivors))

    eventually(
      fn ->
        workers = Agent.workers(name)
        length(workers) == 3 and victim not in Enum.map(workers, & &1.os_pid)
      end,
      15_000
    )

    assert {:ok, %Result{}} = Agent.run_sync(name, "0")
  end

  # A worker's process restarted during its agent's start (a crash of its
  # SynapseCore.Worker, killed here) starts again with the same starter to
  # report to, and reports a second time. Counted as two workers, that made
  # start_agent/1 return while another worker of the pool was still loading.
  test "a worker that reports its start twice is one worker: the start waits for every worker" do
    name = unique_name()
    dir = tmp_dir("synapse-held")
    File.mkdir_p!(dir)
    release = Path.join(dir, "release")

    on_exit(fn ->
      SynapseCore.stop_agent(name)
      File.rm_rf!(dir)
    end)

    # One worker's import waits for the release file; the other serves.
    starter =
      Task.async(fn ->
        result =
          SynapseCore.start_agent(
            name: name,
            agent: "synapse_fixtures.held_start:agent",
            python_path: [fixtures_path()],
            env: [{"SYNAPSE_TEST_HOLD_DIR", dir}],
            workers: 2
          )

        {result, File.exists?(release), length(Agent.workers(name))}
      end)

    [%{pid: first}] = await_workers(name, 1)
    Process.exit(first, :kill)

    [%{pid: again}] =
      eventually(
        fn ->
          workers = Agent.workers(name)
          match?([%{pid: pid}] when pid != first, workers) && workers
        end,
        30_000
      )

    # It serves, so it has reported (a call it answers comes after that);
    # once the starter has taken the report, it still waits for the held worker.
    assert %{serving: true} = SynapseCore.Worker.info(again)

    eventually(fn ->
      case Process.info(starter.pid, [:status, :message_queue_len]) do
        nil -> true
        info -> info == [status: :waiting, message_queue_len: 0]
      end
    end)

    File.write!(release, "")
    assert {{:ok, _supervisor}, true = _released_first, 2} = Task.await(starter, 60_000)
  end

  test "a hung worker leaves the pool: later calls go to the others" do
    {name, [victim | _]} = start_pool!(health_interval: 200, health_timeout: 200)
    System.cmd("kill", ["-STOP", Integer.to_string(victim)])
    eventually(fn -> victim not in Enum.map(Agent.workers(name), & &1.os_pid) end)

    replies = served_by(name, 20, "0")
    served = for {:ok, %Result{output: pid}} <- replies, do: String.to_integer(pid)

    assert length(served) == 20
    refute victim in served
    eventually(fn -> length(Agent.workers(name)) == 3 end, 15_000)
  end
end
