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

    parent = self()
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    before = :erlang.memory(:total)

    # Plain processes, the leanest a caller can be; each starts its run,
    # says so, waits for the answer, and reports whatever else arrives.
    callers =
      for _ <- 1..@runs do
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
    # Every run has been sent: the memory of all of them in flight. What
    # they hold, as before: garbage left in a caller's heap by starting
    # its run (collected whenever it next runs) is not the run's.
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    in_flight = :erlang.memory(:total)
    per_run = (in_flight - before) / @runs

    assert per_run <= @budget_bytes,
           "#{round(per_run)} bytes per run in flight on #{transport}, over #{@budget_bytes}"

    # Each answers once, "done": the runs were not cut short.
    for caller <- callers do
      assert_receive {:done, ^caller, result, stray}, 240_000
      assert {:ok, %Result{output: "done"}} = result
      assert stray == nil
    end
  end
end
