defmodule SynapseCore.Bench.Soak do
  @moduledoc """
  The soak: many concurrent callers on real workers while workers are
  killed at random, then an account of every call and a check for leaks.

  Every call must end in exactly one reply, `{:ok, _}` or a typed
  `%SynapseCore.Error{}`; afterwards no OS process, port, registry entry or
  tool task may be left over, and BEAM memory must be back to where it
  started (within a tolerance for what the VM caches).

      mix run bench/soak.exs --duration 60 --callers 64
  """

  alias SynapseCore.{Agent, Error, Result, Tool}

  @fixtures Path.expand("../../test/support/python", __DIR__)

  @type report :: map()

  @doc "The outcomes a call may have; anything else is a failure of the soak."
  @spec typed_outcomes() :: [atom()]
  def typed_outcomes,
    do: [:ok, :worker_exited, :unavailable, :cancelled, :timeout, :halted, :cancelled_by_caller]

  @spec run(keyword()) :: report()
  def run(opts \\ []) do
    duration = Keyword.get(opts, :duration, 10_000)
    callers = Keyword.get(opts, :callers, 32)
    workers = Keyword.get(opts, :workers, 2)
    kill_every = Keyword.get(opts, :kill_every, 700)
    log = Keyword.get(opts, :log, fn _ -> :ok end)
    # How calls reach the local workers; by default, the library's default.
    transport = Keyword.take(opts, [:transport])

    {:ok, _} = Application.ensure_all_started(:synapse_core)
    names = start_agents(workers, transport)
    Enum.each(names, &await_ready(&1, workers))
    # One warm-up round so that caches and lazily created tables exist
    # before the baseline is taken.
    [stream_agent, tools_agent] = names
    {:ok, _} = Agent.run_sync(stream_agent, "1 0")
    {:ok, _} = Agent.run_sync(tools_agent, ~s({"calls": []}))
    # Which way the calls went: the lane address of each worker, or nil.
    lanes = names |> Enum.flat_map(&Agent.workers/1) |> Enum.map(& &1.lane)
    before = measure(names)
    log.("baseline: #{inspect(before, pretty: true)}")

    deadline = System.monotonic_time(:millisecond) + duration
    parent = self()
    killer = spawn_link(fn -> kill_loop(names, kill_every, parent, 0) end)

    results =
      1..callers
      |> Enum.map(fn i -> Task.async(fn -> caller_loop(names, deadline, i, %{}) end) end)
      |> Task.await_many(duration + 120_000)

    send(killer, :stop)
    kills = receive(do: ({:kills, n} -> n))

    Enum.each(names, &await_ready(&1, workers, 60_000))
    after_run = settle(names, before)
    counts = Enum.reduce(results, %{}, &Map.merge(&1, &2, fn _k, a, b -> a + b end))
    calls = counts |> Map.values() |> Enum.sum()
    Enum.each(names, &SynapseCore.stop_agent/1)

    %{
      duration_ms: duration,
      callers: callers,
      workers_per_agent: workers,
      lanes: lanes,
      kills: kills,
      calls: calls,
      outcomes: counts,
      untyped: Map.get(counts, :untyped, 0),
      before: before,
      after: after_run,
      leaks: leaks(before, after_run)
    }
  end

  defp start_agents(workers, transport) do
    for {attr, name} <- [{"slow_stream_agent", :soak_stream}, {"calling_agent", :soak_tools}] do
      {:ok, _} =
        SynapseCore.start_agent(
          [
            name: name,
            agent: "synapse_fixtures.agents:#{attr}",
            python_path: [@fixtures],
            workers: workers,
            health_interval: 1_000,
            health_timeout: 1_000,
            max_backoff: 1_000
          ] ++ transport
        )

      name
    end
  end

  defp await_ready(name, workers, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn -> length(Agent.workers(name)) end)
    |> Enum.find(fn ready ->
      ready == workers or System.monotonic_time(:millisecond) > deadline or
        (Process.sleep(50) && false)
    end)
  end

  # One caller: random kinds of calls until the deadline, counting outcomes.
  defp caller_loop(names, deadline, i, counts) do
    if System.monotonic_time(:millisecond) > deadline do
      # Every call answered once: nothing may be left in the mailbox.
      {:message_queue_len, left} = Process.info(self(), :message_queue_len)
      if left == 0, do: counts, else: Map.update(counts, :stray_messages, left, &(&1 + left))
    else
      outcome = one_call(names, :rand.uniform(5))
      # No worker ready: a real caller would not spin either.
      if outcome == :unavailable, do: Process.sleep(20)
      caller_loop(names, deadline, i, Map.update(counts, outcome, 1, &(&1 + 1)))
    end
  end

  defp one_call([stream_agent, tools_agent], kind) do
    case kind do
      1 ->
        classify(Agent.run_sync(stream_agent, "3 0.01", timeout: 5_000))

      2 ->
        try do
          events = stream_agent |> Agent.run_stream("5 0.01", timeout: 5_000) |> Enum.to_list()
          if match?({:result, %Result{}}, List.last(events)), do: :ok, else: :untyped
        rescue
          error in Error -> error.kind
        end

      3 ->
        try do
          stream_agent |> Agent.run_stream("50 0.01", timeout: 5_000) |> Enum.take(2)
          :halted
        rescue
          error in Error -> error.kind
        end

      4 ->
        case Agent.run(stream_agent, "20 0.01", timeout: 5_000) do
          {:ok, run} ->
            Process.sleep(:rand.uniform(30))
            :ok = Agent.cancel(run)
            :cancelled_by_caller

          {:error, error} ->
            classify({:error, error})
        end

      5 ->
        double =
          Tool.new(name: "double", parameters: [a: :integer], function: fn %{a: a} -> 2 * a end)

        prompt = ~s({"calls": [{"name": "double", "args": {"a": 21}}], "retry_calls": false})
        classify(Agent.run_sync(tools_agent, prompt, tools: [double], timeout: 5_000))
    end
  catch
    kind, reason -> {:crashed, kind, reason}
  end

  defp classify({:ok, %Result{}}), do: :ok
  defp classify({:error, %Error{kind: kind}}), do: kind
  defp classify(_other), do: :untyped

  defp kill_loop(names, every, parent, kills) do
    receive do
      :stop -> send(parent, {:kills, kills})
    after
      div(every, 2) + :rand.uniform(every) ->
        case names |> Enum.flat_map(&Agent.workers/1) |> Enum.map(& &1.os_pid) do
          [] ->
            kill_loop(names, every, parent, kills)

          os_pids ->
            System.cmd("kill", ["-9", Integer.to_string(Enum.random(os_pids))])
            kill_loop(names, every, parent, kills + 1)
        end
    end
  end

  # The state that must not grow: OS processes, ports, registry entries,
  # tool tasks, memory.
  defp measure(names) do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)

    %{
      worker_processes: names |> Enum.flat_map(&Agent.workers/1) |> length(),
      os_processes: os_processes(),
      ports: length(Port.list()),
      registry_entries:
        Registry.count(SynapseCore.WorkerRegistry) + Registry.count(SynapseCore.AgentRegistry),
      tool_tasks: length(Task.Supervisor.children(SynapseCore.ToolSupervisor)),
      processes: length(Process.list()),
      memory_bytes: :erlang.memory(:total)
    }
  end

  # Workers come back and in-flight cleanups finish: measure until stable.
  defp settle(names, before, tries \\ 40) do
    now = measure(names)

    if tries == 0 or leaks(before, now) == [] do
      now
    else
      Process.sleep(250)
      settle(names, before, tries - 1)
    end
  end

  # Shepherds and Python workers descending from this BEAM.
  defp os_processes do
    {out, 0} = System.cmd("ps", ["-e", "-o", "pid=,ppid=,args="])
    rows = for line <- String.split(out, "\n", trim: true), do: parse_ps(line)
    children = Enum.group_by(rows, & &1.ppid)
    descendants(children, String.to_integer(System.pid())) |> length()
  end

  defp parse_ps(line) do
    [pid, ppid | args] = String.split(line, " ", trim: true)
    %{pid: String.to_integer(pid), ppid: String.to_integer(ppid), args: Enum.join(args, " ")}
  end

  defp descendants(children, pid) do
    for child <- Map.get(children, pid, []),
        acc <- [child | descendants(children, child.pid)],
        String.contains?(acc.args, ["synapse-shepherd", "synapse_python.worker"]),
        do: acc
  end

  # What grew. Memory may wobble by what the VM caches (code, atoms,
  # allocator carriers): 16 MiB or 25%, whichever is larger.
  defp leaks(before, now) do
    exact = [:worker_processes, :os_processes, :ports, :registry_entries, :tool_tasks]
    counts = for key <- exact, now[key] != before[key], do: {key, before[key], now[key]}
    slack = max(16 * 1024 * 1024, div(before.memory_bytes, 4))

    memory =
      if now.memory_bytes > before.memory_bytes + slack,
        do: [{:memory_bytes, before.memory_bytes, now.memory_bytes}],
        else: []

    processes =
      if now.processes > before.processes + 5,
        do: [{:processes, before.processes, now.processes}],
        else: []

    counts ++ memory ++ processes
  end
end
