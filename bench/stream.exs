# A streamed run, the path of a chat UI, against what a user would pick
# instead, measured in one run with the contenders interleaved round by
# round:
#
#   MIX_ENV=prod SYNAPSE_NATIVE_PROFILE=release mix run bench/stream.exs \
#     [--calls N] [--rounds R] [--seconds S] [--transport lane|grpc] [--out DIR]
#
# The agent is bench/python/bench_agents.py's `stream_agent`: no tools, one
# model response of 50 words, which pydantic-ai's TestModel streams a word
# at a time. Each contender streams the run and collects its text deltas:
#
#   * Synapse: `SynapseCore.Agent.run_stream/3` enumerated to its result
#     (and the same with `messages: false`, whose result leaves out the
#     message history, as the others' do);
#   * in-process pydantic-ai: `agent.run_stream_events(...)` in a loop in one
#     Python process, and the same loop paused 1 ms before each run;
#   * an ErlPort-shaped Port (`{:packet, 4}` and the external term format)
#     and a Port speaking JSON lines: the Python side iterates the same
#     events and sends each text delta to the BEAM as a message, then the
#     output and usage (bench/python/port_server.py's `run_stream`).
#
# Every contender's deltas are checked to make the agent's text before
# anything is measured. Printed: the p50 of N runs with one in flight (the
# median over R rounds), the CPU per run of each side, and runs per second
# with 16 in flight for S seconds (one worker, one Port process, one
# in-process Python process), each Synapse figure also as its ratio to each
# contender's in the same round; and written to DIR/report.md (default
# bench/results/stream; bench/run runs this too).
for file <- ~w(bench_support.ex paths_support.ex port_peer.ex) do
  Code.require_file("support/#{file}", __DIR__)
end

alias SynapseCore.Bench.{Machine, Paths, PortPeer, Proc}

{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [
      calls: :integer,
      rounds: :integer,
      seconds: :integer,
      transport: :string,
      out: :string,
      command: :string
    ]
  )

started_at = System.monotonic_time(:millisecond)
busy_at_start = Proc.machine_busy_seconds()
loadavg_at_start = Proc.loadavg()
out = Keyword.get(opts, :out, Path.expand("results/stream", __DIR__))

command =
  Keyword.get(opts, :command, Enum.join(["mix run bench/stream.exs" | System.argv()], " "))

commit =
  "git"
  |> System.cmd(["-C", Path.expand("..", __DIR__), "rev-parse", "--short", "HEAD"])
  |> elem(0)
  |> String.trim()

calls = Keyword.get(opts, :calls, 100)
rounds = Keyword.get(opts, :rounds, 5)
seconds = Keyword.get(opts, :seconds, 2)
concurrency = 16

transport =
  case Keyword.get(opts, :transport) do
    nil -> []
    name when name in ["lane", "grpc"] -> [transport: String.to_atom(name)]
    other -> raise ArgumentError, "--transport is lane or grpc, got: #{inspect(other)}"
  end

Logger.configure(level: :error)
{:ok, _} = Application.ensure_all_started(:synapse_core)
bench_python = Path.expand("python", __DIR__)

# bench/python/bench_agents.py's PROMPT.
prompt = "Where is my order?"

{:ok, _} =
  SynapseCore.start_agent(
    [
      name: :stream,
      agent: "bench_agents:stream_agent",
      python_path: [bench_python],
      health_interval: 30_000
    ] ++ transport
  )

worker_pids = Paths.worker_pids(:stream)

# The agent's answer, which every contender's deltas must make.
{:ok, %{output: text}} = SynapseCore.Agent.run_sync(:stream, prompt)

peers =
  for codec <- [:etf, :jsonl], into: %{} do
    {:ok, peer} = PortPeer.start_link(codec, %{})
    {codec, peer}
  end

# One streamed run of each contender on the BEAM: its text deltas, in order.
synapse = fn options ->
  fn ->
    :stream
    |> SynapseCore.Agent.run_stream(prompt, options)
    |> Enum.reduce([], fn
      {:text_delta, delta}, deltas -> [delta | deltas]
      {:result, %SynapseCore.Result{}}, deltas -> Enum.reverse(deltas)
      _other, deltas -> deltas
    end)
  end
end

port = fn codec ->
  fn ->
    {{:ok, %{"output" => _}}, deltas} =
      PortPeer.stream(peers[codec], "run_stream", [prompt], [], &[&1 | &2])

    Enum.reverse(deltas)
  end
end

