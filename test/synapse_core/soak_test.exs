defmodule SynapseCore.SoakTest do
  # The short soak (bench/soak.exs runs the long one): concurrent callers
  # while workers are killed at random, once per transport (the lane, the
  # default, and gRPC). Counts the whole VM's processes and ports, so it
  # runs alone.
  use ExUnit.Case, async: false
  use SynapseCore.Transports

  Code.require_file("../../bench/soak/soak.ex", __DIR__)

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  test "every call gets one typed reply and nothing leaks while workers are killed",
       %{transport: transport} do
    report =
      SynapseCore.Bench.Soak.run(
        duration: 8_000,
        callers: 24,
        workers: 2,
        kill_every: 600,
        transport: transport
      )

    # The calls took the transport asked for: every worker has a lane
    # socket on the lane, none on gRPC.
    assert length(report.lanes) == 4

    case transport do
      :lane -> assert Enum.all?(report.lanes, &match?("unix:" <> _, &1))
      :grpc -> assert Enum.all?(report.lanes, &is_nil/1)
    end

    assert report.kills > 0
    assert report.calls > 100
    assert report.outcomes[:ok] > 0

    unexpected = Map.drop(report.outcomes, SynapseCore.Bench.Soak.typed_outcomes())

    assert unexpected == %{}, "unexpected outcomes: #{inspect(unexpected)}"
    assert report.leaks == [], "leaked: #{inspect(report.leaks)}"
  end
end
