# The cost of one call on the paths users take, each next to its baseline in
# the same run, contenders interleaved round by round (issue 17):
#
#   bench/lane [--rounds R] [--seconds S] [--transports lane,grpc]
#
# * run:  SynapseCore.Agent.run_sync on a minimal agent (pydantic-ai's
#         TestModel, no tools) against `await agent.run(...)` in a loop in
#         one Python process;
# * add:  a Bridge call of `add(a: int, b: int) -> int` against an Erlang
#         Port speaking JSON lines to one Python process calling the same
#         function.
#
# Each at concurrency 1 and 16, for S seconds per round: p50 latency, calls/s
# and CPU time per call (the BEAM's and the Python process's), the median
# over R rounds. One Synapse worker, one Python process
# per baseline. `--transports` lists the transports Synapse's calls take to
# its local worker (`default`: no `:transport` option). The machine is shared:
# only ratios within one run mean anything.
{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [rounds: :integer, seconds: :float, transports: :string]
  )

rounds = Keyword.get(opts, :rounds, 5)
seconds = Keyword.get(opts, :seconds, 2.0)

transports =
  opts |> Keyword.get(:transports, "default") |> String.split(",") |> Enum.map(&String.to_atom/1)

Logger.configure(level: :error)
{:ok, _} = Application.ensure_all_started(:synapse_core)
{:ok, python} = SynapseCore.Python.interpreter()
here = Path.expand("python", __DIR__)
script = Path.join(here, "lane_bench.py")

defmodule LaneBench do
  # `concurrency` loops calling `call` (given the loop's index) for `seconds`,
  # after a short warm-up: %{p50_us:, calls_per_s:, cpu_us:}, `cpu_us` being
  # the CPU time per call of this VM and of the OS processes `pids` (the
  # Python side), which unlike latency does not depend on how the machine's
  # load is scheduled.
  def measure(call, concurrency, seconds, pids) do
    loops(call, concurrency, 0.3)
    cpu = cpu_seconds([System.pid() | pids])
    started = System.monotonic_time(:microsecond)
    samples = loops(call, concurrency, seconds)
    elapsed = (System.monotonic_time(:microsecond) - started) / 1.0e6
    cpu = cpu_seconds([System.pid() | pids]) - cpu
    sorted = Enum.sort(samples)
    calls = length(sorted)

    %{
      p50_us: Enum.at(sorted, div(calls, 2)) / 1,
      calls_per_s: calls / elapsed,
      cpu_us: cpu * 1.0e6 / calls
    }
  end

  # User and system CPU time of OS processes, from /proc (Linux).
  def cpu_seconds(pids) do
    pids
    |> Enum.map(fn pid ->
      stat = File.read!("/proc/#{pid}/stat")
      [_, after_name] = String.split(stat, ") ", parts: 2)
      fields = String.split(after_name, " ")
      # utime and stime, fields 14 and 15 of the line, in clock ticks (100/s).
      (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) / 100
    end)
    |> Enum.sum()
  end

  def os_pid(port), do: port |> Port.info(:os_pid) |> elem(1)

  # One loop runs in the calling process (which may own a port).
  defp loops(call, 1, seconds), do: loop(call, 0, deadline(seconds), [])

  defp loops(call, concurrency, seconds) do
    deadline = deadline(seconds)

    1..concurrency
    |> Enum.map(fn index -> Task.async(fn -> loop(call, index - 1, deadline, []) end) end)
    |> Task.await_many(:infinity)
    |> List.flatten()
  end

  defp deadline(seconds), do: System.monotonic_time(:microsecond) + round(seconds * 1.0e6)

  defp loop(call, index, deadline, samples) do
    started = System.monotonic_time(:microsecond)

    if started >= deadline do
      samples
    else
      call.(index)
      loop(call, index, deadline, [System.monotonic_time(:microsecond) - started | samples])
    end
  end

  def open_port(python, script, mode) do
    Port.open({:spawn_executable, python}, [
      :binary,
      {:line, 1024},
      args: [script, mode],
      env: [{~c"PYTHONPATH", String.to_charlist(Path.dirname(script))}]
    ])
  end

  # The Port baseline, one Python process. With one caller, the caller owns
  # the port; with several, a router owns it and hands each reply to its
  # caller (the id on the line is the caller's index), as an application
  # sharing one Port would.
  def port_call(port, index) do
    true = Port.command(port, ["[", Integer.to_string(index), ",20,22]\n"])
  end

  def port_reply(line) do
    {:ok, [index, 42]} = SynapseCore.JSON.decode(line)
    index
  end

  def measure_port(python, script, 1, seconds) do
    port = open_port(python, script, "jsonl")

    measured =
      measure(
        fn index ->
          port_call(port, index)
          receive(do: ({^port, {:data, {:eol, line}}} -> 0 = port_reply(line)))
        end,
        1,
        seconds,
        [os_pid(port)]
      )

    Port.close(port)
    measured
  end

  def measure_port(python, script, concurrency, seconds) do
    parent = self()

    router =
      spawn_link(fn ->
        port = open_port(python, script, "jsonl")
        send(parent, {:port, port})
        route(port, %{})
      end)

    port = receive(do: ({:port, port} -> port))

    measured =
      measure(
        fn index ->
          if Process.get(:registered) != router do
            send(router, {:register, index, self()})
            Process.put(:registered, router)
          end

          port_call(port, index)
          receive(do: ({:sum, ^index} -> :ok))
        end,
        concurrency,
        seconds,
        [os_pid(port)]
      )

    Process.unlink(router)
    Process.exit(router, :kill)
    measured
  end

  defp route(port, callers) do
    receive do
      {:register, index, pid} ->
        route(port, Map.put(callers, index, pid))

      {^port, {:data, {:eol, line}}} ->
        index = port_reply(line)
        send(Map.fetch!(callers, index), {:sum, index})
        route(port, callers)
    end
  end
