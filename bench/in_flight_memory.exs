# The memory a run in flight holds, on each transport: the BEAM's (what
# test/synapse_core/in_flight_test.exs holds under 10 KB) and the whole VM
# process's, the NIF's allocations included (its tasks, the lane's and
# gRPC's per-call state, tonic's buffers):
#
#   MIX_ENV=prod SYNAPSE_NATIVE_PROFILE=release mix run bench/in_flight_memory.exs \
#     [--runs N] [--rounds R] [--hold-seconds S]
#
# Each measurement is a VM of its own (this script again, with
# `--transport` and `--kind`), transports and kinds of run alternated over
# R rounds (default 2): an agent on one worker
# (bench/python/held_agent.py) whose runs wait S seconds (default 20) in
# Python, N runs (default 2000) started by as many plain processes, with
# `SynapseCore.Agent.run/3` (quiet runs) or with `run_stream/3` and
# `stream_to:` the process (streamed runs), and, once every one
# has started and before any has answered, with every process's garbage
# collected, the growth over the same count before them, per run:
# `:erlang.memory(:total)` and the process's resident memory (`VmRSS`).
# Resident memory counts only the pages written to, and an allocation is
# not written to until it is used: the VMs run with `MALLOC_PERTURB_` set,
# which has glibc's malloc fill every allocation, so that every byte the
# NIF allocates is counted. Every run must then answer "done".
{opts, _} =
  OptionParser.parse!(System.argv(),
    strict: [
      transport: :string,
      kind: :string,
      runs: :integer,
      rounds: :integer,
      hold_seconds: :integer
    ]
  )

runs = Keyword.get(opts, :runs, 2_000)
hold = Keyword.get(opts, :hold_seconds, 20)
kind = Keyword.get(opts, :kind, "quiet")

case Keyword.fetch(opts, :transport) do
  :error ->
    # The parent: one VM per measurement.
    for _round <- 1..Keyword.get(opts, :rounds, 2),
        kind <- ["quiet", "streamed"],
        transport <- ["lane", "grpc"] do
      args =
        ["run", "--no-compile", __ENV__.file, "--transport", transport, "--kind", kind] ++
          ["--runs", "#{runs}", "--hold-seconds", "#{hold}"]

      {_, 0} = System.cmd("mix", args, env: [{"MALLOC_PERTURB_", "165"}], into: IO.stream())
    end

  {:ok, transport} when transport in ["lane", "grpc"] ->
    Logger.configure(level: :error)
    {:ok, _} = Application.ensure_all_started(:synapse_core)

    resident = fn ->
      [kb] =
        Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/self/status"), capture: :all_but_first)

      String.to_integer(kb) * 1024
    end

    collect = fn -> for pid <- Process.list(), do: :erlang.garbage_collect(pid) end

    {:ok, _} =
      SynapseCore.start_agent(
        name: :held,
        agent: "held_agent:agent",
        python_path: [Path.expand("python", __DIR__)],
        transport: %{"lane" => :lane, "grpc" => :grpc}[transport],
        health_interval: :infinity
      )

    {:ok, %{output: "done"}} = SynapseCore.Agent.run_sync(:held, "0")
    parent = self()
    collect.()
    {memory, rss} = {:erlang.memory(:total), resident.()}

    timeout = (hold + 120) * 1000

    # Starts a run of the kind asked for; answers the function that waits
    # for its outcome.
    start =
      case kind do
        "quiet" ->
          fn ->
            {:ok, run} = SynapseCore.Agent.run(:held, "#{hold}", timeout: timeout)
            fn -> SynapseCore.Agent.await(run) end
          end

        "streamed" ->
          fn ->
            {:ok, run} =
              SynapseCore.Agent.run_stream(:held, "#{hold}",
                stream_to: self(),
                timeout: timeout
              )

            ref = run.ref

            wait = fn wait ->
              receive do
                {:synapse_event, ^ref, {:result, result}} -> {:ok, result}
                {:synapse_event, ^ref, {:error, error}} -> {:error, error}
                {:synapse_event, ^ref, _event} -> wait.(wait)
              end
            end

            fn -> wait.(wait) end
          end
      end

    callers =
      for _ <- 1..runs do
        spawn_link(fn ->
          outcome = start.()
          send(parent, {:started, self()})
          send(parent, {:done, self(), outcome.()})
        end)
      end

    for caller <- callers do
      receive do
        {:started, ^caller} -> :ok
      after
        hold * 1000 -> raise "a run did not start within #{hold} s"
      end
    end

    collect.()
    {memory_held, rss_held} = {:erlang.memory(:total), resident.()}

    receive do
      {:done, _, _} -> raise "a run answered before all had started: raise --hold-seconds"
    after
      0 -> :ok
    end

    for caller <- callers do
      receive do
        {:done, ^caller, {:ok, %{output: "done"}}} -> :ok
        {:done, ^caller, other} -> raise "a run answered #{inspect(other)}"
      after
        timeout -> raise "a run did not answer"
      end
    end

    per_run = fn before, held -> round((held - before) / runs) end

    IO.puts(
      "#{transport}, #{kind} runs: #{runs} in flight: the BEAM's memory " <>
        "#{per_run.(memory, memory_held)} bytes a run, the VM process's " <>
        "#{per_run.(rss, rss_held)} bytes a run" <>
        if(System.get_env("MALLOC_PERTURB_"), do: "", else: " (without MALLOC_PERTURB_)")
    )
end
