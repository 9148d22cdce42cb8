defmodule SynapseCore.LifecycleTest do
  # Starting, crashing and stopping workers: real OS processes, observed by pid.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Probe, Result}

  @moduletag capture_log: true

  describe "start-up failures return Python's own message" do
    test "a module that does not exist" do
      assert {:error, %Error{kind: :startup_failed, message: message, details: details}} =
               SynapseCore.start_agent(fixture_agent("x", agent: "synapse_fixtures.nope:agent"))

      assert message =~ "No module named 'synapse_fixtures.nope'"
      assert details.type == "ModuleNotFoundError"
      assert details.reason == :load_failed
    end

    test "a module that raises at import" do
      assert {:error, %Error{kind: :startup_failed, message: message, details: details}} =
               SynapseCore.start_agent(
                 fixture_agent("x", agent: "synapse_fixtures.broken_import:agent")
               )

      assert message =~ "boom at import"
      assert details.type == "RuntimeError"
      assert details.traceback =~ "broken_import.py"
    end

    test "an attribute that is not an agent" do
      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(
                 fixture_agent("x", agent: "synapse_fixtures.not_an_agent:thing")
               )

      assert message =~ "thing"
    end

    test "a model string pydantic-ai does not know" do
      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(name: unique_name(), model: "nosuchprovider:model-x")

      assert message =~ "nosuchprovider"
    end

    test "an interpreter that does not exist" do
      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(
                 fixture_agent("echo_agent", python: "/nonexistent/python3")
               )

      assert message =~ "/nonexistent/python3"
    end

    test "an interpreter that exits at once" do
      assert {:error, %Error{kind: :startup_failed, message: message, details: details}} =
               SynapseCore.start_agent(fixture_agent("echo_agent", python: "/bin/false"))

      assert message =~ "exited with status 1 before it was ready"
      assert details.exit_status == {:code, 1}
    end

    test "nothing is left running after a failed start" do
      name = unique_name()
      opts = fixture_agent("x", name: name, agent: "synapse_fixtures.broken_import:agent")
      assert {:error, %Error{}} = SynapseCore.start_agent(opts)
      # The registries forget an exited process asynchronously.
      eventually(fn -> Registry.lookup(SynapseCore.AgentRegistry, name) == [] end)
      eventually(fn -> Registry.lookup(SynapseCore.WorkerRegistry, name) == [] end)
    end
  end

  describe "invalid agent options raise ArgumentError" do
    test "unknown, missing and mistyped options" do
      assert_raise ArgumentError, ~r/unknown option :bogus/, fn ->
        SynapseCore.start_agent(name: :x, model: "test", bogus: true)
      end

      assert_raise ArgumentError, ~r/:name option is required/, fn ->
        SynapseCore.start_agent(model: "test")
      end

      assert_raise ArgumentError, ~r/either :agent/, fn -> SynapseCore.start_agent(name: :x) end

      assert_raise ArgumentError, ~r/package.module:attribute/, fn ->
        SynapseCore.start_agent(name: :x, agent: "no colon")
      end

      assert_raise ArgumentError, ~r/:workers/, fn ->
        SynapseCore.start_agent(name: :x, model: "test", workers: 0)
      end

      assert_raise ArgumentError, ~r/:instructions/, fn ->
        SynapseCore.start_agent(name: :x, agent: "a:b", instructions: "hi")
      end
    end

    test "a name already in use" do
      name = start_fixture_agent!("echo_agent")

      assert {:error, %Error{kind: :invalid_argument}} =
               SynapseCore.start_agent(name: name, model: "test")
    end
  end

  describe "a worker that dies" do
    test "fails its in-flight calls with :worker_exited and is restarted" do
      name = start_fixture_agent!("slow_agent")
      os_pid = worker_os_pid(name)

      caller = Task.async(fn -> Agent.run_sync(name, "30", timeout: 60_000) end)
      # Let the run reach the worker before killing it.
      Process.sleep(300)
      System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      assert {:error, %Error{kind: :worker_exited}} = Task.await(caller, 10_000)

      eventually(
        fn -> match?([%{os_pid: new}] when new != os_pid, Agent.workers(name)) end,
        30_000
      )

      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    end
  end

  describe "telemetry" do
    test "a worker's start, readiness, exit and restart" do
      name = unique_name()
      test = self()
      id = {__MODULE__, make_ref()}

      :ok =
        :telemetry.attach_many(
          id,
          for(event <- [:start, :ready, :exit, :restart], do: [:synapse, :worker, event]),
          fn event, measurements, metadata, _ ->
            if metadata.agent == name, do: send(test, {event, measurements, metadata})
          end,
          nil
        )

      on_exit(fn -> :telemetry.detach(id) end)

      {:ok, _} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name))

      assert_receive {[:synapse, :worker, :start] = event, %{system_time: _},
                      %{worker: 0, attempt: 0, os_pid: nil} = start}

      assert_documented(event, start)

      assert_receive {[:synapse, :worker, :ready] = event, %{duration: duration},
                      %{location: :local, os_pid: os_pid} = ready}

      assert_documented(event, ready)
      assert duration > 0
      System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      assert_receive {[:synapse, :worker, :exit] = event, _,
                      %{os_pid: ^os_pid, error: %Error{kind: :worker_exited}} = exit},
                     10_000

      assert_documented(event, exit)

      # The lost worker's OS pid; the next start's is not known yet.
      assert_receive {[:synapse, :worker, :restart] = event, %{delay: delay},
                      %{attempt: 1, os_pid: ^os_pid} = restart}

      assert_documented(event, restart)
      assert delay > 0
      assert_receive {[:synapse, :worker, :start], _, %{attempt: 1, os_pid: nil}}, 10_000
      :ok = SynapseCore.stop_agent(name)
    end
  end

  # Every metadata key of the event is in its row of SynapseCore.Telemetry's table.
  defp assert_documented(event, metadata) do
    {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(SynapseCore.Telemetry)
    row_start = "| `#{inspect(event)}` |"
    [row] = moduledoc |> String.split("\n") |> Enum.filter(&String.starts_with?(&1, row_start))
    [_, _, _, documented, _] = String.split(row, "|")

    for key <- Map.keys(metadata) do
      assert documented =~ "`#{key}`", "#{inspect(event)}: #{inspect(key)} is not documented"
    end
  end

  describe "no orphans" do
    test "stop_agent/1 returns once the worker has exited" do
      name = unique_name()
      {:ok, _} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name, workers: 2))
      os_pids = Enum.map(await_workers(name, 2), & &1.os_pid)
      assert Enum.all?(os_pids, &os_alive?/1)

      assert :ok = SynapseCore.stop_agent(name)
      refute Enum.any?(os_pids, &os_alive?/1)
      assert {:error, %Error{kind: :unknown_agent}} = Agent.run_sync(name, "hi")
      assert {:error, %Error{kind: :unknown_agent}} = SynapseCore.stop_agent(name)
    end

    test "the runtime directory is removed with the worker" do
      name = unique_name()
      {:ok, _} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name))
      [%{address: "unix:" <> socket}] = await_workers(name)
      assert File.exists?(socket)
      :ok = SynapseCore.stop_agent(name)
      refute File.exists?(Path.dirname(socket))
    end
  end

  describe "lifecycle races" do
    test "a starter that dies before a failing first start reports leaves no agent behind" do
      name = unique_name()
      opts = fixture_agent("x", name: name, agent: "synapse_fixtures.broken_import:agent")

      starter = spawn(fn -> SynapseCore.start_agent(opts) end)
      eventually(fn -> Registry.lookup(SynapseCore.AgentRegistry, name) != [] end)
      Process.exit(starter, :kill)

      # The failed start takes the agent down by itself: the name is free.
      eventually(fn -> Registry.lookup(SynapseCore.AgentRegistry, name) == [] end, 30_000)
      assert {:error, %Error{kind: :unknown_agent}} = Agent.run_sync(name, "hi")
      assert {:ok, _} = SynapseCore.start_agent(fixture_agent("echo_agent", name: name))
      assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
      :ok = SynapseCore.stop_agent(name)
    end

    test "stop_agent during start_agent: the starter gets an error, not an exit" do
      name = unique_name()

      starting =
        Task.async(fn -> SynapseCore.start_agent(fixture_agent("echo_agent", name: name)) end)

      eventually(fn -> Registry.lookup(SynapseCore.AgentRegistry, name) != [] end)

      assert :ok = SynapseCore.stop_agent(name)

      assert {:error, %Error{kind: :cancelled, message: message}} = Task.await(starting, 30_000)
      assert message =~ "stopped"
      # The registry forgets the stopped supervisor asynchronously.
      eventually(fn -> Registry.lookup(SynapseCore.AgentRegistry, name) == [] end)
    end

    test "stop_agent after a probe is not held up by the probe's session" do
      # A worker grace far longer than the bound below: were the session
      # stream left open, the worker would wait for it that long.
      name = unique_name()

      {:ok, _} =
        SynapseCore.start_agent(fixture_agent("echo_agent", name: name, shutdown_timeout: 60_000))

      [%{os_pid: os_pid}] = await_workers(name)
      assert {:ok, "ping"} = Probe.echo(name, "ping")

      stopping = Task.async(fn -> SynapseCore.stop_agent(name) end)
      assert {:ok, :ok} = Task.yield(stopping, 20_000) || Task.shutdown(stopping)
      refute os_alive?(os_pid)
    end
  end

  describe "a permanent misconfiguration fails calls fast too" do
    test "a worker that can no longer load its agent: calls answer :startup_failed" do
      dir = Path.join(System.tmp_dir!(), "synapse-gone-#{System.unique_integer([:positive])}")
      File.mkdir_p!(Path.join(dir, "gone_pkg"))
      File.write!(Path.join(dir, "gone_pkg/__init__.py"), "")

      File.write!(
        Path.join(dir, "gone_pkg/agents.py"),
        "from pydantic_ai import Agent\nagent = Agent('test')\n"
      )

      on_exit(fn -> File.rm_rf!(dir) end)

      name =
        start_fixture_agent!("x",
          agent: "gone_pkg.agents:agent",
          python_path: [dir],
          max_backoff: 200
        )

      os_pid = worker_os_pid(name)
      File.rm_rf!(Path.join(dir, "gone_pkg"))
      System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      {:error, error} =
        eventually(
          fn ->
            case Agent.run_sync(name, "hi") do
              {:error, %Error{kind: :startup_failed}} = failed -> failed
              _other -> false
            end
          end,
          30_000
        )

      assert error.message =~ "No module named 'gone_pkg'"
      assert error.details.permanent
    end
  end
end
