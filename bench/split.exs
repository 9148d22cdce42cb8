# Where a call's CPU goes: the BEAM's and the worker's, per call, for the
# paths of bench/lane.exs (run_sync on a minimal agent, a Bridge `add` in a
# thread or on the worker's loop), with no baseline:
#
#   ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#     MIX_ENV=prod SYNAPSE_NATIVE_PROFILE=release \
#     mix run bench/split.exs [--path run|tool|thread|on_loop] [--concurrency C] \
#       [--calls N] [--rounds R] [--transport lane|grpc] [--threads] [--busy-wait-us US] \
#       [--workers W] [--tools T]
#
# Prints one line per round: wall time per call, then the CPU time per call
# of this VM and of the worker process, from /proc (clock ticks of 10 ms: a
# round of N calls reads to within 10 ms ÷ N per call). `tool` is `run` with
# one Elixir tool, which the agent calls once per run. `--threads` adds, per
# round, each of this VM's threads (by name) that ran: its context switches
# and CPU per call (where the BEAM's time goes: its schedulers, its aux
# thread, the NIF's tokio threads), then the same for the worker's threads
# (its event loop, grpc's, its pool's, the lane's). `--busy-wait-us` is the
# worker's `:busy_wait_us` (its default otherwise); `--workers` the pool's
# size (1 by default: the workers' CPU is their sum, `--threads` reads the
# first one's). `--tools` gives `run`'s agent that many Elixir tools (four
# parameters each) that its model calls none of: what every run of an agent
# with tools pays for them. Made for A/B
# comparisons of two builds run alternately on the same machine, where a
# difference in a few µs matters and a contender's own baseline does not.
{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [
      path: :string,
      concurrency: :integer,
      calls: :integer,
      rounds: :integer,
      transport: :string,
      threads: :boolean,
      busy_wait_us: :integer,
      workers: :integer,
      tools: :integer
    ]
  )

path = Keyword.get(opts, :path, "on_loop")

case opts[:tools] do
  nil -> :ok
  n when path != "run" -> raise ArgumentError, "--tools #{n} is for --path run, not #{path}"
  n when n < 1 -> raise ArgumentError, "--tools must be at least 1, got #{n}"
  _ -> :ok
end

concurrency = Keyword.get(opts, :concurrency, 1)
rounds = Keyword.get(opts, :rounds, 3)

transport =
  case Keyword.get(opts, :transport, "lane") do
    "lane" -> :lane
    "grpc" -> :grpc
  end

# The worker's options every path shares.
shared =
  [health_interval: :infinity, transport: transport] ++
    Keyword.take(opts, [:busy_wait_us, :workers])

calls = Keyword.get(opts, :calls, if(path in ["run", "tool"], do: 2_000, else: 20_000))

Logger.configure(level: :error)
{:ok, _} = Application.ensure_all_started(:synapse_core)
here = Path.expand("python", __DIR__)
dir = Path.join(System.tmp_dir!(), "synapse-split-#{System.pid()}")

defmodule SplitBench.Tool do
  @moduledoc false
  # Compiled (a script's closures are interpreted): the tool costs what it
  # would in an application.
  def order_status(%{order_id: id}, _context), do: {:ok, "order #{id}: shipped"}
  def search(args, _context), do: {:ok, args}
end

call =
  case path do
    run when run in ["run", "tool"] ->
      uncalled =
        for i <- 1..Keyword.get(opts, :tools, 0)//1 do
          SynapseCore.Tool.new(
            name: "search_#{i}",
            description: "Searches catalogue #{i} for the things that match.",
            parameters: [
              query: [type: :string, description: "What to look for."],
              limit: [type: :integer, description: "At most this many."],
              tags: [type: {:list, :string}, description: "Tags the things must carry."],
              exact: [type: :boolean, description: "Exact matches only."]
            ],
            function: &SplitBench.Tool.search/2
          )
        end

      {agent, tools} =
        case {run, uncalled} do
          {"tool", []} ->
            {"lane_bench:agent",
             [
               SynapseCore.Tool.new(
                 name: "order_status",
                 description: "The shipping status of an order.",
                 parameters: [order_id: [type: :integer]],
                 function: &SplitBench.Tool.order_status/2
               )
             ]}

          {"run", []} ->
            {"lane_bench:agent", []}

          {"run", uncalled} ->
            {"lane_bench:uncalled_tools_agent", uncalled}
        end

      {:ok, _} =
        SynapseCore.start_agent(
          [name: :split, agent: agent, python_path: [here], tools: tools] ++ shared
        )

      fn -> {:ok, _} = SynapseCore.Agent.run_sync(:split, "hello") end

    how when how in ["thread", "on_loop"] ->
      File.mkdir_p!(dir)
      config = Path.join(dir, "bridge.json")
      options = if how == "on_loop", do: %{"on_loop" => true}, else: %{}

      {:ok, json} =
        SynapseCore.JSON.encode(%{"module" => "lane_bench", "functions" => %{"add" => options}})

      File.write!(config, json)

      {:ok, files} =
        Mix.Tasks.Synapse.Gen.Bridge.generate(nil,
          config: config,
          python_path: here,
          elixir_module: "SplitBench",
          lib: Path.join(dir, "lib"),
          out: Path.join(dir, "priv")
        )

      files |> Enum.filter(&String.ends_with?(&1, ".ex")) |> Enum.each(&Code.compile_file/1)

      {:ok, _} =
        SynapseCore.Bridge.start_link(
          [name: :split, module: "lane_bench", python_path: [Path.join(dir, "priv"), here]] ++
            shared
        )

      client = SplitBench
      fn -> {:ok, 42} = client.add(:split, 20, 22) end
  end

