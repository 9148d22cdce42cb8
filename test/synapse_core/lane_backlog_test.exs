defmodule SynapseCore.LaneBacklogTest do
  # A worker that stops reading its lane (its event loop held by blocking
  # code) while callers keep calling with large requests: what the lane
  # holds back for it is bounded. Past the bound a new call fails at once
  # with :unavailable instead of waiting in the BEAM's memory; the calls
  # taken before it keep their answers; once the worker reads again, or is
  # replaced, calls succeed. The lane only: over gRPC, HTTP/2's flow
  # control holds requests back. Measures the BEAM's OS memory, so it runs
  # alone.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result}

  @moduletag capture_log: true
  @moduletag timeout: 300_000

  @request_bytes 1024 * 1024
  # Calls taken at most before one is refused: far past the lane's limit
  # with a :max_message_bytes of 2 MiB. A lane that refuses none by then
  # has no limit.
  @most_taken 64
  # Calls made once the lane refuses: taken, their requests would hold
  # @more_calls MiB.
  @more_calls 100

  setup do
    dir = tmp_dir("synapse-lane-backlog")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    name =
      start_fixture_agent!("loop_holding_agent",
        transport: :lane,
        max_message_bytes: 2 * @request_bytes,
        health_interval: :infinity
      )

    %{
      name: name,
      release: Path.join(dir, "release"),
      prompt: String.duplicate("x", @request_bytes)
    }
  end

  test "past the lane's limit new calls fail at once, the BEAM's memory stays, and calls succeed once the worker reads again",
       %{name: name, release: release, prompt: prompt} do
    {holder, started, refused} = hold_and_fill(name, release, prompt)

    # A call made now is refused as it is made: one the lane took would
    # answer only once the worker lets go of its loop, which it does below.
    assert {:error, %Error{kind: :unavailable, message: message}} = Agent.run_sync(name, prompt)
    assert message =~ "the worker is not reading its requests"

    # More calls leave nothing behind: each request is let go of as its
    # call is refused.
    :erlang.garbage_collect()
    before = os_memory()
    more = for _ <- 1..@more_calls, do: start_run(name, prompt)
    grown = os_memory() - before

    assert grown < @more_calls * @request_bytes / 4,
           "the BEAM grew by #{grown} bytes over #{@more_calls} calls of #{@request_bytes} bytes"

    for run <- more, do: assert({:error, %Error{kind: :unavailable}} = Agent.await(run))

    # The worker reads again: every call taken is answered, the one that
    # held the loop included.
    File.touch!(release)
    assert {:ok, %Result{output: "released"}} = Agent.await(holder)
    expected = "#{@request_bytes}"
    answered = &match?({:ok, %Result{output: ^expected}}, &1)
    assert_taken_then_refused(started, refused, answered)

    # And calls go through again.
    assert {:ok, %Result{output: ^expected}} = Agent.run_sync(name, prompt)
    assert {:ok, %Result{output: "5"}} = Agent.run_sync(name, "small")
  end

  test "a worker that no longer reads, killed: its calls end :worker_exited, and calls succeed on its replacement",
       %{name: name, release: release, prompt: prompt} do
    [%{os_pid: held}] = Agent.workers(name)
    {holder, started, refused} = hold_and_fill(name, release, prompt)

    System.cmd("kill", ["-9", Integer.to_string(held)])
    eventually(fn -> match?({:ok, _}, Agent.run_sync(name, "small")) end, 60_000)

    assert {:error, %Error{kind: :worker_exited}} = Agent.await(holder)

    assert_taken_then_refused(
      started,
      refused,
      &match?({:error, %Error{kind: :worker_exited}}, &1)
    )

    expected = "#{@request_bytes}"
    assert {:ok, %Result{output: ^expected}} = Agent.run_sync(name, prompt)
  end

  # Holds the worker's loop, then starts runs of `prompt` until the lane
  # refuses one: the run holding the loop, the runs started (the refused one
  # last) and the refusal.
  defp hold_and_fill(name, release, prompt) do
    holder = start_run(name, "hold " <> release)
    eventually(fn -> File.exists?(release <> ".held") end, 30_000)
    {started, refused} = fill(name, prompt, [])
    assert refused.message =~ "the worker is not reading its requests"
    {holder, started, refused}
  end

  # A run that does not answer within a moment is taken to wait in the
  # lane; a refused one answers at once. A refusal that took longer only
  # adds runs refused too: once the lane refuses a call it refuses every
  # later one until the worker reads (`assert_taken_then_refused/3`).
  defp fill(name, prompt, started) do
    if length(started) >= @most_taken do
      flunk("#{length(started)} calls of #{@request_bytes} bytes were taken, none refused")
    end

    run = start_run(name, prompt)

    case Agent.yield(run, 100) do
      nil -> fill(name, prompt, [run | started])
      {:error, %Error{kind: :unavailable} = refused} -> {Enum.reverse([run | started]), refused}
    end
  end

  defp start_run(name, prompt) do
    {:ok, run} = Agent.run(name, prompt, timeout: 240_000)
    run
  end

  # The runs `fill/3` started, in order: the calls the lane took, each
  # ending as `answered?` says, then the refused ones (the last, whose
  # answer `fill/3` took already, and any whose refusal it did not see).
  # The lane refuses once at least its limit waits (the refusal says it):
  # the calls taken fill it, less what the socket took.
  defp assert_taken_then_refused(started, refused, answered?) do
    {started, [_last]} = Enum.split(started, -1)
    outcomes = Enum.map(started, &Agent.await/1)

    {taken, late} =
      Enum.split_while(outcomes, &(not match?({:error, %Error{kind: :unavailable}}, &1)))

    for outcome <- taken, do: assert(answered?.(outcome), inspect(outcome))
    for outcome <- late, do: assert({:error, %Error{kind: :unavailable}} = outcome)

    [limit] = Regex.run(~r/while (\d+) or more wait/, refused.message, capture: :all_but_first)
    limit = String.to_integer(limit)

    assert length(taken) * @request_bytes >= limit / 2,
           "#{length(taken)} calls of #{@request_bytes} bytes taken, for a limit of #{limit}"
  end

  # The BEAM's resident memory, as the OS counts it: the lane's buffers
  # are the NIF's own allocations, which :erlang.memory/0 does not count.
  defp os_memory do
    [kilobytes] =
      Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/self/status"), capture: :all_but_first)

    String.to_integer(kilobytes) * 1024
  end
end
