defmodule SynapseCore.Bench.Proc do
  @moduledoc false
  # CPU time of OS processes and of the machine, from /proc: the BEAM's
  # (schedulers, dirty schedulers and the NIF's threads alike) and the
  # Python processes' on the other side of a call.

  @doc "User + system seconds of the OS processes `os_pids` (the BEAM's own is `:beam`)."
  def cpu_seconds(os_pids) do
    os_pids
    |> Enum.map(fn pid -> pid |> stat() |> then(&(&1.utime + &1.stime)) end)
    |> Enum.sum()
    |> Kernel./(ticks())
  end

  @doc """
  CPU seconds of the BEAM and everything it started: its own time, its
  waited-for children's, and every live descendant's (the shepherds, the
  workers, the ports' Python processes).
  """
  def tree_cpu_seconds do
    stats = all_stats()
    children = Enum.group_by(stats, & &1.ppid)
    root = Enum.find(stats, &(&1.pid == beam_os_pid()))

    root
    |> descendants(children)
    |> Enum.map(&(&1.utime + &1.stime + &1.cutime + &1.cstime))
    |> Enum.sum()
    |> Kernel./(ticks())
  end

  defp descendants(process, children) do
    [process | Enum.flat_map(Map.get(children, process.pid, []), &descendants(&1, children))]
  end

  @doc "Seconds all cores spent busy (not idle, not waiting for I/O), from /proc/stat."
  def machine_busy_seconds do
    ["cpu" | fields] =
      "/proc/stat" |> File.read!() |> String.split("\n") |> hd() |> String.split()

    [user, nice, system, _idle, _iowait, irq, softirq, steal | _] =
      Enum.map(fields, &String.to_integer/1)

    (user + nice + system + irq + softirq + steal) / ticks()
  end

  @doc "The load averages (1, 5 and 15 minutes)."
  def loadavg do
    "/proc/loadavg" |> File.read!() |> String.split() |> Enum.take(3) |> Enum.join(" ")
  end

  def beam_os_pid, do: String.to_integer(System.pid())

  defp all_stats do
    for entry <- File.ls!("/proc"), Regex.match?(~r/^\d+$/, entry), stat = read_stat(entry) do
      stat
    end
  end

  defp read_stat(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, text} -> parse(String.to_integer(pid), text)
      {:error, _} -> nil
    end
  end

  defp stat(:beam), do: stat(beam_os_pid())
  defp stat(pid), do: parse(pid, File.read!("/proc/#{pid}/stat"))

  # Fields after the command (which may hold spaces and parentheses).
  defp parse(pid, text) do
    [_, rest] = String.split(text, ") ", parts: 2)
    fields = rest |> String.split(" ") |> Enum.map(&Integer.parse/1)
    field = fn n -> elem(Enum.at(fields, n), 0) end

    %{
      pid: pid,
      ppid: field.(1),
      utime: field.(11),
      stime: field.(12),
      cutime: field.(13),
      cstime: field.(14)
    }
  end

  defp ticks do
    case :persistent_term.get({__MODULE__, :ticks}, nil) do
      nil ->
        {out, 0} = System.cmd("getconf", ["CLK_TCK"])
        ticks = out |> String.trim() |> String.to_integer()
        :persistent_term.put({__MODULE__, :ticks}, ticks)
        ticks

      ticks ->
        ticks
    end
  end
end

