defmodule SynapseCore.Bench.Soak do
  @moduledoc """
  The soak: many concurrent callers on real workers while faults are
  injected, then an account of every call and a check for leaks.

  Faults, taken in turn every `kill_every` ms (each on a random target):

    * `:worker_kill` - SIGKILL to a Python worker;
    * `:shepherd_kill` - SIGKILL to a worker's `synapse-shepherd`;
    * `:shepherd_stop` - SIGSTOP to a shepherd, half of the time resumed
      (SIGCONT) within two seconds, otherwise left stopped for the agent to
      deal with (its stop must still end the shepherd and its worker's
      group).

  Beside agent runs, the callers make Bridge calls (a sync function answered
  on the worker's loop, one in a worker thread, one whose coroutine is
  awaited after its thread, some of them past their timeout) on a bridge of
  the test fixtures, generated as a user generates one.

  The callers mix in faults of their own: workers flooding their output,
  Elixir tools failing with bytes that are not UTF-8 or with errors too
  large to send, runs whose `Run` struct is dropped (only `run.ref` kept)
  and garbage collected, and, beside them, agents started and stopped in
  races (a stop during the start, a starter killed mid-start, a start that
  fails).

  Every call must end in exactly one reply, `{:ok, _}` or a typed
  `%SynapseCore.Error{}`; every start and stop too. Afterwards no OS
  process (grandchildren included), file descriptor, port, registry entry
  or tool task may be left over, and BEAM memory must be back to where it
  started (within a tolerance for what the VM caches); once every agent is
  stopped, none of the soak's OS processes may be left at all.

      MIX_ENV=test mix run bench/soak.exs --duration 60 --callers 64
  """

  alias SynapseCore.{Agent, Error, Result, Run, Tool}

  # MIX_ENV=test: the fixtures are the test suite's, and so are its helpers.

  @fixtures Path.expand("../../test/support/python", __DIR__)
  @bridge_config Path.expand("../../test/support/bridge/custom.json", __DIR__)
  # Its client, as `mix synapse.gen.bridge` writes it, under a name of the
  # soak's own (the test suite compiles the config's into the same VM).
  @shop SynapseCore.Bench.SoakShop

  @all_faults [
    :worker_kill,
    :shepherd_kill,
    :shepherd_stop,
    :flood,
    :bad_tool_errors,
    :dropped_runs,
    :start_stop
  ]

  # The kinds of call the callers make (`one_call/2`), by number.
  @kind_names %{
    1 => :run_sync,
    2 => :run_stream,
    3 => :run_stream_halted,
    4 => :run_cancelled,
    5 => :elixir_tool,
    6 => :bad_tool_error,
    7 => :dropped_run,
    8 => :dropped_stream,
    9 => :flood,
    10 => :grandchild,
    11 => :bridge_on_loop,
    12 => :bridge_in_a_thread,
    13 => :bridge_coroutine_after_thread
  }

  # Signals sent by the fault loop, in turn.
  @signals [:worker_kill, :shepherd_kill, :shepherd_stop]

  # Tool errors carry at most this much to the model (the tool agent's
  # :max_message_bytes): a larger one must become a short retry prompt.
  @tool_message_limit 1_048_576

  # A bound for liveness, not a speed: a reply (or a start) that has not come
  # by then never will.
  @reply_bound 60_000

  @type report :: map()

  @doc "Every fault the soak can inject; `run/1` takes a subset as `:faults`."
  @spec faults() :: [atom()]
  def faults, do: @all_faults

  @doc "The kinds of call the callers make (the keys of a report's `calls_by_kind`)."
  @spec kinds() :: [atom()]
  def kinds, do: Map.values(@kind_names)

  @doc "The outcomes a call may have; anything else is a failure of the soak."
  @spec typed_outcomes() :: [atom()]
  def typed_outcomes,
    do: [:ok, :worker_exited, :unavailable, :cancelled, :timeout, :halted, :cancelled_by_caller]

  @doc "The outcomes of starts and stops racing each other."
  @spec lifecycle_outcomes() :: [atom()]
  def lifecycle_outcomes,
    do: [:started, :stopped, :startup_failed, :unknown_agent, :start_interrupted, :unavailable]

  @doc "What went wrong in a report: calls, starts and stops, leaks. Empty when all is well."
  @spec failures(report()) :: keyword()
  def failures(report) do
    calls = Map.drop(report.outcomes, typed_outcomes())
    lifecycle = Map.drop(report.lifecycle, lifecycle_outcomes() ++ typed_outcomes())

    [
      unexpected: calls,
      lifecycle: lifecycle,
      leaks: report.leaks,
      final_leaks: report.final_leaks
    ]
    |> Enum.reject(fn {_, found} -> found == %{} or found == [] end)
  end

  @spec run(keyword()) :: report()
  def run(opts \\ []) do
    duration = Keyword.get(opts, :duration, 10_000)
    callers = Keyword.get(opts, :callers, 32)
    workers = Keyword.get(opts, :workers, 2)
    kill_every = Keyword.get(opts, :kill_every, 700)
    faults = Keyword.get(opts, :faults, @all_faults)
    log = Keyword.get(opts, :log, fn _ -> :ok end)
    # How calls reach the local workers; by default, the library's default.
    transport = Keyword.take(opts, [:transport])

    {:ok, _} = Application.ensure_all_started(:synapse_core)
    dir = Path.join(System.tmp_dir!(), "synapse-soak-#{System.pid()}-#{System.unique_integer()}")
    File.mkdir_p!(dir)
    grandchildren = Path.join(dir, "grandchildren")
    File.write!(grandchildren, "")

    # Nothing of the soak exists yet: what must be left once it is over
    # (measured after one agent came and went, so that what the first call
    # creates for good, such as the NIF's runtime, is there already).
    lifecycle(:start_call_stop, :soak_lifecycle_warm_up)
    :ok = SynapseCore.stop_agent(:soak_lifecycle_warm_up)
    bridge_priv = generate_bridge(Path.join(dir, "bridge"))
    empty = quiet(fn -> measure([], grandchildren) end)
    agents = start_agents(workers, grandchildren, transport, bridge_priv)
    names = Map.values(agents)
    Enum.each(names, &await_ready(&1, workers_of(&1, agents, workers)))
    warm_up(agents, workers)
    # Which way the calls went: the lane address of each worker, or nil.
    lanes = names |> Enum.flat_map(&SynapseCore.Agent.workers/1) |> Enum.map(& &1.lane)
    before = measure(names, grandchildren)
    log.("baseline: #{inspect(before, pretty: true)}")

    deadline = System.monotonic_time(:millisecond) + duration
    parent = self()
    signals = Enum.filter(@signals, &(&1 in faults))
    faulter = spawn_link(fn -> fault_loop({signals, names}, kill_every, parent, %{}) end)

    lifecycle =
      if :start_stop in faults,
        do: Task.async(fn -> lifecycle_loop(deadline, 0, %{}) end)

    results =
      1..callers
      |> Enum.map(fn _ -> Task.async(fn -> caller_loop(agents, faults, deadline, %{}) end) end)
      |> Task.await_many(duration + 180_000)

    send(faulter, :stop)
    injected = receive(do: ({:faults, counts} -> counts))
    lifecycle = if lifecycle, do: Task.await(lifecycle, 300_000), else: %{}

    Enum.each(names, &await_ready(&1, workers_of(&1, agents, workers), 60_000))
    after_run = settle(fn -> measure(names, grandchildren) end, before)
    counts = Enum.reduce(results, %{}, &Map.merge(&1, &2, fn _k, a, b -> a + b end))
    {by_kind, counts} = Enum.split_with(counts, &match?({{:kind, _}, _}, &1))
    counts = Map.new(counts)
    calls = by_kind |> Enum.map(&elem(&1, 1)) |> Enum.sum()

    stops = Map.new(names, &{&1, stop(&1, agents)})
    final = settle(fn -> measure([], grandchildren) end, empty)
    final_leaks = leaks(empty, final) ++ for {n, r} <- stops, r != :ok, do: {:stop, n, r}
    cleanup(final, dir)

    %{
      duration_ms: duration,
      callers: callers,
      workers_per_agent: workers,
      faults: faults,
      lanes: lanes,
      injected: injected,
      kills: Map.get(injected, :worker_kill, 0),
      calls: calls,
      calls_by_kind:
        Map.new(by_kind, fn {{:kind, kind}, n} -> {Map.fetch!(@kind_names, kind), n} end),
      outcomes: counts,
      untyped: Map.get(counts, :untyped, 0),
      lifecycle: lifecycle,
      before: before,
      after: after_run,
      leaks: leaks(before, after_run),
      empty: empty,
      final: final,
      final_leaks: final_leaks
    }
  end

  ## Agents

  # The fixtures' bridge, generated and its client compiled: its Python files' directory.
  defp generate_bridge(dir) do
    File.mkdir_p!(dir)
    config = Path.join(dir, "bridge.json")
    {:ok, fixture} = @bridge_config |> File.read!() |> SynapseCore.JSON.decode()
    {:ok, json} = SynapseCore.JSON.encode(put_in(fixture, ["elixir", "module"], inspect(@shop)))
    File.write!(config, json)

    {:ok, files} =
      Mix.Tasks.Synapse.Gen.Bridge.generate(nil,
        config: config,
        python_path: @fixtures,
        lib: Path.join(dir, "lib"),
        out: Path.join(dir, "priv")
      )

    # Compiled once per VM (the short soak runs once per transport).
    unless Code.ensure_loaded?(@shop) do
      files |> Enum.filter(&String.ends_with?(&1, ".ex")) |> Enum.each(&Code.compile_file/1)
    end

    Path.join(dir, "priv")
  end

  defp stop(name, %{bridge: name}) do
    [{pid, _}] = Registry.lookup(SynapseCore.AgentRegistry, name)
    GenServer.stop(pid, :shutdown, :infinity)
  catch
    :exit, reason -> {:exit, reason}
  end

  defp stop(name, _agents), do: SynapseCore.stop_agent(name)

  defp start_agents(workers, grandchildren, transport, bridge_priv) do
    common =
      transport ++
        [
          python_path: [@fixtures],
          health_interval: 1_000,
          health_timeout: 1_000,
          max_backoff: 1_000,
          shutdown_timeout: 1_000
        ]

    agents = [
      stream: {"synapse_fixtures.agents:slow_stream_agent", workers: workers},
      tools:
        {"synapse_fixtures.agents:calling_agent",
         workers: workers, max_message_bytes: @tool_message_limit},
      # Flood on demand; one worker each: they are there for their faults.
      flood: {"synapse_fixtures.faults:flood_agent", workers: 1},
      # Each worker starts a subprocess at import (its pid in `grandchildren`).
      grandchild:
        {"synapse_fixtures.grandchild:agent",
         workers: 1, env: [{"SYNAPSE_TEST_GRANDCHILD_PID", grandchildren}]}
    ]

    started =
      Map.new(agents, fn {role, {agent, extra}} ->
        name = :"soak_#{role}"
        {:ok, _} = SynapseCore.start_agent([name: name, agent: agent] ++ extra ++ common)
        {role, name}
      end)

    {:ok, bridge} =
      SynapseCore.Bridge.start_link(
        [
          name: :soak_bridge,
          module: "synapse_fixtures.bridge_custom",
          workers: workers,
          python_path: [bridge_priv, @fixtures]
        ] ++ Keyword.delete(common, :python_path)
      )

    # Stopped by the soak, not by its caller's exit.
    Process.unlink(bridge)
    Map.put(started, :bridge, :soak_bridge)
  end

  defp workers_of(name, agents, workers) do
    if name in [agents.stream, agents.tools, agents.bridge], do: workers, else: 1
  end

  # Every kind of call on every worker, so that caches, lazily created
  # tables and each worker's connections exist before the baseline is
  # taken: a worker's connection for streams, for one, is made by its first
  # run_stream. A process's calls stay on its own worker while no other is
  # less busy (SynapseCore.Workers): each kind's calls are made at once, by
  # several processes, so that they spread over the pool's workers.
  defp warm_up(agents, workers) do
    callers = 4 * workers

    for kind <- Map.keys(@kind_names) do
      1..callers
      |> Task.async_stream(fn _ -> one_call(agents, kind) end,
        max_concurrency: callers,
        timeout: :infinity
      )
      |> Stream.run()
    end

    :ok
  end

  defp await_ready(name, workers, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn -> length(Agent.workers(name)) end)
    |> Enum.find(fn ready ->
      ready == workers or System.monotonic_time(:millisecond) > deadline or
        (Process.sleep(50) && false)
    end)
  end

  ## Callers

  # One caller: random kinds of calls until the deadline, counting outcomes.
  defp caller_loop(agents, faults, deadline, counts) do
    if System.monotonic_time(:millisecond) > deadline do
      # Every call answered once: nothing may be left in the mailbox.
      {:message_queue_len, left} = Process.info(self(), :message_queue_len)
      if left == 0, do: counts, else: Map.update(counts, :stray_messages, left, &(&1 + left))
    else
      kind = pick_kind(faults)
      outcome = one_call(agents, kind)
      # No worker ready: a real caller would not spin either.
      if outcome == :unavailable, do: Process.sleep(20)

      counts =
        counts
        |> Map.update(outcome, 1, &(&1 + 1))
        |> Map.update({:kind, kind}, 1, &(&1 + 1))

      caller_loop(agents, faults, deadline, counts)
    end
  end

  # The callers' faults among the kinds; the others are plain calls.
  @kinds_of_fault %{flood: [9], bad_tool_errors: [6], dropped_runs: [7, 8]}
  @plain_kinds Map.keys(@kind_names) -- Enum.concat(Map.values(@kinds_of_fault))

  defp pick_kind(faults) do
    kinds =
      @plain_kinds ++
        Enum.flat_map(@kinds_of_fault, fn {fault, kinds} ->
          if fault in faults, do: kinds, else: []
        end)

    Enum.random(kinds)
  end

  defp one_call(agents, kind) do
    case kind do
      1 ->
        classify(Agent.run_sync(agents.stream, "3 0.01", timeout: 5_000))

      2 ->
        try do
          events = agents.stream |> Agent.run_stream("5 0.01", timeout: 5_000) |> Enum.to_list()
          if match?({:result, %Result{}}, List.last(events)), do: :ok, else: :untyped
        rescue
          error in Error -> error.kind
        end

      3 ->
        try do
          agents.stream |> Agent.run_stream("50 0.01", timeout: 5_000) |> Enum.take(2)
          :halted
        rescue
          error in Error -> error.kind
        end

      4 ->
        case Agent.run(agents.stream, "20 0.01", timeout: 5_000) do
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
        classify(Agent.run_sync(agents.tools, prompt, tools: [double], timeout: 5_000))

      6 ->
        bad_tool_error(agents.tools)

      7 ->
        dropped_run(agents.stream)

      8 ->
        dropped_stream(agents.stream)

      9 ->
        # 1 MiB of print() output, in lines of 1 KiB.
        classify(Agent.run_sync(agents.flood, "1", timeout: 30_000))

      10 ->
        classify(Agent.run_sync(agents.grandchild, "hi", timeout: 5_000))

      # Bridge calls: answered on the worker's loop as it reads them, in a
      # worker thread, and a coroutine awaited after its thread (its 10 ms
      # sleep past a 5 ms timeout one time in four).
      11 ->
        bridge(shop(:on_the_loop_checked, [agents.bridge, 3, [timeout: 5_000]]), [0, 1, 2])

      12 ->
        bridge(shop(:in_a_thread_checked, [agents.bridge, 3, [timeout: 5_000]]), [0, 1, 2])

      13 ->
        timeout = Enum.random([5, 5_000, 5_000, 5_000])

        bridge(
          shop(:in_a_thread_later, [agents.bridge, 7, [timeout: timeout]]),
          "7 after waiting in MainThread"
        )
    end
  catch
    kind, reason -> {:crashed, kind, reason}
  end

  defp classify({:ok, %Result{}}), do: :ok
  defp classify({:error, %Error{kind: kind}}), do: kind
  defp classify(_other), do: :untyped

  # The bridge's client is compiled when the soak runs: called by name.
  defp shop(function, args), do: apply(@shop, function, args)

  defp bridge({:ok, expected}, expected), do: :ok
  defp bridge(outcome, _expected), do: classify(outcome)

  # A tool failing with what a retry prompt cannot carry as it is: the model
  # must still get a retry prompt (the run answers), whatever the tool did.
  defp bad_tool_error(agent) do
    failure =
      Enum.random([
        fn -> {:error, <<0xFF, ?a, 0xFE>>} end,
        fn -> raise <<"bad ", 0xFF>> end,
        fn -> throw(<<0xFF>>) end,
        fn -> exit({:bad, <<0xC3>>}) end,
        fn -> {:ok, <<0xFF>>} end,
        # Over the agent's message limit once written out.
        fn -> {:error, :binary.copy(<<0xFF>>, div(@tool_message_limit, 2))} end
      ])

    bad = Tool.new(name: "bad", parameters: [a: :integer], function: fn _ -> failure.() end)
    prompt = ~s({"calls": [{"name": "bad", "args": {"a": 1}}], "retry_calls": false})

    case Agent.run_sync(agent, prompt, tools: [bad], timeout: 5_000) do
      {:ok, %Result{output: output}} ->
        # The model got a retry prompt for the call.
        if String.contains?(output, ~s("retry")), do: :ok, else: :tool_outcome_lost

      other ->
        classify(other)
    end
  end

  # A run/3 caller that keeps only the ref, the struct garbage collected:
  # the run must answer all the same, once.
  defp dropped_run(agent) do
    case ref_only(fn -> Agent.run(agent, "3 0.01", timeout: 5_000) end) do
      {:ok, ref} ->
        :erlang.garbage_collect()

        receive do
          {:synapse_reply, ^ref, reply} -> classify(reply)
        after
          @reply_bound -> :no_reply
        end

      {:error, error} ->
        classify({:error, error})
    end
  end

  # A receiver with window: :infinity that keeps only the ref.
  defp dropped_stream(agent) do
    start = fn -> Agent.run_stream(agent, "5 0.01", stream_to: self(), window: :infinity) end

    case ref_only(start) do
      {:ok, ref} ->
        :erlang.garbage_collect()
        receive_stream(ref)

      {:error, error} ->
        classify({:error, error})
    end
  end

  defp ref_only(start) do
    case start.() do
      {:ok, %Run{ref: ref}} -> {:ok, ref}
      {:error, error} -> {:error, error}
    end
  end

  defp receive_stream(ref) do
    receive do
      {:synapse_event, ^ref, {:result, %Result{}}} -> :ok
      {:synapse_event, ^ref, {:error, %Error{kind: kind}}} -> kind
      {:synapse_event, ^ref, _event} -> receive_stream(ref)
    after
      @reply_bound -> :no_reply
    end
  end

  ## Signals

  # Faults hit the soak's own agents only: the workers of other agents in
  # this VM (a test suite's) are not the soak's to kill.
  defp fault_loop({signals, names} = plan, every, parent, counts) do
    receive do
      :stop ->
        # Shepherds still waiting for their SIGCONT get it now; those left
        # stopped on purpose stay so, for their agent's stop to deal with.
        for {:resume, os_pid} <- flush_resumes(), do: signal(os_pid, "CONT")
        send(parent, {:faults, counts})

      {:resume, os_pid} ->
        signal(os_pid, "CONT")
        fault_loop(plan, every, parent, counts)
    after
      div(every, 2) + :rand.uniform(every) ->
        case signals do
          [] ->
            fault_loop(plan, every, parent, counts)

          [fault | rest] ->
            injected? = inject(fault, names)
            counts = if injected?, do: Map.update(counts, fault, 1, &(&1 + 1)), else: counts
            fault_loop({rest ++ [fault], names}, every, parent, counts)
        end
    end
  end

  defp flush_resumes do
    receive do
      {:resume, _} = resume -> [resume | flush_resumes()]
    after
      0 -> []
    end
  end

  defp inject(:worker_kill, names) do
    random_signal(worker_os_pids(names), "KILL")
  end

  defp inject(:shepherd_kill, names), do: random_signal(shepherd_os_pids(names), "KILL")

  defp inject(:shepherd_stop, names) do
    case shepherd_os_pids(names) do
      [] ->
        false

      os_pids ->
        os_pid = Enum.random(os_pids)
        signal(os_pid, "STOP")
        # Half are resumed (a pause), half left stopped (a hung shepherd).
        if :rand.uniform(2) == 1,
          do: Process.send_after(self(), {:resume, os_pid}, :rand.uniform(2_000))

        true
    end
  end

  defp random_signal([], _signal), do: false

  defp random_signal(os_pids, signal) do
    signal(Enum.random(os_pids), signal)
    true
  end

  defp signal(os_pid, signal),
    do: System.cmd("kill", ["-#{signal}", Integer.to_string(os_pid)], stderr_to_stdout: true)

  ## Starts and stops racing

  # Agents started and stopped while the soak runs, each in one of the ways
  # a start can be interrupted; every start and stop must answer, typed, and
  # no name may stay taken.
  defp lifecycle_loop(deadline, n, counts) do
    if System.monotonic_time(:millisecond) > deadline do
      counts
    else
      name = :"soak_lifecycle_#{n}"

      outcomes =
        lifecycle(Enum.random([:stop_during_start, :starter_killed, :start_call_stop]), name)

      # Whatever happened, the name is free again once stopped.
      stopped = SynapseCore.stop_agent(name)
      freed = not name_held?(name)
      outcomes = [stop_outcome(stopped) | outcomes] ++ if(freed, do: [], else: [:name_kept])
      counts = Enum.reduce(outcomes, counts, fn o, acc -> Map.update(acc, o, 1, &(&1 + 1)) end)
      lifecycle_loop(deadline, n + 1, counts)
    end
  end

  defp lifecycle(:stop_during_start, name) do
    starter = start_async(name, good_agent())
    Process.sleep(:rand.uniform(1_500))
    stop = stop_outcome(SynapseCore.stop_agent(name))
    [stop, await_start(starter)]
  end

  defp lifecycle(:starter_killed, name) do
    # Half of the time the start would fail: its failure reports to nobody.
    agent = Enum.random([good_agent(), "synapse_fixtures.no_such_module:agent"])
    {pid, _} = starter = start_async(name, agent)
    Process.sleep(:rand.uniform(800))
    Process.exit(pid, :kill)

    case await_start(starter) do
      :start_interrupted ->
        # The name must not be held by a start nobody waits for: a new start
        # gets its own answer, not "already running".
        [retry_start(name), :start_interrupted]

      outcome ->
        [outcome]
    end
  end

  defp lifecycle(:start_call_stop, name) do
    case start_outcome(SynapseCore.start_agent(lifecycle_options(name, good_agent()))) do
      :started -> [classify(Agent.run_sync(name, "hi", timeout: 5_000)), :started]
      other -> [other]
    end
  end

  defp retry_start(name) do
    # The killed starter's start may still be finishing (a supervisor
    # stopping a failed agent): wait for the name to come free.
    deadline = System.monotonic_time(:millisecond) + @reply_bound

    Stream.repeatedly(fn -> SynapseCore.stop_agent(name) end)
    |> Enum.find(fn _ ->
      not name_held?(name) or
        System.monotonic_time(:millisecond) > deadline or (Process.sleep(50) && false)
    end)

    options = lifecycle_options(name, "synapse_fixtures.no_such_module:agent")

    case SynapseCore.start_agent(options) do
      {:error, %Error{kind: :startup_failed}} -> :startup_failed
      {:error, %Error{message: message}} -> {:name_kept, message}
      other -> {:untyped, other}
    end
  end

  # A live process holds the name (the registry forgets a dead one a moment
  # after its exit).
  defp name_held?(name) do
    SynapseCore.AgentRegistry
    |> Registry.lookup(name)
    |> Enum.any?(fn {pid, _} -> Process.alive?(pid) end)
  end

  defp good_agent, do: "synapse_fixtures.agents:echo_agent"

  defp lifecycle_options(name, agent),
    do: [name: name, agent: agent, python_path: [@fixtures], shutdown_timeout: 1_000]

  defp start_async(name, agent) do
    parent = self()
    options = lifecycle_options(name, agent)

    spawn_monitor(fn ->
      send(parent, {:started, self(), SynapseCore.start_agent(options)})
    end)
  end

  defp await_start({pid, monitor}) do
    receive do
      {:started, ^pid, result} ->
        Process.demonitor(monitor, [:flush])
        start_outcome(result)

      {:DOWN, ^monitor, :process, _, :killed} ->
        :start_interrupted

      {:DOWN, ^monitor, :process, _, reason} ->
        {:starter_crashed, reason}
    after
      @reply_bound -> :no_reply
    end
  end

  defp start_outcome({:ok, pid}) when is_pid(pid), do: :started
  defp start_outcome({:error, %Error{kind: kind}}), do: kind
  defp start_outcome(other), do: {:untyped, other}

  defp stop_outcome(:ok), do: :stopped
  defp stop_outcome({:error, %Error{kind: kind}}), do: kind
  defp stop_outcome(other), do: {:untyped, other}

  ## Leaks

  # The state that must not grow: OS processes (grandchildren included),
  # file descriptors, ports, registry entries, tool tasks, memory.
  defp measure(names, grandchildren) do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)

    %{
      worker_processes: names |> Enum.flat_map(&Agent.workers/1) |> length(),
      os_processes: length(os_processes()),
      grandchildren:
        grandchildren |> grandchild_pids() |> Enum.count(&SynapseCore.TestHelpers.os_alive?/1),
      fds: open_fds(),
      ports: length(Port.list()),
      registry_entries:
        Registry.count(SynapseCore.WorkerRegistry) + Registry.count(SynapseCore.AgentRegistry),
      tool_tasks: length(Task.Supervisor.children(SynapseCore.ToolSupervisor)),
      processes: length(Process.list()),
      memory_bytes: :erlang.memory(:total)
    }
  end

  # Workers come back and in-flight cleanups finish: measure until stable.
  defp settle(measure, before, tries \\ 60) do
    now = measure.()

    if tries == 0 or leaks(before, now) == [] do
      now
    else
      Process.sleep(250)
      settle(measure, before, tries - 1)
    end
  end

  # Measures once the warm-up's processes are gone.
  defp quiet(measure, tries \\ 60) do
    now = measure.()

    if tries == 0 or now.os_processes == 0 do
      now
    else
      Process.sleep(250)
      quiet(measure, tries - 1)
    end
  end

  # The soak's OS processes still alive, whatever the leak check said, are
  # killed: a failed soak must not leave them behind on the machine.
  defp cleanup(final, dir) do
    if final.os_processes > 0 or final.grandchildren > 0 do
      pids =
        Enum.map(os_processes(), & &1.pid) ++ grandchild_pids(Path.join(dir, "grandchildren"))

      for pid <- pids, do: System.cmd("kill", ["-9", Integer.to_string(pid)])
    end

    File.rm_rf!(dir)
  end

  defp grandchild_pids(file) do
    file |> File.read!() |> String.split("\n", trim: true) |> Enum.map(&String.to_integer/1)
  end

  defp open_fds, do: "/proc/self/fd" |> File.ls!() |> length()

  # The Python workers of the agents named, and their shepherds.
  defp worker_os_pids(names),
    do: for(name <- names, %{os_pid: os_pid} <- Agent.workers(name), os_pid, do: os_pid)

  defp shepherd_os_pids(names) do
    workers = worker_os_pids(names)
    for %{python?: true, pid: pid, ppid: ppid} <- os_processes(), pid in workers, do: ppid
  end

  # Shepherds and Python workers descending from this BEAM.
  defp os_processes do
    {out, 0} = System.cmd("ps", ["-e", "-o", "pid=,ppid=,args="])
    rows = for line <- String.split(out, "\n", trim: true), do: parse_ps(line)
    children = Enum.group_by(rows, & &1.ppid)
    descendants(children, String.to_integer(System.pid()))
  end

  defp parse_ps(line) do
    [pid, ppid | args] = String.split(line, " ", trim: true)
    args = Enum.join(args, " ")

    %{
      pid: String.to_integer(pid),
      ppid: String.to_integer(ppid),
      args: args,
      python?: String.contains?(args, "synapse_python.worker")
    }
  end

  defp descendants(children, pid) do
    for child <- Map.get(children, pid, []),
        acc <- [child | descendants(children, child.pid)],
        String.contains?(acc.args, ["synapse-shepherd", "synapse_python.worker"]),
        do: acc
  end

  # What grew. The counts may only come back to where they were, or below
  # (the test suite's other modules may close what they held meanwhile, a
  # descriptor or a port); the workers come back exactly. Memory may wobble
  # by what the VM caches (code, atoms, allocator carriers): 16 MiB or 25%,
  # whichever is larger.
  defp leaks(before, now) do
    counted = [:os_processes, :grandchildren, :fds, :ports, :registry_entries, :tool_tasks]

    counts = for key <- counted, now[key] > before[key], do: {key, before[key], now[key]}

    workers =
      if now.worker_processes != before.worker_processes,
        do: [{:worker_processes, before.worker_processes, now.worker_processes}],
        else: []

    slack = max(16 * 1024 * 1024, div(before.memory_bytes, 4))

    memory =
      if now.memory_bytes > before.memory_bytes + slack,
        do: [{:memory_bytes, before.memory_bytes, now.memory_bytes}],
        else: []

    processes =
      if now.processes > before.processes + 5,
        do: [{:processes, before.processes, now.processes}],
        else: []

    workers ++ counts ++ memory ++ processes
  end
end
