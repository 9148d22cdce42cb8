defmodule SynapseCore.SoakTest do
  # The short soak (bench/soak.exs runs the long one): concurrent callers
  # while workers are killed at random. Counts the whole VM's processes and
  # ports, so it runs alone.
  use ExUnit.Case, async: false

  Code.require_file("../../bench/soak/soak.ex", __DIR__)

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  test "every call gets one typed reply and nothing leaks while workers are killed" do
    report = SynapseCore.Bench.Soak.run(duration: 8_000, callers: 24, workers: 2, kill_every: 600)

    assert report.kills > 0
    assert report.calls > 100
    assert report.outcomes[:ok] > 0

    unexpected = Map.drop(report.outcomes, SynapseCore.Bench.Soak.typed_outcomes())

    assert unexpected == %{}, "unexpected outcomes: #{inspect(unexpected)}"
    assert report.leaks == [], "leaked: #{inspect(report.leaks)}"
  end
end