end

IO.puts("== starting the workers")

tmp = Path.join(System.tmp_dir!(), "synapse-lane-bench-#{System.unique_integer([:positive])}")

{:ok, files} =
  Mix.Tasks.Synapse.Gen.Bridge.generate("lane_bench",
    python_path: here,
    function: "add",
    elixir_module: "LaneBenchClient",
    lib: Path.join(tmp, "lib"),
    out: Path.join(tmp, "priv")
  )

files |> Enum.filter(&String.ends_with?(&1, ".ex")) |> Enum.each(&Code.compile_file/1)
client = LaneBenchClient

worker_options = [python_path: [Path.join(tmp, "priv"), here], health_interval: :infinity]

for transport <- transports do
  extra = if transport == :default, do: [], else: [transport: transport]

  {:ok, _} =
    SynapseCore.start_agent(
      [name: {:run, transport}, agent: "lane_bench:agent"] ++ worker_options ++ extra
    )

  {:ok, _} =
    SynapseCore.Bridge.start_link(
      [name: {:add, transport}, module: "lane_bench"] ++ worker_options ++ extra
    )
end

worker_pids = fn name -> name |> SynapseCore.Agent.workers() |> Enum.map(& &1.os_pid) end
inprocess = LaneBench.open_port(python, script, "inprocess")

in_python = fn concurrency ->
  true = Port.command(inprocess, "measure #{concurrency} #{seconds}\n")

  receive do
    {^inprocess, {:data, {:eol, line}}} ->
      [p50, rate, cpu] = String.split(line)

      %{
        p50_us: String.to_float(p50),
        calls_per_s: String.to_float(rate),
        cpu_us: String.to_float(cpu)
      }
  end
end

contenders =
  [{"run", "pydantic-ai in-process", in_python}] ++
    for transport <- transports do
      {"run", "synapse run_sync (#{transport})",
       fn c ->
         LaneBench.measure(
           fn _ -> {:ok, _} = SynapseCore.Agent.run_sync({:run, transport}, "hello") end,
           c,
           seconds,
           worker_pids.({:run, transport})
         )
       end}
    end ++
    [{"add", "Port, JSON lines", &LaneBench.measure_port(python, script, &1, seconds)}] ++
    for transport <- transports do
      {"add", "synapse bridge (#{transport})",
       fn c ->
         LaneBench.measure(
           fn _ -> {:ok, 42} = client.add({:add, transport}, 20, 22) end,
           c,
           seconds,
           worker_pids.({:add, transport})
         )
       end}
    end

IO.puts("== measuring: #{rounds} rounds of #{seconds} s per contender and concurrency")

results =
  for round <- 1..rounds, c <- [1, 16], {path, name, measure} <- contenders do
    measured = measure.(c)

    IO.puts(
      "round #{round} #{path} c=#{c} #{name}: p50 #{round(measured.p50_us)} µs, " <>
        "#{round(measured.calls_per_s)} calls/s, #{round(measured.cpu_us)} µs CPU/call"
    )

    {{path, name, c}, measured}
  end

median = fn values ->
  sorted = Enum.sort(values)
  Enum.at(sorted, div(length(sorted), 2))
end

IO.puts("\n== medians over #{rounds} rounds\n")
IO.puts("| path | contender | c | p50 µs | calls/s | CPU µs/call |")
IO.puts("|---|---|---:|---:|---:|---:|")

results
|> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
|> Enum.sort()
|> Enum.each(fn {{path, name, c}, runs} ->
  p50 = median.(Enum.map(runs, & &1.p50_us))
  rate = median.(Enum.map(runs, & &1.calls_per_s))
  cpu = median.(Enum.map(runs, & &1.cpu_us))
  IO.puts("| #{path} | #{name} | #{c} | #{round(p50)} | #{round(rate)} | #{round(cpu)} |")
end)

File.rm_rf!(tmp)
