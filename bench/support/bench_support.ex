defmodule SynapseCore.Bench.Measure do
  @moduledoc false
  # Measurements made from the BEAM, through SynapseCore.

  @doc """
  Runs each named measurement `rounds` times, interleaved (a, b, c, a, b,
  c, ...), and keeps for each the round whose `key` is the median: on a
  shared, noisy machine every client sees the same conditions.
  """
  def rounds(measurements, rounds, key) do
    results =
      for _ <- 1..rounds, {name, measure} <- Enum.sort(measurements), do: {name, measure.()}

    results
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Map.new(fn {name, runs} ->
      sorted = Enum.sort_by(runs, & &1[key])
      {name, sorted |> Enum.at(div(length(sorted) - 1, 2)) |> Map.put("rounds", length(runs))}
    end)
  end

  @doc "p50/p99/mean/min of `calls` sequential calls of `fun`, after a warm-up."
  def latency(fun, calls) do
    for _ <- 1..div(calls, 10), do: fun.()

    samples =
      for _ <- 1..calls do
        started = System.monotonic_time(:nanosecond)
        fun.()
        System.monotonic_time(:nanosecond) - started
      end

    summary(samples) |> Map.put("calls", calls) |> Map.put("client", "synapse")
  end

  @doc "Calls/s of `concurrency` loops calling `fun` for `seconds`, and the BEAM's CPU per call."
  def throughput(fun, concurrency, seconds) do
    warm_until = System.monotonic_time(:millisecond) + 500
    loop(fun, warm_until, concurrency)

    cpu_before = os_cpu_seconds()
    started = System.monotonic_time(:microsecond)
    deadline = System.monotonic_time(:millisecond) + seconds * 1_000
    calls = loop(fun, deadline, concurrency)
    elapsed = (System.monotonic_time(:microsecond) - started) / 1.0e6
    cpu = os_cpu_seconds() - cpu_before

    %{
      "client" => "synapse",
      "concurrency" => concurrency,
      "calls" => calls,
      "seconds" => elapsed,
      "calls_per_s" => calls / elapsed,
      "cpu_seconds" => cpu,
      "cpu_us_per_call" => cpu * 1.0e6 / max(calls, 1)
    }
  end

  @doc "`concurrency` loops calling `fun` with one call in flight each until `deadline`: the calls made."
  def loop(fun, deadline, concurrency) do
    1..concurrency
    |> Enum.map(fn _ -> Task.async(fn -> count_until(fun, deadline, 0) end) end)
    |> Task.await_many(:infinity)
    |> Enum.sum()
  end

  defp count_until(fun, deadline, n) do
    if System.monotonic_time(:millisecond) >= deadline do
      n
    else
      fun.()
      count_until(fun, deadline, n + 1)
    end
  end

  # The BEAM OS process's user + system time: schedulers, dirty schedulers
  # and the NIF's tokio threads alike.
  def os_cpu_seconds do
    [_pid, rest] = "/proc/self/stat" |> File.read!() |> String.split(") ", parts: 2)
    fields = String.split(rest, " ")
    ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
    ticks / clock_ticks()
  end

  defp clock_ticks do
    {out, 0} = System.cmd("getconf", ["CLK_TCK"])
    out |> String.trim() |> String.to_integer()
  end

  @doc "Time to first event and per-event cost of a stream (medians over `repeat`)."
  def stream(make_stream, repeat) do
    make_stream.() |> Stream.run()

    runs =
      for _ <- 1..repeat do
        started = System.monotonic_time(:nanosecond)

        {first, last, count} =
          make_stream.()
          |> Enum.reduce({nil, nil, 0}, fn _event, {first, _last, count} ->
            now = System.monotonic_time(:nanosecond)
            {first || now, now, count + 1}
          end)

        {(first - started) / 1000, (last - first) / 1000 / max(count - 1, 1),
         (last - started) / 1000}
      end

    %{
      "client" => "synapse",
      "count" => runs |> hd() |> then(fn _ -> nil end),
      "first_event_us" => median(Enum.map(runs, &elem(&1, 0))),
      "per_event_us" => median(Enum.map(runs, &elem(&1, 1))),
      "total_us" => median(Enum.map(runs, &elem(&1, 2)))
    }
    |> Map.delete("count")
  end

  @doc """
  `runs` concurrent streamed runs of `name` on `prompt`, whose model takes
  `model_ms` itself: completions, the overhead over the model's own time,
  BEAM memory per run in flight, long schedules.
  """
  def scale(name, runs, prompt, model_ms) do
    :erlang.system_monitor(self(), [{:long_schedule, 5}])
    collect_garbage()
    memory_before = :erlang.memory(:total)
    memory_before_by = Map.new(:erlang.memory())
    parent = self()

    # Plain processes, the leanest a caller can be: what is measured is
    # Synapse's share, not a task library's.
    #
    # With them, in the same burst, a control group with no Synapse in it:
    # one plain process per ten runs that does about as much work as a
    # run's first slice (picking a worker, starting the RPC), then exits.
    # Long schedules among them are the machine's (the OS taking a
    # scheduler thread away while more threads than cores want to run), the
    # rate against which the consumers' are read.
    {callers, control} =
      1..runs
      |> Enum.map(fn i ->
        caller =
          spawn(fn ->
            started = System.monotonic_time(:millisecond)

            outcome =
              try do
                # Keeps only the last event: the consumer's own memory is not
                # what is measured.
                {last, events} =
                  name
                  |> SynapseCore.Agent.run_stream(prompt, timeout: 600_000)
                  |> Enum.reduce({nil, 0}, fn event, {_, n} -> {event, n + 1} end)

                if match?({:result, _}, last), do: {:ok, events}, else: :bad
              rescue
                error -> {:error, Exception.message(error)}
              end

            send(parent, {:done, outcome, System.monotonic_time(:millisecond) - started})
          end)

        {caller, if(rem(i, 10) == 0, do: spawn(&control_slice/0))}
      end)
      |> Enum.unzip()

    control = Enum.reject(control, &is_nil/1)

    # The memory of all runs in flight: sampled once every run has started
    # and before the first can have finished.
    Process.sleep(min(model_ms, 800))
    memory_peak = :erlang.memory(:total)
    memory_peak_by = Map.new(:erlang.memory())
    sample = Enum.take_random(callers, min(runs, 200))
    process_memory = process_memory(sample)

    # The same, once every process's garbage is collected, as
    # test/synapse_core/in_flight_test.exs counts it: what the runs hold,
    # without what the consumers received and let go of.
    collect_garbage()
    memory_held = :erlang.memory(:total)
    process_memory_held = process_memory(sample)

    results =
      for _ <- 1..runs,
          do: receive(do: ({:done, outcome, ms} -> {outcome, ms}), after: (900_000 -> {:lost, 0}))

    :erlang.system_monitor(self(), [])

    long = collect_long_schedules([])
    control_set = MapSet.new(control)
    {long_control, long} = Enum.split_with(long, fn {pid, _} -> pid in control_set end)
    consumer_events = for({{:ok, n}, _} <- results, do: n) |> Enum.sum()

    durations = Enum.map(results, &elem(&1, 1))
    ok = Enum.count(results, &match?({{:ok, _}, _}, &1))
    overheads = Enum.map(durations, &((&1 - model_ms) / model_ms))

    %{
      "runs" => runs,
      "completed" => ok,
      "failed" => runs - ok,
      "failures" =>
        results |> Enum.reject(&match?({{:ok, _}, _}, &1)) |> Enum.take(3) |> inspect(),
      "model_ms" => model_ms,
      "duration_p50_ms" => percentile(durations, 50),
      "duration_p99_ms" => percentile(durations, 99),
      "overhead_p50" => percentile(overheads, 50),
      "overhead_p99" => percentile(overheads, 99),
      "memory_per_run_bytes" => div(max(memory_peak - memory_before, 0), runs),
      "caller_process_bytes" => mean(process_memory),
      "memory_held_per_run_bytes" => div(max(memory_held - memory_before, 0), runs),
      "caller_process_held_bytes" => mean(process_memory_held),
      "long_schedules" => length(long),
      "long_schedules_synapse" => Enum.count(long, &synapse?/1),
      "long_schedules_nif" => Enum.count(long, &nif?/1),
      "consumer_events" => consumer_events,
      "control_processes" => length(control),
      "long_schedules_control" => length(long_control),
      "long_schedules_first_slice" => Enum.count(long, &(elem(&1, 1)[:in] == :undefined)),
      "memory_breakdown_per_run" =>
        Map.new([:processes, :binary, :ets, :system], fn kind ->
          {kind, div(max(memory_peak_by[kind] - memory_before_by[kind], 0), runs)}
        end)
        |> inspect(),
      "long_schedule_examples" => long |> Enum.take(5) |> inspect(),
      "durations_ms" => durations
    }
  end

  defp collect_garbage, do: Enum.each(Process.list(), &:erlang.garbage_collect/1)

  defp process_memory(pids) do
    Enum.flat_map(pids, fn pid ->
      case Process.info(pid, :memory) do
        {:memory, bytes} -> [bytes]
        nil -> []
      end
    end)
  end

  defp mean([]), do: nil
  defp mean(values), do: div(Enum.sum(values), length(values))

  # About 50 µs of work on this machine, the order of a run's first slice.
  defp control_slice, do: Enum.reduce(1..3_000, 0, &+/2)

  defp collect_long_schedules(acc) do
    receive do
      {:monitor, pid, :long_schedule, info} -> collect_long_schedules([{pid, info} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # A long schedule in or out of the NIF itself.
  defp nif?({_pid, info}) do
    Enum.any?([info[:in], info[:out]], &match?({SynapseCore.Native, _, _}, &1))
  end

  # A long schedule in or out of Synapse's code (its modules or its NIF).
  defp synapse?({_pid, info}) do
    Enum.any?([info[:in], info[:out]], fn
      {module, _, _} -> module |> Atom.to_string() |> String.starts_with?("Elixir.SynapseCore")
      _ -> false
    end)
  end

  @doc """
  Start to ready of one agent (median of `times`), against the time Python
  takes to import grpc and pydantic_ai; and four agents started at once.
  """
  def cold_start(fixtures, times) do
    {:ok, python} = SynapseCore.Python.interpreter()

    imports =
      for _ <- 1..times do
        started = System.monotonic_time(:microsecond)
        {_, 0} = System.cmd(python, ["-c", "import grpc, pydantic_ai"])
        (System.monotonic_time(:microsecond) - started) / 1000
      end

    agent = fn name ->
      [name: name, agent: "synapse_fixtures.agents:echo_agent", python_path: [fixtures]]
    end

    one =
      for i <- 1..times do
        name = :"cold_#{i}"
        started = System.monotonic_time(:microsecond)
        {:ok, _} = SynapseCore.start_agent(agent.(name))
        elapsed = (System.monotonic_time(:microsecond) - started) / 1000
        :ok = SynapseCore.stop_agent(name)
        elapsed
      end

    four =
      for round <- 1..times do
        names = for i <- 1..4, do: :"cold_#{round}_#{i}"
        started = System.monotonic_time(:microsecond)

        names
        |> Enum.map(&Task.async(fn -> {:ok, _} = SynapseCore.start_agent(agent.(&1)) end))
        |> Task.await_many(120_000)

        elapsed = (System.monotonic_time(:microsecond) - started) / 1000
        Enum.each(names, &SynapseCore.stop_agent/1)
        elapsed
      end

    %{
      "python_import_ms" => median(imports),
      "one_agent_ms" => median(one),
      "four_agents_ms" => median(four),
      "overhead_over_import_ms" => median(one) - median(imports),
      "four_over_one" => median(four) / median(one)
    }
  end

  def summary(samples_ns) do
    sorted = Enum.sort(samples_ns)

    %{
      "p50_us" => percentile(sorted, 50) / 1000,
      "p99_us" => percentile(sorted, 99) / 1000,
      "mean_us" => Enum.sum(sorted) / length(sorted) / 1000,
      "min_us" => hd(sorted) / 1000
    }
  end

  # Nearest rank, as the baseline clients compute it.
  def percentile(values, p) do
    sorted = Enum.sort(values)
    rank = max(ceil(p / 100 * length(sorted)), 1)
    Enum.at(sorted, rank - 1)
  end

  def median(values), do: percentile(values, 50)
end

defmodule SynapseCore.Bench.Baselines do
  @moduledoc false
  # The baselines: the same echo served to clients that skip Synapse.

  alias SynapseCore.Bench.Measure

  @root Path.expand("../..", __DIR__)

  def tonic(args), do: run(Path.join(@root, "target/release/tonic-echo"), args, [])

  def grpcio(args) do
    {:ok, python} = SynapseCore.Python.interpreter()
    env = [{"PYTHONPATH", SynapseCore.Python.package_dir()}]
    run(python, [Path.join(@root, "bench/python/grpc_client.py") | args], env)
  end

  @doc "Runs `executable` with `args` and `env`; answers the JSON object it prints."
  def run(executable, args, env) do
    case System.cmd(executable, args, env: env, stderr_to_stdout: false) do
      {json, 0} ->
        {:ok, result} = SynapseCore.JSON.decode(json)
        result

      {output, status} ->
        raise "#{Path.basename(executable)} #{Enum.join(args, " ")} failed (#{status}): #{output}"
    end
  end

  @doc "What the scale benchmark's runs cost pydantic-ai alone, in one process, with no gRPC."
  def pydantic_ai_cost(runs, fixtures) do
    {:ok, python} = SynapseCore.Python.interpreter()
    env = [{"PYTHONPATH", Enum.join([fixtures, SynapseCore.Python.package_dir()], ":")}]

    run(
      python,
      [Path.join(@root, "bench/python/pydantic_ai_cost.py"), Integer.to_string(runs)],
      env
    )
  end

  @doc """
  An Erlang Port speaking JSON lines to a Python process that echoes them:
  what a BEAM application without Synapse might do. JSON on both sides.
  """
  def port_jsonl(payload, calls) do
    {:ok, python} = SynapseCore.Python.interpreter()

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:line, 1_000_000},
        args: [Path.join(@root, "bench/python/jsonl_echo.py")]
      ])

    round_trip = fn ->
      {:ok, line} = SynapseCore.JSON.encode(%{"payload" => payload})
      true = Port.command(port, [line, "\n"])

      receive do
        {^port, {:data, {:eol, reply}}} ->
          {:ok, %{"payload" => ^payload}} = SynapseCore.JSON.decode(reply)
      end
    end

    result = Measure.latency(round_trip, calls) |> Map.put("client", "port_jsonl")
    Port.close(port)
    result
  end
