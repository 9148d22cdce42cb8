# The paths users take, each against what they would pick instead, measured
# in one run with the contenders interleaved round by round:
#
#   * run_sync on a TestModel agent (no tools; one Python tool; one Elixir
#     tool), against in-process pydantic-ai, a Python grpc.aio client of the
#     same worker's RunSync/Run, an ErlPort-shaped Port (packet 4 + ETF) and
#     a Port speaking JSON lines;
#   * a Bridge call of `add(a: int, b: int) -> int`, against the same two
#     Ports and a plain call in Python;
#   * throughput at concurrency 1, 16 and 64 with 1 and 2 workers (one Port
#     process per worker; in-process Python with 1 and 2 processes);
#   * the CPU per call of each side.
#
# Started by bench/run, which builds what this needs first:
#
#   MIX_ENV=prod mix run bench/paths.exs [--quick] [--out DIR]
#   MIX_ENV=prod mix run bench/paths.exs --report-only [--out DIR]
#
# Writes DIR/results.json (default bench/results), then DIR/report.md and
# DIR/chart.png; with --report-only, only the last two, from the JSON files
# there (the echo benchmark's too, under DIR/echo/, when present).
for file <- ~w(bench_support.ex paths_support.ex port_peer.ex paths_report.ex) do
  Code.require_file("support/#{file}", __DIR__)
end

alias SynapseCore.Bench.{Machine, Paths, PathsReport, PortPeer, Proc}

{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [
      quick: :boolean,
      out: :string,
      command: :string,
      report_only: :boolean,
      transport: :string
    ]
  )

out = Keyword.get(opts, :out, Path.expand("results", __DIR__))
File.mkdir_p!(out)

if opts[:report_only] do
  PathsReport.write(out)
  System.halt(0)
end

quick? = Keyword.get(opts, :quick, false)
Logger.configure(level: :error)
root = Path.expand("..", __DIR__)
bench_python = Path.join(root, "bench/python")
bench_bridge = Path.join(root, "bench/bridge")

scale = %{
  rounds: if(quick?, do: 2, else: 5),
  calls: %{
    "minimal" => if(quick?, do: 40, else: 150),
    "python_tool" => if(quick?, do: 30, else: 100),
    "elixir_tool" => if(quick?, do: 30, else: 60),
    "add" => if(quick?, do: 300, else: 1_500)
  },
  # A plain call in Python takes well under a microsecond: more of them,
  # for a CPU time above /proc's and getrusage's resolution.
  inprocess_add_calls: 200_000,
  # The pause of the paced in-process contender before each run: about what
  # a worker waits between two runs of a caller with one in flight.
  inprocess_pause_us: 1_000,
  throughput_rounds: if(quick?, do: 1, else: 3),
  seconds: 1,
  concurrency: [1, 16, 64],
  workers: [1, 2]
}

load_start = %{
  "loadavg" => Proc.loadavg(),
  "busy" => Proc.machine_busy_seconds(),
  "bench" => Proc.tree_cpu_seconds(),
  "at" => System.monotonic_time(:millisecond)
}

{:ok, _} = Application.ensure_all_started(:synapse_core)

IO.puts("== the Bridge of bench/bridge/bench_add.py, generated as a user generates it")
generated = Path.join(root, "_build/bench_bridge")
File.rm_rf!(generated)

Mix.Task.run("synapse.gen.bridge", [
  "bench_add",
  "--python-path",
  bench_bridge,
  "--lib",
  Path.join(generated, "lib"),
  "--out",
  Path.join(generated, "priv")
])

[{bridge_client, _}] = Code.compile_file(Path.join(generated, "lib/bench_add.ex"))

IO.puts("== workers and ports")
# The prompt of bench/python/bench_agents.py (PROMPT), which the Python
# contenders use.
prompt = "Where is my order?"

tool =
  SynapseCore.Tool.new(
    name: "order_status",
    description: "The shipping status of an order.",
    parameters: [order_id: [type: :integer]],
    function: fn %{order_id: id}, _context -> {:ok, Paths.order_status_text(id)} end
  )

# `--transport lane|grpc`: how Synapse's calls reach its local workers
# (default: the library's default, which `:transport` documents).
transport =
  case opts[:transport] do
    nil -> []
    name when name in ["lane", "grpc"] -> [transport: String.to_atom(name)]
    other -> raise ArgumentError, "--transport is lane or grpc, got: #{inspect(other)}"
  end

