defmodule SynapseCore.WorkerOutputTest do
  # What a worker writes becomes Logger entries, one per Python record, at a
  # bounded rate and with bounded memory. Measures the whole VM's memory and
  # changes module log levels: not async.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  require Logger
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Result, Worker}

  @moduletag capture_log: true

  # Collects Logger events (through an :logger handler) while `fun` runs,
  # with the worker's output logged down to :debug.
  defp collect_logs(fun) do
    id = :"synapse_test_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__.Collector, %{config: %{pid: self()}})
    Logger.put_module_level(SynapseCore.Shepherd.Log, :debug)

    try do
      fun.()
    after
      Logger.delete_module_level(SynapseCore.Shepherd.Log)
      :logger.remove_handler(id)
    end

    drain([])
  end

  defp drain(events) do
    receive do
      {:log_event, event} -> drain([event | events])
    after
      200 -> Enum.reverse(events)
    end
  end

  defmodule Collector do
    @moduledoc false
    def log(%{level: level, msg: msg, meta: meta}, %{config: %{pid: pid}}) do
      message =
        case msg do
          {:string, chardata} -> IO.chardata_to_string(chardata)
          {:report, report} -> inspect(report)
          {format, args} -> format |> :io_lib.format(args) |> IO.chardata_to_string()
        end

      send(pid, {:log_event, %{level: level, message: message, meta: meta}})
    end
  end

  describe "one Logger entry per Python log record" do
    test "level, traceback inside, the agent and the worker in metadata, no Python prefix" do
      name = unique_name()

      events =
        collect_logs(fn ->
          start_fault_agent!("chatty_agent", name: name)
          assert {:ok, %Result{output: "logged"}} = Agent.run_sync(name, "hi")
        end)

      os_pid = worker_os_pid(name)
      agent = inspect(name)

      [failure] = Enum.filter(events, &(&1.message =~ "a failure, with its traceback"))
      assert failure.level == :error
      assert failure.message =~ ~r/\Aa failure, with its traceback\nTraceback/
      assert failure.message =~ "ValueError: the inner problem"

      assert %{agent: ^agent, worker: 0, worker_os_pid: ^os_pid} = failure.meta
      assert failure.meta.python_logger == "synapse_fixtures.chatty"

      [warning] = Enum.filter(events, &(&1.message == "a warning record"))
      assert warning.level == :warning

      # print() is its own entry, at :info.
      [printed] = Enum.filter(events, &(&1.message == "a line of print() output"))
      assert printed.level == :info
      assert printed.meta.python_stream == :stdout

      # The traceback is not split into entries of its own, and no entry
      # carries Python's "LEVEL logger:" prefix.
      refute Enum.any?(events, &String.starts_with?(&1.message, ["Traceback", "  File"]))
      refute Enum.any?(events, &(&1.message =~ ~r/^(INFO|WARNING|ERROR) synapse/))

      # The agent is known by its name in Python's logs too.
      assert Enum.any?(events, &(&1.message =~ "loaded agent '#{Worker.agent_id(name)}'"))
    end

    test "the :log_level option sets the worker's Python log level" do
      name = unique_name()

      events =
        collect_logs(fn ->
          start_fault_agent!("chatty_agent", name: name, log_level: :error)
          assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
        end)

      assert Enum.any?(events, &(&1.message =~ "a failure, with its traceback"))
      refute Enum.any?(events, &(&1.message == "a warning record"))
      refute Enum.any?(events, &(&1.message =~ "loaded agent"))
    end
  end

  test "a worker flooding stdout: bounded BEAM memory, a bounded log and a summary" do
    name = start_fault_agent!("flood_agent")
    :erlang.garbage_collect()
    before = :erlang.memory(:total)
    sampler = start_sampler()

    log =
      capture_log(fn ->
        # 96 MiB in 98,304 lines of print().
        assert {:ok, %Result{output: "flooded"}} = Agent.run_sync(name, "96", timeout: 300_000)
        # What was dropped is summed up within a second, or when the worker
        # stops: the run may answer before that second is over.
        stop_supervised!({Agent, name})
      end)

    peak = stop_sampler(sampler)
    growth = peak - before

    assert growth < 48 * 1024 * 1024,
           "the BEAM grew by #{div(growth, 1024 * 1024)} MiB for 96 MiB of output"

    assert log =~ ~r/\d+ lines of the worker's output dropped/
    logged = log |> String.split("\n") |> Enum.count(&(&1 =~ "xxxxxxxxxx"))
    assert logged < 98_304
  end

  defp start_sampler do
    parent = self()

    spawn_link(fn ->
      sample = fn sample, peak ->
        receive do
          :stop -> send(parent, {:peak, peak})
        after
          20 -> sample.(sample, max(peak, :erlang.memory(:total)))
        end
      end

      sample.(sample, :erlang.memory(:total))
    end)
  end

  defp stop_sampler(sampler) do
    send(sampler, :stop)

    receive do
      {:peak, peak} -> peak
    end
  end
end
