defmodule SynapseCore.WaitArgumentsTest do
  # The waits of the API take a timeout as an argument, not as an option:
  # each is checked as the options are (ArgumentError past the BEAM's
  # largest timer), and a refused wait loses nothing.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Native, Probe, Result}

  @moduletag capture_log: true

  @too_long 5_000_000_000

  setup_all do
    name = unique_name()
    {:ok, _} = SynapseCore.start_agent(fixture_agent("slow_agent", name: name))
    on_exit(fn -> SynapseCore.stop_agent(name) end)
    %{name: name}
  end

  test "await/2 and yield/2 refuse a timeout out of range; the run goes on", %{name: name} do
    {:ok, run} = Agent.run(name, "0.2")

    for timeout <- [@too_long, -1, :soon, 1.5] do
      assert_raise ArgumentError, ~r/timeout/, fn -> Agent.await(run, timeout) end
      assert_raise ArgumentError, ~r/timeout/, fn -> Agent.yield(run, timeout) end
    end

    assert {:ok, %Result{output: "done"}} = Agent.await(run)
  end

  test "a run answers once: waiting again after its answer was taken is refused at once",
       %{name: name} do
    {:ok, run} = Agent.run(name, "0")
    assert {:ok, %Result{output: "done"}} = Agent.await(run)
    # Finite waits: before, each waited them out and answered :timeout (an
    # infinite one never returned).
    assert_raise ArgumentError, ~r/taken already/, fn -> Agent.await(run, 2_000) end
    assert_raise ArgumentError, ~r/taken already/, fn -> Agent.yield(run, 2_000) end

    # The owner's own cancel takes the answer (:cancelled) out of its mailbox.
    {:ok, run} = Agent.run(name, "30", timeout: 60_000)
    :ok = Agent.cancel(run)
    assert_raise ArgumentError, ~r/taken already/, fn -> Agent.await(run, 2_000) end

    # A yield that found nothing took nothing.
    {:ok, run} = Agent.run(name, "0.3")
    assert Agent.yield(run, 0) == nil
    assert {:ok, %Result{output: "done"}} = Agent.await(run, 10_000)
  end

  # The NIF notes that a call answered just after it sends the answer: a
  # process that took the answer and waits again may read the note unset
  # for that moment (made long here by a test-only NIF, as when the sending
  # thread is preempted). Its wait reads the note again, and is refused.
  test "a wait that reads the answered note before it is set is refused, not waited out",
       %{name: name} do
    {:ok, run} = Agent.run(name, "0")
    assert {:ok, %Result{output: "done"}} = Agent.await(run)

    # Set during the wait's first stage (longer waits read it again early).
    :ok = Native.debug_answered_later(run.handle, 30)
    assert_raise ArgumentError, ~r/taken already/, fn -> Agent.await(run, 30_000) end

    # Set before a short wait runs out (read again as it does).
    :ok = Native.debug_answered_later(run.handle, 30)
    assert_raise ArgumentError, ~r/taken already/, fn -> Agent.yield(run, 80) end
  end

  test "await_ready/2 refuses a timeout out of range", %{name: name} do
    assert_raise ArgumentError, ~r/timeout/, fn -> SynapseCore.await_ready(name, @too_long) end
    assert :ok = SynapseCore.await_ready(name, 60_000)
  end

  test "Probe's timeouts and windows are checked like options", %{name: name} do
    assert_raise ArgumentError, ~r/timeout/, fn -> Probe.echo(name, "x", timeout: @too_long) end
    assert_raise ArgumentError, ~r/timeout/, fn -> Probe.echo(name, "x", timeout: -1) end

    assert_raise ArgumentError, ~r/window/, fn ->
      name |> Probe.echo_stream("x", 3, window: 0) |> Enum.to_list()
    end

    assert {:ok, "x"} = Probe.echo(name, "x", timeout: 60_000)
  end
end