start_agent = fn name, agent, workers, extra ->
  {:ok, _} =
    SynapseCore.start_agent(
      [
        name: name,
        agent: "bench_agents:#{agent}",
        python_path: [bench_python],
        workers: workers,
        health_interval: 30_000
      ] ++ transport ++ extra
    )
end

start_agent.(:paths_minimal_1, "minimal_agent", 1, [])
start_agent.(:paths_minimal_2, "minimal_agent", 2, [])
start_agent.(:paths_python_tool, "python_tool_agent", 1, [])
start_agent.(:paths_elixir_tool, "minimal_agent", 1, tools: [tool])

for workers <- scale.workers do
  {:ok, _} =
    SynapseCore.Bridge.start_link(
      [
        name: :"paths_add_#{workers}",
        module: "bench_add",
        python_path: [Path.join(generated, "priv"), bench_bridge],
        workers: workers,
        health_interval: 30_000
      ] ++ transport
    )
end

# The worker side of a Synapse call: the Python workers and their shepherds.
worker_pids = fn name ->
  pids = name |> SynapseCore.Agent.workers() |> Enum.map(& &1.os_pid)

  shepherds =
    for pid <- pids do
      [_, rest] = "/proc/#{pid}/stat" |> File.read!() |> String.split(") ", parts: 2)
      rest |> String.split(" ") |> Enum.at(1) |> String.to_integer()
    end

  pids ++ shepherds
end

addresses = fn name ->
  name |> SynapseCore.Agent.workers() |> Enum.map_join(",", & &1.address)
end

# bench/python/grpc_runs.py with `args`, on the workers of agent `name`.
grpc_runs = fn args, name ->
  args
  |> Kernel.++(["--address", addresses.(name)])
  |> Kernel.++(["--worker-pids", name |> worker_pids.() |> Enum.join(",")])
  |> then(&Paths.python("grpc_runs.py", &1, [SynapseCore.Python.package_dir()]))
  |> Paths.from_python()
end

callbacks = %{"order_status" => fn %{"order_id" => id} -> Paths.order_status_text(id) end}

peers =
  for codec <- [:etf, :jsonl], into: %{} do
    {codec,
     for(_ <- 1..Enum.max(scale.workers), do: elem(PortPeer.start_link(codec, callbacks), 1))}
  end

peer_pids = Map.new(peers, fn {codec, list} -> {codec, Enum.map(list, &PortPeer.os_pid/1)} end)

# Every contender answers the same for the same case: checked once, before
# anything is measured.
expected = %{
  "minimal" => "success (no tool calls)",
  "python_tool" => ~s({"order_status":"order 0: shipped"}),
  "elixir_tool" => ~s({"order_status":"order 0: shipped"})
}

agent_of = %{
  "minimal" => :paths_minimal_1,
  "python_tool" => :paths_python_tool,
  "elixir_tool" => :paths_elixir_tool
}

for {run_case, output} <- expected do
  {:ok, %{output: ^output}} = SynapseCore.Agent.run_sync(agent_of[run_case], prompt)

  for codec <- [:etf, :jsonl] do
    {:ok, %{"output" => ^output}} = PortPeer.call(hd(peers[codec]), "run_#{run_case}", [prompt])
  end
end

{:ok, 3} = apply(bridge_client, :add, [:paths_add_1, 1, 2])

# The Ports' and in-process Python's latency contenders for `function` and
# `args` (what is called) and `inprocess_case` (bench/python/inprocess.py's).
baselines = fn function, args, inprocess_case, calls, inprocess_calls ->
  ports =
    for codec <- [:etf, :jsonl] do
      peer = hd(peers[codec])

      {Atom.to_string(codec),
       fn ->
         Paths.latency(
           fn -> {:ok, _} = PortPeer.call(peer, function, args) end,
           calls,
           [hd(peer_pids[codec])]
         )
       end}
    end

  inprocess = fn pause_us ->
    fn ->
      ["latency", "--case", inprocess_case, "--calls", "#{inprocess_calls}"]
      |> Kernel.++(["--pause-us", "#{pause_us}"])
      |> then(&Paths.python("inprocess.py", &1))
      |> Paths.from_python()
    end
  end

  # The same runs with a pause before each, as a worker has between the
  # calls it is sent: a plain call of `add` has nothing to compare there.
  paced =
    if inprocess_case == "add",
      do: [],
      else: [{"inprocess_paced", inprocess.(scale.inprocess_pause_us)}]

  [{"inprocess", inprocess.(0)} | paced] ++ ports