end

defmodule SynapseCore.Bench.Machine do
  @moduledoc false

  def describe do
    {:ok, python} = SynapseCore.Python.interpreter()

    %{
      "cores" => System.schedulers_online(),
      "memory_gib" => memory_gib(),
      "cpu" => cpu_model(),
      "kernel" => command("uname", ["-sr"]),
      "otp" => System.otp_release(),
      "elixir" => System.version(),
      "rustc" => command("rustc", ["--version"]),
      "python" => command(python, ["--version"]),
      "pydantic_ai" =>
        command(python, [
          "-c",
          "import importlib.metadata as m; print(m.version('pydantic-ai-slim'))"
        ]),
      "grpcio" => command(python, ["-c", "import grpc; print(grpc.__version__)"]),
      "date" => DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()
    }
  end

  defp memory_gib do
    case File.read("/proc/meminfo") do
      {:ok, info} ->
        [_, kb] = Regex.run(~r/MemTotal:\s+(\d+) kB/, info)
        Float.round(String.to_integer(kb) / 1024 / 1024, 1)

      _ ->
        nil
    end
  end

  defp cpu_model do
    case File.read("/proc/cpuinfo") do
      {:ok, info} ->
        case Regex.run(~r/model name\s*:\s*(.+)/, info) do
          [_, model] -> String.trim(model)
          nil -> "unknown"
        end

      _ ->
        "unknown"
    end
  end

  defp command(executable, args) do
    case System.cmd(executable, args, stderr_to_stdout: true) do
      {out, 0} -> String.trim(out)
      _ -> "unknown"
    end
  rescue
    _ -> "unknown"
  end
