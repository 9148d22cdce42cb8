defmodule SynapseCore.StreamToAwaitTest do
  # A run streamed to a receiver answers with its last event, never with the
  # reply await/2 and yield/2 wait for: they refuse it at once rather than
  # wait out the run's timeout (or forever, with `timeout: :infinity`).
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  alias SynapseCore.{Agent, Result, Run}

  test "await/2 and yield/2 refuse a run streamed with :stream_to; its events still come" do
    name = start_fixture_agent!("slow_stream_agent")

    {:ok, %Run{ref: ref} = run} =
      Agent.run_stream(name, "2 0", stream_to: self(), timeout: :infinity)

    assert_raise ArgumentError, ~r/stream_to/, fn -> Agent.await(run) end
    assert_raise ArgumentError, ~r/stream_to/, fn -> Agent.yield(run, 100) end

    assert_receive {:synapse_event, ^ref, {:result, %Result{output: "chunk1 chunk2 "}}}, 10_000
  end
end