end

contenders = fn
  "add" ->
    calls = scale.calls["add"]

    [
      {"synapse",
       fn ->
         Paths.latency(
           fn -> {:ok, 3} = apply(bridge_client, :add, [:paths_add_1, 1, 2]) end,
           calls,
           worker_pids.(:paths_add_1)
         )
       end}
      | baselines.("add", [1, 2], "add", calls, scale.inprocess_add_calls)
    ]

  run_case ->
    name = agent_of[run_case]
    calls = scale.calls[run_case]

    [
      {"synapse",
       fn ->
         Paths.latency(
           fn -> {:ok, _} = SynapseCore.Agent.run_sync(name, prompt) end,
           calls,
           worker_pids.(name)
         )
       end},
      # The same run, its result without the message history (as the Ports'
      # and in-process Python's, which hand back output and usage only).
      {"synapse_lean",
       fn ->
         Paths.latency(
           fn -> {:ok, _} = SynapseCore.Agent.run_sync(name, prompt, messages: false) end,
           calls,
           worker_pids.(name)
         )
       end},
      {"grpcio",
       fn -> grpc_runs.(["latency", "--case", run_case, "--calls", "#{calls}"], name) end}
      | baselines.("run_#{run_case}", [prompt], run_case, calls, calls)
    ]
end

cases = ["minimal", "python_tool", "elixir_tool", "add"]

show = fn label, result ->
  figure =
    if result["p50_us"],
      do: "p50 #{round(result["p50_us"])} µs",
      else: "#{round(result["calls_per_s"])} calls/s"

  IO.puts("  #{label}: #{figure}")
end

IO.puts("== 1. latency, one call in flight (#{scale.rounds} rounds)")
phase_started = System.monotonic_time(:millisecond)

latency_runs =
  cases
  |> Enum.flat_map(fn c -> for {name, f} <- contenders.(c), do: {{c, name}, f} end)
  |> Paths.rounds(scale.rounds, fn {c, name}, r -> show.("#{c} #{name}", r) end)

latency =
  Enum.reduce(latency_runs, %{}, fn {{c, name}, runs}, acc ->
    put_in(acc, [Access.key(c, %{}), name], Paths.summarize(runs))
  end)

# Ratios of Synapse's contender `who` to every other contender of each case.
ratios_of = fn who ->
  Map.new(cases, fn c ->
    {c,
     for {{^c, name}, runs} <- latency_runs,
         latency_runs[{c, who}] != nil,
         name != who,
         into: %{} do
       {name,
        %{
          "p50" => Paths.ratio(latency_runs[{c, who}], runs, "p50_us"),
          "p99" => Paths.ratio(latency_runs[{c, who}], runs, "p99_us")
        }}
     end}
  end)
end

latency_ratios = ratios_of.("synapse")
latency_ratios_lean = ratios_of.("synapse_lean")

latency_s = (System.monotonic_time(:millisecond) - phase_started) / 1000
IO.puts("== 2. throughput (#{scale.throughput_rounds} rounds of #{scale.seconds} s)")
phase_started = System.monotonic_time(:millisecond)

