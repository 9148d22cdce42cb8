defmodule SynapseCore.FaultsTest do
  # Fault injection against real processes: signals, exits, hangs, crash
  # loops, a dead shepherd. Each fault must end every call with one typed
  # reply and leave the agent serving again.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result}

  @moduletag capture_log: true

  # A bound for liveness, not a speed: a replacement is a graceful stop
  # (up to :shutdown_timeout) and a Python start, each several seconds on a
  # loaded 2-core machine.
  defp replaced(name, old_os_pid) do
    eventually(
      fn -> match?([%{os_pid: new}] when new != old_os_pid, Agent.workers(name)) end,
      60_000
    )
  end

  defp in_flight(name, prompt, opts \\ []) do
    task =
      Task.async(fn -> Agent.run_sync(name, prompt, Keyword.put_new(opts, :timeout, 60_000)) end)

    # Long enough for the run to reach the worker.
    Process.sleep(400)
    task
  end

  test "SIGSEGV: in-flight calls get :worker_exited, the worker is replaced" do
    name = start_fixture_agent!("slow_agent")
    os_pid = worker_os_pid(name)
    call = in_flight(name, "30")

    System.cmd("kill", ["-SEGV", Integer.to_string(os_pid)])

    assert {:error, %Error{kind: :worker_exited}} = Task.await(call)
    replaced(name, os_pid)
    assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
  end

  test "a worker exiting with an error status during a run" do
    name = start_fault_agent!("exit_agent")
    os_pid = worker_os_pid(name)

    assert {:error, %Error{kind: :worker_exited}} = Agent.run_sync(name, "3")
    refute os_alive?(os_pid)
    replaced(name, os_pid)
  end

  test "a hung worker (its event loop blocked) fails its health checks and is replaced" do
    name = start_fault_agent!("hang_agent", health_interval: 200, health_timeout: 200)
    os_pid = worker_os_pid(name)
    call = in_flight(name, "60")

    # Two failed checks, 200 ms apart, each given 200 ms: well under 5 s.
    assert {:error, %Error{kind: :worker_exited}} = Task.await(call, 5_000)
    eventually(fn -> not os_alive?(os_pid) end)
    replaced(name, os_pid)
    assert {:ok, %Result{output: "woke up"}} = Agent.run_sync(name, "0")
  end

  test "a stopped worker (SIGSTOP) is detected as hung" do
    name = start_fixture_agent!("echo_agent", health_interval: 200, health_timeout: 200)
    os_pid = worker_os_pid(name)

    System.cmd("kill", ["-STOP", Integer.to_string(os_pid)])

    replaced(name, os_pid)
    eventually(fn -> not os_alive?(os_pid) end)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "the shepherd killed: its worker dies with it and is replaced" do
    name = start_fixture_agent!("echo_agent")
    [%{pid: process, os_pid: os_pid}] = Agent.workers(name)
    shepherd = shepherd_os_pid(process)

    System.cmd("kill", ["-9", Integer.to_string(shepherd)])

    eventually(fn -> not os_alive?(os_pid) end)
    replaced(name, os_pid)
    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "a crash loop backs off, callers get :unavailable meanwhile, and it recovers" do
    dir = Path.join(System.tmp_dir!(), "synapse-crash-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    flag = Path.join(dir, "flag")
    log = Path.join(dir, "log")

    name =
      unique_name()
      |> tap(fn name ->
        start_supervised!(
          {Agent,
           name: name,
           agent: "synapse_fixtures.crash_loop:agent",
           python_path: [fixtures_path()],
           transport: transport(),
           env: [{"SYNAPSE_TEST_CRASH_FLAG", flag}, {"SYNAPSE_TEST_CRASH_LOG", log}]}
        )
      end)

    os_pid = worker_os_pid(name)
    File.write!(flag, "")
    File.write!(log, "")
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    # For 5 s the worker dies at every start. Calls are answered at once.
    deadline = System.monotonic_time(:millisecond) + 5_000

    replies =
      Stream.repeatedly(fn ->
        Process.sleep(50)
        Agent.run_sync(name, "hi", timeout: 1_000)
      end)
      |> Enum.take_while(fn _ -> System.monotonic_time(:millisecond) < deadline end)

    # (A call made before the kill was noticed meets the dying worker.)
    assert Enum.all?(
             replies,
             &match?({:error, %Error{kind: kind}} when kind in [:unavailable, :worker_exited], &1)
           )

    assert Enum.count(replies, &match?({:error, %Error{kind: :unavailable}}, &1)) > 0
    # Back-off of 100, 200, 400, 800, 1600, 3200 ms: a handful of starts, not
    # hundreds (how many depends on how long a Python takes to start here).
    assert starts(log) <= 9
    # And it goes on trying.
    eventually(fn -> starts(log) >= 2 end, 60_000)

    File.rm!(flag)
    eventually(fn -> match?({:ok, %Result{}}, Agent.run_sync(name, "hi")) end, 40_000)
  end

  test "stuck sync tool threads: counted, and past the limit the worker drains and is replaced" do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      :telemetry.attach(
        id,
        [:synapse, :worker, :start],
        fn _event, _measurements, metadata, _ -> send(test, {:worker_start, metadata}) end,
        nil
      )

    on_exit(fn -> :telemetry.detach(id) end)

    name =
      start_fault_agent!("stuck_tool_agent",
        max_stuck_threads: 1,
        health_interval: 200,
        health_timeout: 1_000
      )

    [%{os_pid: os_pid, stuck_threads: 0}] = Agent.workers(name)

    # Each run times out while its tool sleeps on: one stuck thread each.
    assert {:error, %Error{kind: :timeout}} = Agent.run_sync(name, "30", timeout: 300)
    eventually(fn -> match?([%{stuck_threads: 1}], Agent.workers(name)) end)

    # A run in flight when the worker turns unhealthy is let finish.
    in_flight = Task.async(fn -> Agent.run_sync(name, "3", timeout: 60_000) end)
    Process.sleep(300)
    assert {:error, %Error{kind: :timeout}} = Agent.run_sync(name, "30", timeout: 300)

    assert {:ok, %Result{output: "unstuck"}} = Task.await(in_flight, 60_000)
    replaced(name, os_pid)
    eventually(fn -> not os_alive?(os_pid) end)
    assert [%{stuck_threads: 0}] = Agent.workers(name)

    # The replacement's start is not reported with the drained worker's OS pid.
    assert_received {:worker_start, %{agent: ^name, attempt: 0, os_pid: nil}}
    assert_received {:worker_start, %{agent: ^name, os_pid: nil}}
  end

  defp starts(log), do: log |> File.read!() |> String.split("\n", trim: true) |> length()

  defp shepherd_os_pid(process) do
    {_state, data} = :sys.get_state(process)
    SynapseCore.Shepherd.os_pid(data.shepherd)
  end
end
