# The benchmarks, all in one run, each against its baselines measured in the
# same run on the same workers. Started by bench/run, which builds what this
# needs first:
#
#   bench/run [--quick]
#
# Writes bench/results/results.json (raw numbers), bench/results/report.md
# and bench/results/chart.png.
Code.require_file("support/bench_support.ex", __DIR__)

alias SynapseCore.Bench.{Baselines, Machine, Measure, Report}

{opts, _} =
  OptionParser.parse!(System.argv(), strict: [quick: :boolean, out: :string, command: :string])

quick? = Keyword.get(opts, :quick, false)
out = Keyword.get(opts, :out, Path.expand("results", __DIR__))
File.mkdir_p!(out)
Logger.configure(level: :error)

fixtures = Path.expand("../test/support/python", __DIR__)
{:ok, _} = Application.ensure_all_started(:synapse_core)

scale = %{
  latency_calls: if(quick?, do: 500, else: 2_000),
  rounds: if(quick?, do: 1, else: 3),
  seconds: if(quick?, do: 1, else: 3),
  concurrency: [1, 16, 64, 256],
  stream_count: 1_000,
  stream_repeat: if(quick?, do: 3, else: 10),
  runs: if(quick?, do: 1_000, else: 10_000),
  cold_starts: if(quick?, do: 2, else: 5)
}

start = fn name, workers ->
  {:ok, _} =
    SynapseCore.start_agent(name: name, model: "test", workers: workers, health_interval: 30_000)

  # Each worker's gRPC address and its lane.
  name |> SynapseCore.Agent.workers() |> Enum.map(&Map.take(&1, [:address, :lane])) |> Enum.sort()
end

addresses = fn workers -> workers |> Enum.map(& &1.address) |> Enum.join(",") end
lanes = fn workers -> workers |> Enum.map(& &1.lane) |> Enum.join(",") end

IO.puts("== workers")
one = start.(:bench_one, 1)
two = start.(:bench_two, 2)
payload = String.duplicate("x", 64)

IO.puts("== 1. latency of an echo, one call in flight")

# The machine is shared with the workers and noisy: each client is measured
# in rounds, interleaved with the others, and the median round is kept.
calls = "#{scale.latency_calls}"

tonic_latency = fn extra ->
  Baselines.tonic(
    ["latency" | extra] ++ ["--address", addresses.(one), "--calls", calls, "--payload", "64"]
  )
end

latency_clients = %{
  "synapse" => fn ->
    Measure.latency(
      fn -> {:ok, _} = SynapseCore.Probe.echo(:bench_one, payload) end,
      scale.latency_calls
    )
  end,
  "tonic_lane" => fn -> tonic_latency.(["--lane", lanes.(one)]) end,
  "tonic" => fn -> tonic_latency.([]) end,
  "grpcio" => fn ->
    Baselines.grpcio([
      "latency",
      "--address",
      addresses.(one),
      "--calls",
      calls,
      "--payload",
      "64"
    ])
  end,
  "port_jsonl" => fn -> Baselines.port_jsonl(payload, scale.latency_calls) end
}

latency = Measure.rounds(latency_clients, scale.rounds, "p50_us")
IO.inspect(Map.new(latency, fn {k, v} -> {k, Map.take(v, ["p50_us", "p99_us"])} end))

IO.puts("== 2. throughput")

tonic_throughput = fn workers, c ->
  Baselines.tonic([
    "throughput",
    "--address",
    addresses.(workers),
    "--lane",
    lanes.(workers),
    "--concurrency",
    "#{c}",
    "--seconds",
    "#{scale.seconds}",
    "--payload",
    "64"
  ])
end

synapse_throughput = fn name, c ->
  Measure.throughput(fn -> {:ok, _} = SynapseCore.Probe.echo(name, payload) end, c, scale.seconds)
end

throughput =
  for {label, name, workers} <- [{"1", :bench_one, one}, {"2", :bench_two, two}], reduce: %{} do
    acc ->
      points =
        for c <- scale.concurrency do
          measured =
            Measure.rounds(
              %{
                "synapse" => fn -> synapse_throughput.(name, c) end,
                "tonic" => fn -> tonic_throughput.(workers, c) end
              },
              scale.rounds,
              "calls_per_s"
            )

          for {client, point} <- measured do
            IO.puts(
              "  #{client} #{label} worker(s), concurrency #{c}: #{round(point["calls_per_s"])} calls/s, #{Float.round(point["cpu_us_per_call"] * 1.0, 1)} µs CPU/call"
            )
          end

          measured
        end

      acc
      |> Map.put("synapse_#{label}", Enum.map(points, & &1["synapse"]))
      |> Map.put("tonic_#{label}", Enum.map(points, & &1["tonic"]))
  end

IO.puts("== 3. streaming, #{scale.stream_count} events")

streaming = %{
  "synapse" =>
    Measure.stream(
      fn -> SynapseCore.Probe.echo_stream(:bench_one, payload, scale.stream_count) end,
      scale.stream_repeat
    ),
  "tonic" =>
    Baselines.tonic([
      "stream",
      "--address",
      addresses.(one),
      "--count",
      "#{scale.stream_count}",
      "--repeat",
      "#{scale.stream_repeat}",
      "--payload",
      "64"
    ])
}

IO.inspect(streaming)

IO.puts("== 4. scale: #{scale.runs} concurrent runs, 20 chunks 50 ms apart")

{:ok, _} =
  SynapseCore.start_agent(
    name: :bench_scale,
    agent: "synapse_fixtures.agents:slow_stream_agent",
    python_path: [fixtures],
    workers: 2,
    health_interval: 60_000
  )

scale_result =
  :bench_scale
  |> Measure.scale(scale.runs, "20 0.05", 1_000)
  |> Map.put("pydantic_ai_alone", Baselines.pydantic_ai_cost(min(scale.runs, 1_000), fixtures))

IO.inspect(Map.drop(scale_result, ["durations_ms"]))

IO.puts("== 5. cold start")
cold = Measure.cold_start(fixtures, scale.cold_starts)
IO.inspect(cold)

results = %{
  "machine" => Machine.describe(),
  "command" => Keyword.get(opts, :command, "bench/run" <> if(quick?, do: " --quick", else: "")),
  "scale" => Map.new(scale, fn {k, v} -> {Atom.to_string(k), v} end),
  "latency" => latency,
  "throughput" => throughput,
  "streaming" => streaming,
  "scale_runs" => Map.drop(scale_result, ["durations_ms"]),
  "cold_start" => cold
}

Report.write(results, out)
IO.puts("== wrote #{out}")
