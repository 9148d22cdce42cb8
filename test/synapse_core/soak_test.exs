defmodule SynapseCore.SoakTest do
  # The short soak (bench/soak.exs runs the long one): concurrent callers
  # (agent runs and Bridge calls) while every fault of the soak is injected: workers and shepherds killed
  # or stopped, floods, tools failing with bad bytes, dropped Run structs,
  # agents started and stopped in races; once per transport (the lane, the
  # default, and gRPC). Counts the whole VM's processes, ports and file
  # descriptors, so it runs alone.
  use ExUnit.Case, async: false
  use SynapseCore.Transports

  Code.require_file("../../bench/soak/soak.ex", __DIR__)

  alias SynapseCore.Bench.Soak

  @moduletag capture_log: true
  @moduletag timeout: 300_000

  test "every call, start and stop gets one typed reply and nothing leaks, whatever the faults",
       %{transport: transport} do
    report =
      Soak.run(duration: 10_000, callers: 16, workers: 2, kill_every: 600, transport: transport)

    # The calls took the transport asked for: every worker of the soak's
    # agents has a lane socket on the lane, none on gRPC.
    case transport do
      :lane -> assert Enum.all?(report.lanes, &match?("unix:" <> _, &1))
      :grpc -> assert Enum.all?(report.lanes, &is_nil/1)
    end

    # Each signal was sent, and each kind of call made.
    for fault <- [:worker_kill, :shepherd_kill, :shepherd_stop] do
      assert report.injected[fault] > 0, "no #{fault} injected: #{inspect(report.injected)}"
    end

    assert report.calls > 50
    # Agent runs of every kind and Bridge calls (on the loop, in a thread).
    assert Enum.sort(Map.keys(report.calls_by_kind)) == Enum.sort(Soak.kinds()),
           inspect(report.calls_by_kind)

    assert report.outcomes[:ok] > 0
    assert Map.values(report.lifecycle) |> Enum.sum() > 0
    assert Soak.failures(report) == [], inspect(report, pretty: true, limit: :infinity)
  end
end