defmodule SynapseCore.Bench.Paths do
  @moduledoc false
  # Measurements of the paths users take, from the BEAM, with the CPU time
  # of both sides of a call; rounds interleaved; the Python contenders run
  # as subprocesses that answer the same figures.

  alias SynapseCore.Bench.{Baselines, Measure, Proc}

  @root Path.expand("../..", __DIR__)

  @doc """
  The worker side of a call to agent (or Bridge) `name`: the OS pids of its
  workers and of their shepherds.
  """
  def worker_pids(name) do
    pids = name |> SynapseCore.Agent.workers() |> Enum.map(& &1.os_pid)

    shepherds =
      for pid <- pids do
        [_, rest] = "/proc/#{pid}/stat" |> File.read!() |> String.split(") ", parts: 2)
        rest |> String.split(" ") |> Enum.at(1) |> String.to_integer()
      end

    pids ++ shepherds
  end

  @doc "The tool's work, the same in every contender (bench/python/bench_agents.py)."
  def order_status_text(order_id), do: "order #{order_id}: shipped"

  @doc """
  p50, p99 and mean of `calls` sequential calls of `fun` (after `calls / 10`
  unmeasured ones, `Measure.latency/2`), and the CPU per call of the BEAM
  (`caller_cpu_us`) and of the Python processes `python_pids`
  (`python_cpu_us`).
  """
  def latency(fun, calls, python_pids) when calls >= 10 do
    cpu = cpu_now(python_pids)
    result = Measure.latency(fun, calls)
    # The CPU is read around the warm-up calls too.
    made = calls + div(calls, 10)

    result
    |> Map.drop(["client"])
    |> Map.merge(cpu_per_call(cpu, cpu_now(python_pids), made))
  end

  @doc """
  Calls per second of `concurrency` loops calling `fun` with one call in
  flight each, for `seconds` after a half-second warm-up; with the CPU per
  call of both sides, as `latency/3`.
  """
  def throughput(fun, concurrency, seconds, python_pids) do
    Measure.loop(fun, System.monotonic_time(:millisecond) + 500, concurrency)
    cpu = cpu_now(python_pids)
    started = System.monotonic_time(:microsecond)
    deadline = System.monotonic_time(:millisecond) + round(seconds * 1000)
    calls = Measure.loop(fun, deadline, concurrency)
    elapsed = (System.monotonic_time(:microsecond) - started) / 1.0e6

    %{
      "concurrency" => concurrency,
      "calls" => calls,
      "seconds" => elapsed,
      "calls_per_s" => calls / elapsed
    }
    |> Map.merge(cpu_per_call(cpu, cpu_now(python_pids), calls))
  end

  @doc """
  A function that calls `fun` with each of `targets` in turn (a pool called
  round-robin, as the Python gRPC client calls its workers).
  """
  def round_robin(targets, fun) do
    turn = :atomics.new(1, [])
    count = length(targets)
    fn -> fun.(Enum.at(targets, rem(:atomics.add_get(turn, 1, 1), count))) end
  end

  defp cpu_now(python_pids), do: {Proc.cpu_seconds([:beam]), Proc.cpu_seconds(python_pids)}

  defp cpu_per_call({beam0, python0}, {beam1, python1}, calls) do
    %{
      "caller_cpu_us" => (beam1 - beam0) * 1.0e6 / max(calls, 1),
      "python_cpu_us" => (python1 - python0) * 1.0e6 / max(calls, 1)
    }
  end

  @doc """
  Runs every measurement of `measurements` (a list of `{key, fun}`) once per
  round, for `rounds` rounds, the order rotated by one each round so that no
  contender always follows the same one; answers `%{key => [result, ...]}`
  in round order. `on_result` sees each result as it comes.
  """
  def rounds(measurements, rounds, on_result \\ fn _key, _result -> :ok end) do
    count = length(measurements)

    results =
      for round <- 0..(rounds - 1),
          {key, measure} <- rotate(measurements, rem(round, max(count, 1))) do
        result = measure.()
        on_result.(key, result)
        {key, result}
      end

    Enum.group_by(results, &elem(&1, 0), &elem(&1, 1))
  end

  defp rotate(list, n), do: Enum.drop(list, n) ++ Enum.take(list, n)

  @doc """
  The median over rounds of each figure of `runs` (the results of one
  contender, one per round); `"rounds"` holds every round's figures.
  """
  def summarize(runs) do
    keys = runs |> hd() |> Map.keys()

    keys
    |> Enum.filter(fn key -> Enum.all?(runs, &is_number(&1[key])) end)
    |> Map.new(fn key -> {key, Measure.median(Enum.map(runs, & &1[key]))} end)
    |> Map.put("rounds", runs)
  end

  @doc """
  The median over rounds of `a`'s `key` divided by `b`'s in the same round:
  a ratio from contenders measured side by side.
  """
  def ratio(a_runs, b_runs, key) do
    a_runs
    |> Enum.zip(b_runs)
    |> Enum.map(fn {a, b} -> a[key] / b[key] end)
    |> Measure.median()
  end

  @doc """
  Runs a Python contender (`bench/python/<script>`) and answers the JSON
  object it prints; `pythonpath` is put before the bench's own directories.
  """
  def python(script, args, pythonpath \\ []) do
    {:ok, python} = SynapseCore.Python.interpreter()

    path =
      Enum.join(
        pythonpath ++ [Path.join(@root, "bench/python"), Path.join(@root, "bench/bridge")],
        ":"
      )

    Baselines.run(python, [Path.join(@root, "bench/python/#{script}") | args], [
      {"PYTHONPATH", path}
    ])
  end

  @doc """
  A subprocess contender's figures under the names the BEAM's measurements
  use: the calling process's CPU as `caller_cpu_us`, the workers' as
  `python_cpu_us`; in-process Python has only the latter.
  """
  def from_python(%{"client" => "inprocess"} = result) do
    result
    |> Map.put("python_cpu_us", result["cpu_us_per_call"])
    |> Map.put("caller_cpu_us", nil)
  end

  def from_python(result) do
    result
    |> Map.put("caller_cpu_us", result["cpu_us_per_call"])
    |> Map.put("python_cpu_us", result["worker_cpu_us_per_call"])
  end
end