end

defmodule SynapseCore.Bench.Report do
  @moduledoc false
  # results.json, report.md and chart.png.

  def write(results, out) do
    {:ok, json} = SynapseCore.JSON.encode(results)
    File.write!(Path.join(out, "results.json"), json)
    File.write!(Path.join(out, "report.md"), markdown(results))
    chart(out)
  end

  defp chart(out) do
    # bench/run installs matplotlib into the environment the benchmarks run in.
    {:ok, python} = SynapseCore.Python.interpreter()

    chart = Path.expand("../chart.py", __DIR__)

    case System.cmd(python, [chart, Path.join(out, "results.json"), Path.join(out, "chart.png")],
           stderr_to_stdout: true
         ) do
      {_, 0} -> :ok
      {output, _} -> IO.puts("chart not drawn: #{output}")
    end
  end

  defp markdown(r) do
    lat = r["latency"]
    synapse = lat["synapse"]
    m = r["machine"]
    cold = r["cold_start"]
    runs = r["scale_runs"]

    """
    # Synapse benchmarks

    Produced by `#{r["command"]}` on #{m["date"]}.

    Machine: #{m["cores"]} cores (#{m["cpu"]}), #{m["memory_gib"]} GiB, #{m["kernel"]};
    OTP #{m["otp"]}, Elixir #{m["elixir"]}, #{m["rustc"]}, #{m["python"]},
    pydantic-ai-slim #{m["pydantic_ai"]}, grpcio #{m["grpcio"]}. Workers on Unix
    sockets; the baselines call the same worker, in the same run.

    ![latency and throughput](chart.png)

    ## 1. Echo latency, one call in flight (64-byte payload, #{r["scale"]["latency_calls"]} calls)

    | client | p50 µs | p99 µs | SynapseCore p50 ÷ this | SynapseCore p50 − this (µs) |
    |---|---:|---:|---:|---:|
    #{for {name, label} <- [{"synapse", "SynapseCore (Elixir → NIF → the worker's lane → Python)"}, {"tonic_lane", "pure Rust client (synapse_client), on the lane"}, {"tonic", "pure Rust tonic client, one Echo RPC per call"}, {"grpcio", "Python grpc.aio client, one Echo RPC per call"}, {"port_jsonl", "Erlang Port, JSON lines"}], row = lat[name], do: "| #{label} | #{f(row["p50_us"])} | #{f(row["p99_us"])} | #{f(synapse["p50_us"] / row["p50_us"], 2)} | #{f(synapse["p50_us"] - row["p50_us"])} |\n"}
    ## 2. Throughput (echo, calls/s; client CPU µs per call; both on the lane)

    | concurrency | #{Enum.map_join(throughput_keys(r), " | ", & &1)} | SynapseCore ÷ tonic (1 worker) | SynapseCore ÷ tonic (2 workers) |
    |---:|#{Enum.map_join(throughput_keys(r), "|", fn _ -> "---:" end)}|---:|---:|
    #{throughput_rows(r)}
    ## 3. Streaming, #{r["scale"]["stream_count"]} events (medians of #{r["scale"]["stream_repeat"]})

    | client | first event µs | per event µs | total µs |
    |---|---:|---:|---:|
    #{for name <- ["synapse", "tonic"], row = r["streaming"][name], do: "| #{name} | #{f(row["first_event_us"])} | #{f(row["per_event_us"], 2)} | #{f(row["total_us"])} |\n"}
    Ratios SynapseCore ÷ tonic: first event #{f(r["streaming"]["synapse"]["first_event_us"] / r["streaming"]["tonic"]["first_event_us"], 2)}, per event #{f(r["streaming"]["synapse"]["per_event_us"] / r["streaming"]["tonic"]["per_event_us"], 2)}.

    ## 4. Scale: #{runs["runs"]} concurrent runs (2 workers), 20 chunks 50 ms apart

    | completed | failed | model's own time | run p50 | run p99 | overhead p50 | overhead p99 | BEAM memory per run in flight: held / with garbage | long schedules > 5 ms: all / in Synapse code / in the NIF |
    |---:|---:|---:|---:|---:|---:|---:|---:|---:|
    | #{runs["completed"]} | #{runs["failed"]} | #{runs["model_ms"]} ms | #{runs["duration_p50_ms"]} ms | #{runs["duration_p99_ms"]} ms | #{pct(runs["overhead_p50"])} | #{pct(runs["overhead_p99"])} | #{kib(runs["memory_held_per_run_bytes"])} / #{kib(runs["memory_per_run_bytes"])} | #{runs["long_schedules"]} / #{runs["long_schedules_synapse"]} / #{runs["long_schedules_nif"]} |

    BEAM memory per run in flight, from `:erlang.memory(:total)` sampled once all runs have started: held, once every process's garbage is collected (as `test/synapse_core/in_flight_test.exs` counts it), and with garbage, sampled just before. Both include each run's consumer, a plain process of the benchmark's that reads its stream: #{kib(runs["caller_process_held_bytes"])} each held, #{kib(runs["caller_process_bytes"])} with garbage (a mean over up to 200 of them). Memory per run by kind, with garbage (bytes): #{runs["memory_breakdown_per_run"]}. Long schedules seen: #{runs["long_schedule_examples"]}.

    Long schedules against a control group with no Synapse in it, spawned in the same burst as the runs (#{runs["control_processes"]} plain processes, one per ten runs, each summing 3,000 integers, about 50 µs of work, the order of a run's first slice, then exiting): consumers #{runs["long_schedules"]} in #{runs["runs"]} runs (#{runs["long_schedules_first_slice"]} of them in a run's first slice, where it picks a worker and starts the RPC; #{runs["consumer_events"]} events received in all), control group #{runs["long_schedules_control"]} in #{runs["control_processes"]}. Per 1,000 processes: consumers #{per_1000(runs["long_schedules"], runs["runs"])}, control group #{per_1000(runs["long_schedules_control"], runs["control_processes"])}.

    The model's own cost: pydantic-ai alone, #{runs["pydantic_ai_alone"]["runs"]} such runs in one Python process with no gRPC and no Synapse, spends #{f(runs["pydantic_ai_alone"]["cpu_ms_per_run"], 1)} ms of CPU per run: #{runs["runs"]} runs need #{f(runs["pydantic_ai_alone"]["cpu_ms_per_run"] * runs["runs"] / 1000 / 2, 0)} s of each of the two workers' core, whatever carries the calls.

    ## 5. Cold start (medians of #{r["scale"]["cold_starts"]})

    | `python -c "import grpc, pydantic_ai"` | one agent, start to ready | difference | four agents at once | four ÷ one |
    |---:|---:|---:|---:|---:|
    | #{f(cold["python_import_ms"])} ms | #{f(cold["one_agent_ms"])} ms | #{f(cold["overhead_over_import_ms"])} ms | #{f(cold["four_agents_ms"])} ms | #{f(cold["four_over_one"], 2)} |
    """
  end

  # Results written before a figure was measured show a dash for it.
  defp kib(nil), do: "–"
  defp kib(bytes), do: "#{f(bytes / 1024, 1)} KiB"

  defp throughput_keys(r), do: r["throughput"] |> Map.keys() |> Enum.sort()

  defp throughput_rows(r) do
    keys = throughput_keys(r)

    by_key =
      Map.new(keys, fn key -> {key, Map.new(r["throughput"][key], &{&1["concurrency"], &1})} end)

    for c <- r["scale"]["concurrency"] do
      cells = Enum.map_join(keys, " | ", fn key -> cell(by_key[key][c]) end)

      ratio = fn workers ->
        f(
          by_key["synapse_#{workers}"][c]["calls_per_s"] /
            by_key["tonic_#{workers}"][c]["calls_per_s"],
          2
        )
      end

      "| #{c} | #{cells} | #{ratio.(1)} | #{ratio.(2)} |\n"
    end
  end

  defp cell(nil), do: "–"
  defp cell(point), do: "#{round(point["calls_per_s"])} (#{f(point["cpu_us_per_call"], 1)})"

  defp f(number, decimals \\ 0)
  defp f(nil, _), do: "–"
  defp f(number, 0), do: number |> round() |> Integer.to_string()
  defp f(number, decimals), do: :erlang.float_to_binary(number * 1.0, decimals: decimals)

  defp per_1000(_count, total) when total in [nil, 0], do: "n/a"
  defp per_1000(count, total), do: f(count * 1_000 / total, 2)

  defp pct(nil), do: "–"
  defp pct(ratio), do: "#{f(ratio * 100, 1)}%"
end