beam_contenders = [
  {"synapse", synapse.([]), worker_pids},
  {"synapse_lean", synapse.(messages: false), worker_pids},
  {"etf", port.(:etf), [PortPeer.os_pid(peers.etf)]},
  {"jsonl", port.(:jsonl), [PortPeer.os_pid(peers.jsonl)]}
]

for {name, run, _pids} <- beam_contenders do
  deltas = run.()

  if Enum.join(deltas) != text or length(deltas) < length(String.split(text)),
    do: raise("#{name} streamed #{length(deltas)} deltas: #{inspect(Enum.join(deltas))}")
end

inprocess = fn args ->
  fn -> args |> then(&Paths.python("inprocess.py", &1)) |> Paths.from_python() end
end

latency_contenders =
  for({name, run, pids} <- beam_contenders, do: {name, fn -> Paths.latency(run, calls, pids) end}) ++
    [
      {"inprocess", inprocess.(["latency", "--case", "stream", "--calls", "#{calls}"])},
      {"inprocess_paced",
       inprocess.(["latency", "--case", "stream", "--calls", "#{calls}", "--pause-us", "1000"])}
    ]

throughput_contenders =
  for(
    {name, run, pids} <- beam_contenders,
    do: {name, fn -> Paths.throughput(run, concurrency, seconds, pids) end}
  ) ++
    [
      {"inprocess",
       inprocess.(
         ~w(throughput --case stream --concurrency #{concurrency} --processes 1 --seconds #{seconds})
       )}
    ]

IO.puts("== one streamed run in flight, #{calls} runs a round, #{rounds} rounds")

latency =
  Paths.rounds(latency_contenders, rounds, fn name, result ->
    IO.puts("  #{name}: p50 #{round(result["p50_us"])} µs")
  end)

IO.puts("== #{concurrency} streamed runs in flight, #{seconds} s a round, #{rounds} rounds")

throughput =
  Paths.rounds(throughput_contenders, rounds, fn name, result ->
    IO.puts("  #{name}: #{round(result["calls_per_s"])} runs/s")
  end)

f = fn
  nil -> "–"
  number -> :erlang.float_to_binary(number * 1.0, decimals: 0)
end

# A table of `runs` (contender => its rounds), `key` the figure compared:
# each Synapse contender's ratio to every other contender's, round by round.
table = fn runs, heading, figure, key, others ->
  rows =
    for {name, rounds_of} <- Enum.sort(runs) do
      s = Paths.summarize(rounds_of)

      ratios =
        for other <- others do
          if String.starts_with?(name, "synapse"),
            do:
              :erlang.float_to_binary(Paths.ratio(rounds_of, runs[other], key), decimals: 2) <>
                "×",
            else: ""
        end

      Enum.join(
        ["", name, f.(s[key]), "#{f.(s["caller_cpu_us"])} + #{f.(s["python_cpu_us"])}"] ++
          ratios ++ [""],
        " | "
      )
      |> String.trim()
    end

  header = [heading, figure, "CPU µs a run: BEAM + Python"] ++ Enum.map(others, &"against #{&1}")

  Enum.join(
    [
      "| " <> Enum.join(header, " | ") <> " |",
      "|---|" <> String.duplicate("---:|", length(header) - 1)
      | rows
    ],
    "\n"
  )
end

busy_cores =
  (Proc.machine_busy_seconds() - busy_at_start) /
    ((System.monotonic_time(:millisecond) - started_at) / 1000)

report = """
# A streamed run, against what a user would pick instead

Produced by `#{command}` on #{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}, \
at commit `#{commit}`, on #{System.schedulers_online()} cores (#{Machine.describe()["cpu"]}); \
load average #{loadavg_at_start} at the start, #{Proc.loadavg()} at the end; \
#{:erlang.float_to_binary(busy_cores, decimals: 2)} cores busy on average.

`bench_agents.stream_agent` (TestModel, one response of 50 words streamed a
word at a time), every text delta collected. Medians over #{rounds} rounds,
the contenders interleaved; each Synapse figure's ratio to another
contender's is the median of its ratios round by round.

One run in flight (#{calls} runs a round), p50 of a whole streamed run:

#{table.(latency, "contender", "p50 µs", "p50_us", ~w(inprocess inprocess_paced etf jsonl))}

#{concurrency} runs in flight (#{seconds} s a round; one worker, one Port process, one
in-process Python process), runs per second:

#{table.(throughput, "contender", "runs/s", "calls_per_s", ~w(inprocess etf jsonl))}
"""

IO.puts("\n" <> report)
File.mkdir_p!(out)
File.write!(Path.join(out, "report.md"), report)
IO.puts("== wrote #{Path.join(out, "report.md")}")
