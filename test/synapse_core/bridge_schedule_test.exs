defmodule SynapseCore.BridgeScheduleTest do
  # A Bridge call's request is converted to its protobuf message by a NIF.
  # A large one (up to the 64 MiB of :max_message_bytes, or beyond it, which
  # is refused only once converted) must not hold a normal scheduler for
  # the whole conversion: it runs on a dirty one, as run requests with long
  # histories do. Watched with a long_schedule system monitor on the calling
  # process, which a dirty NIF never trips. The monitor is the VM's only
  # one: this module runs alone.
  use ExUnit.Case, async: false
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias Mix.Tasks.Synapse.Gen.Bridge, as: GenBridge
  alias SynapseCore.{Bridge, Error}

  @moduletag capture_log: true
  @moduletag timeout: 300_000

  @module "synapse_fixtures.bridge_types"
  # Far longer than any schedule of the caller's own code, which is
  # preempted; far shorter than converting the requests below on a normal
  # scheduler (seconds).
  @long_ms 300
  # A list this long takes seconds to convert, and fits in @max_bytes.
  @numbers 3_000_000
  @max_bytes 16 * 1024 * 1024

  setup_all do
    dir = tmp_dir("synapse-bridge-schedule-test")
    opts = [python_path: fixtures_path(), lib: Path.join(dir, "lib"), out: Path.join(dir, "priv")]
    {:ok, files} = GenBridge.generate(@module, opts)
    [source] = Enum.filter(files, &String.ends_with?(&1, ".ex"))
    ExUnit.CaptureIO.capture_io(:stderr, fn -> Code.compile_file(source) end)

    bridges =
      for transport <- SynapseCore.Transports.all(), into: %{} do
        name = :"bridge_#{System.unique_integer([:positive])}"

        {:ok, bridge} =
          Bridge.start_link(
            name: name,
            module: @module,
            python_path: [Path.join(dir, "priv"), fixtures_path()],
            transport: transport,
            max_message_bytes: @max_bytes
          )

        Process.unlink(bridge)
        {transport, %{name: name, pid: bridge}}
      end

    on_exit(fn ->
      for {_transport, bridge} <- bridges, do: stop_unlinked(bridge.pid)
      File.rm_rf!(dir)
    end)

    %{bridges: bridges}
  end

  setup %{bridges: bridges, transport: transport} do
    %{name: bridges[transport].name}
  end

  test "a large request is converted off the normal schedulers, call and stream", %{name: name} do
    numbers = Enum.to_list(1..@numbers)
    names = List.duplicate("n", @numbers)

    {schedules, {call, stream}} =
      long_schedules_of(fn ->
        # Only a summary goes back: sending the whole answer is a schedule too.
        call =
          case types(:containers, [name, numbers, %{}, [], [], [timeout: 120_000]]) do
            {:ok, %{"numbers" => [1, 2 | _] = sorted}} -> {:ok, length(sorted)}
            other -> other
          end

        stream =
          name
          |> then(&types(:people, [&1, names, [timeout: 120_000]]))
          |> Enum.take(1)

        {call, stream}
      end)

    assert {:ok, @numbers} = call
    assert [%{name: "n"}] = stream
    assert schedules == [], "the caller held a normal scheduler: #{inspect(schedules)}"
  end

  test "a request over :max_message_bytes is refused without holding a normal scheduler",
       %{name: name} do
    # About 18 MiB of varints once encoded: over @max_bytes.
    numbers = List.duplicate(2 ** 40, 3_000_000)

    {schedules, result} =
      long_schedules_of(fn ->
        types(:containers, [name, numbers, %{}, [], []])
      end)

    assert {:error, %Error{kind: :resource_exhausted}} = result
    assert schedules == [], "the caller held a normal scheduler: #{inspect(schedules)}"
  end

  # Runs `fun` in a process of its own, watched for schedules of at least
  # @long_ms; its result and the long schedules seen.
  defp long_schedules_of(fun) do
    parent = self()
    previous = :erlang.system_monitor()
    watcher = spawn_link(fn -> watch(parent) end)
    assert_receive {:watching, ^watcher}, 5_000

    {caller, monitor} = spawn_monitor(fn -> send(parent, {:result, self(), fun.()}) end)

    assert_receive {:result, ^caller, result}, 240_000
    assert_receive {:DOWN, ^monitor, :process, ^caller, :normal}, 5_000
    send(watcher, {:report, self()})
    assert_receive {:seen, ^watcher, seen}, 5_000
    restore(previous)

    {for({:monitor, ^caller, :long_schedule, info} <- seen, do: info), result}
  end

  defp watch(parent) do
    :erlang.system_monitor(self(), [{:long_schedule, @long_ms}])
    send(parent, {:watching, self()})
    collect([])
  end

  defp collect(seen) do
    receive do
      {:monitor, _, _, _} = event -> collect([event | seen])
      {:report, to} -> send(to, {:seen, self(), Enum.reverse(seen)})
    end
  end

  defp restore(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore({pid, options}), do: :erlang.system_monitor(pid, options)

  # Compiled at run time (setup_all): called through apply.
  defp types(function, args), do: apply(SynapseFixtures.BridgeTypes, function, args)
end