[worker | _] = workers = :split |> SynapseCore.Agent.workers() |> Enum.map(& &1.os_pid)

# User and system CPU time of an OS process, in µs (clock ticks of 10 ms).
cpu_us = fn pid ->
  [_, after_name] = String.split(File.read!("/proc/#{pid}/stat"), ") ", parts: 2)
  fields = String.split(after_name, " ")
  (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * 10_000
end

# The pool's workers' CPU time, summed.
workers_cpu_us = fn -> workers |> Enum.map(cpu_us) |> Enum.sum() end

# An OS process's threads by name (several tokio threads share one), or,
# with `by_id` (Python names no thread), by name and id: context switches,
# voluntary or not, and CPU time in µs.
threads = fn os_pid, by_id ->
  task = "/proc/#{os_pid}/task"

  for id <- File.ls!(task), reduce: %{} do
    acc ->
      dir = Path.join(task, id)

      with {:ok, status} <- File.read(Path.join(dir, "status")),
           {:ok, stat} <- File.read(Path.join(dir, "stat")) do
        switches =
          ~r/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/m
          |> Regex.scan(status, capture: :all_but_first)
          |> Enum.map(fn [n] -> String.to_integer(n) end)
          |> Enum.sum()

        [name, after_name] = String.split(stat, ") ", parts: 2)
        name = name |> String.split("(", parts: 2) |> List.last()
        name = if by_id, do: "#{name} #{id}", else: name
        fields = String.split(after_name, " ")

        cpu =
          (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) *
            10_000

        Map.update(acc, name, {switches, cpu}, fn {s, c} -> {s + switches, c + cpu} end)
      else
        # A thread that ended meanwhile.
        _ -> acc
      end
  end
end

run = fn n ->
  1..concurrency
  # Each result dropped as it comes: kept, a round's results would be
  # copied to this process at its end, and their heap grown meanwhile,
  # on the BEAM's CPU that the round measures.
  |> Enum.map(fn _ ->
    Task.async(fn -> Enum.each(1..div(n, concurrency), fn _ -> call.() end) end)
  end)
  |> Task.await_many(:infinity)
end

# Warm-up: the first calls load modules and fill caches on both sides.
run.(div(calls, 10))

for _ <- 1..rounds do
  before =
    if opts[:threads], do: {threads.(System.pid(), false), threads.(worker, true)}, else: {}

  beam = cpu_us.(System.pid())
  python = workers_cpu_us.()
  started = System.monotonic_time(:microsecond)
  run.(calls)
  wall = System.monotonic_time(:microsecond) - started
  per_call = fn us -> :erlang.float_to_binary(us / calls, decimals: 1) end

  IO.puts(
    "#{path} c=#{concurrency} (#{transport}): wall #{per_call.(wall)} µs/call; " <>
      "CPU per call: BEAM #{per_call.(cpu_us.(System.pid()) - beam)} µs, " <>
      "worker#{if length(workers) > 1, do: "s"} " <>
      "#{per_call.(workers_cpu_us.() - python)} µs"
  )

  if opts[:threads] do
    {beam_before, worker_before} = before

    for {side, os_pid, by_id, before} <- [
          {"BEAM", System.pid(), false, beam_before},
          {"worker", worker, true, worker_before}
        ],
        {name, {switches, cpu}} <- Enum.sort(threads.(os_pid, by_id)),
        {switches_before, cpu_before} = Map.get(before, name, {0, 0}),
        (switches - switches_before) / calls >= 0.01 do
      IO.puts(
        "  #{side} #{name}: #{Float.round((switches - switches_before) / calls, 2)} switches, " <>
          "#{per_call.(cpu - cpu_before)} µs CPU per call"
      )
    end
  end
end

File.rm_rf!(dir)