# One measurement of case `c` with `w` workers at concurrency `k`, per contender.
throughput_contenders = fn c, w, k ->
  agent = :"paths_minimal_#{w}"
  bridge = :"paths_add_#{w}"

  synapse_call =
    case c do
      "minimal" -> fn -> {:ok, _} = SynapseCore.Agent.run_sync(agent, prompt) end
      "add" -> fn -> {:ok, 3} = apply(bridge_client, :add, [bridge, 1, 2]) end
    end

  port_args = if c == "add", do: ["add", [1, 2]], else: ["run_minimal", [prompt]]

  synapse = [
    {"synapse",
     fn ->
       Paths.throughput(
         synapse_call,
         k,
         scale.seconds,
         worker_pids.(if c == "add", do: bridge, else: agent)
       )
     end}
  ]

  ports =
    for codec <- [:etf, :jsonl] do
      used = Enum.take(peers[codec], w)

      {Atom.to_string(codec),
       fn ->
         Paths.throughput(
           Paths.round_robin(used, fn peer ->
             {:ok, _} = apply(PortPeer, :call, [peer | port_args])
           end),
           k,
           scale.seconds,
           Enum.take(peer_pids[codec], w)
         )
       end}
    end

  grpcio =
    if c == "minimal" do
      [
        {"grpcio",
         fn ->
           ["throughput", "--case", "minimal", "--concurrency", "#{k}"]
           |> Kernel.++(["--seconds", "#{scale.seconds}"])
           |> grpc_runs.(agent)
         end}
      ]
    else
      []
    end

  # In-process Python: `w` processes sharing the `k` loops; a plain loop per
  # process for `add`, where concurrency means nothing (measured once, at 1).
  inprocess_args =
    cond do
      c == "minimal" and rem(k, w) == 0 -> ["--concurrency", "#{k}", "--processes", "#{w}"]
      c == "add" and k == 1 -> ["--concurrency", "#{w}", "--processes", "#{w}"]
      true -> nil
    end

  inprocess =
    if inprocess_args do
      [
        {"inprocess",
         fn ->
           Paths.python(
             "inprocess.py",
             ["throughput", "--case", c, "--seconds", "#{scale.seconds}" | inprocess_args]
           )
           |> Paths.from_python()
         end}
      ]
    else
      []
    end

  synapse ++ grpcio ++ ports ++ inprocess
end

throughput_runs =
  for(
    c <- ["minimal", "add"],
    w <- scale.workers,
    k <- scale.concurrency,
    {name, f} <- throughput_contenders.(c, w, k),
    do: {{c, w, k, name}, f}
  )
  |> Paths.rounds(scale.throughput_rounds, fn {c, w, k, name}, r ->
    show.("#{c} #{w} worker(s) concurrency #{k} #{name}", r)
  end)

throughput =
  Enum.reduce(throughput_runs, %{}, fn {{c, w, k, name}, runs}, acc ->
    put_in(
      acc,
      [Access.key(c, %{}), Access.key("#{w}", %{}), Access.key("#{k}", %{}), name],
      Paths.summarize(runs)
    )
  end)

throughput_ratios =
  Enum.reduce(throughput_runs, %{}, fn
    {{_c, _w, _k, "synapse"}, _}, acc ->
      acc

    {{c, w, k, name}, runs}, acc ->
      # In-process `add` is measured once per number of processes.
      synapse = throughput_runs[{c, w, k, "synapse"}]

      put_in(
        acc,
        [Access.key(c, %{}), Access.key("#{w}", %{}), Access.key("#{k}", %{}), name],
        Paths.ratio(synapse, runs, "calls_per_s")
      )
  end)

throughput_s = (System.monotonic_time(:millisecond) - phase_started) / 1000
elapsed_s = (System.monotonic_time(:millisecond) - load_start["at"]) / 1000
busy = Proc.machine_busy_seconds() - load_start["busy"]
bench_cpu = Proc.tree_cpu_seconds() - load_start["bench"]

results = %{
  "machine" => Machine.describe(),
  "command" => Keyword.get(opts, :command, "bench/run" <> if(quick?, do: " --quick", else: "")),
  "transport" => opts[:transport],
  "commit" =>
    root
    |> then(&System.cmd("git", ["-C", &1, "rev-parse", "--short", "HEAD"]))
    |> elem(0)
    |> String.trim(),
  "load" => %{
    "loadavg_start" => load_start["loadavg"],
    "loadavg_end" => Proc.loadavg(),
    "seconds" => elapsed_s,
    "latency_seconds" => latency_s,
    "throughput_seconds" => throughput_s,
    "busy_cores" => busy / elapsed_s,
    "bench_cores" => bench_cpu / elapsed_s,
    "other_cores" => max(busy - bench_cpu, 0) / elapsed_s
  },
  "scale" => Map.new(scale, fn {k, v} -> {Atom.to_string(k), v} end),
  "latency" => latency,
  "latency_ratios" => latency_ratios,
  "latency_ratios_lean" => latency_ratios_lean,
  "throughput" => throughput,
  "throughput_ratios" => throughput_ratios
}

{:ok, json} = SynapseCore.JSON.encode(results)
File.write!(Path.join(out, "results.json"), json)
IO.puts("== wrote #{Path.join(out, "results.json")} (#{round(elapsed_s)} s)")
PathsReport.write(out)
