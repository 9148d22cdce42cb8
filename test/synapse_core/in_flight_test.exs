defmodule SynapseCore.InFlightTest do
  # What a run in flight costs the BEAM, on each transport: many runs
  # started at once, each answered exactly once. Measures the whole VM's
  # memory, so it runs alone.
  use ExUnit.Case, async: false
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Result}

  @moduletag capture_log: true
  @moduletag timeout: 300_000

  # Runs in flight at once; each sleeps 10 s in Python, long enough for all
  # to be started before the first answers.
  @runs 500
  # The budget the design sets for one run in flight (issue 17, item 3).
  @budget_bytes 10 * 1024

  test "a run in flight holds at most 10 KB of the BEAM's memory, and gets exactly one reply",
       %{transport: transport} do
    name = start_fixture_agent!("slow_agent")
    assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")

    # The runs start in two halves, the memory taken before, between and
    # after them. Each half gives its own figure per run: what the runs
    # hold shows in both, while something else in the VM growing meanwhile
    # (a process of an earlier test, say) shows in one. So the smaller
    # figure is the runs'.
    before = memory_held()
    first = start_runs(name, div(@runs, 2))
    between = memory_held()
    second = start_runs(name, @runs - div(@runs, 2))
    in_flight = memory_held()
    # Every run was still in flight when the memory was taken.
    refute_received {:done, _, _, _}

    halves = [
      growth(before, between, length(first)),
      growth(between, in_flight, length(second))
    ]

    per_run = halves |> Enum.map(& &1.total) |> Enum.min()

    assert per_run <= @budget_bytes,
           "#{round(per_run)} bytes per run in flight on #{transport}, over #{@budget_bytes}; " <>
             "per run, in each half: #{inspect(halves)}"

    # Each answers once, "done": the runs were not cut short.
    for caller <- first ++ second do
      assert_receive {:done, ^caller, result, stray}, 240_000
      assert {:ok, %Result{output: "done"}} = result
      assert stray == nil
    end
  end

  # Plain processes, the leanest a caller can be; each starts its run,
  # says so, waits for the answer, and reports whatever else arrives.
  # Returns once every run has been sent.
  defp start_runs(name, count) do
    parent = self()

    callers =
      for _ <- 1..count do
        spawn_link(fn ->
          {:ok, run} = Agent.run(name, "10", timeout: 240_000)
          send(parent, {:started, self()})
          result = Agent.await(run)
          # A second reply for the same call would arrive right after the
          # first: give it the moment it would need.
          stray =
            receive do
              message -> message
            after
              500 -> nil
            end

          send(parent, {:done, self(), result, stray})
        end)
      end

    for caller <- callers, do: assert_receive({:started, ^caller}, 120_000)
    callers
  end

  # The memory of every process (as `Process.info/2` counts it: heap,
  # stack, messages) and the VM's memory outside processes (binaries, ETS,
  # the NIF's resources, code), once every process's garbage is collected:
  # what the runs hold, not what starting them left in a caller's heap
  # (collected whenever it next runs).
  defp memory_held do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)

    processes =
      for pid <- Process.list(),
          {:memory, bytes} <- [Process.info(pid, :memory)],
          into: %{},
          do: {pid, bytes}

    %{processes: processes, system: :erlang.memory(:system)}
  end

  # What `runs` more runs in flight added, per run: the processes alive at
  # `to` (a process that ended meanwhile, from an earlier test say, held
  # nothing of theirs) over what those of them alive at `from` held then,
  # and the VM's memory outside processes.
  defp growth(from, to, runs) do
    processes =
      Enum.sum(for {pid, bytes} <- to.processes, do: bytes - Map.get(from.processes, pid, 0))

    system = to.system - from.system

    %{
      total: (processes + system) / runs,
      processes: div(processes, runs),
      system: div(system, runs)
    }
  end
end
