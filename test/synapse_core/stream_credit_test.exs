defmodule SynapseCore.StreamCreditTest do
  # A stream's window bounds the events waiting in its receiver's mailbox,
  # and only them: the run's final answer (its result, or the failure a
  # cancel gets with what the run did) does not wait for acknowledgements.
  # Real workers, on both transports.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  alias SynapseCore.{Agent, Error, Messages, Result, Run, Usage}

  test "a receiver that has not acknowledged a full window still gets the result" do
    name = start_fixture_agent!("slow_stream_agent")
    {:ok, %Run{ref: ref}} = Agent.run_stream(name, "4 0", stream_to: self(), window: 4)

    for _ <- 1..4, do: assert_receive({:synapse_event, ^ref, {:text_delta, _}}, 10_000)
    # "plus the final one": the window holds events, not the answer.
    assert_receive {:synapse_event, ^ref,
                    {:result, %Result{output: "chunk1 chunk2 chunk3 chunk4 "}}},
                   10_000
  end

  test "a run cancelled while its window is full answers what it did" do
    name = start_fixture_agent!("slow_stream_agent")
    # More chunks than any transport buffers: the worker is held by flow control.
    {:ok, %Run{ref: ref} = run} = Agent.run_stream(name, "5000 0", stream_to: self(), window: 4)

    for _ <- 1..4, do: assert_receive({:synapse_event, ^ref, {:text_delta, _}}, 10_000)
    # Cancelled from another process: the answer stays in this mailbox.
    Task.await(Task.async(fn -> Agent.cancel(run) end))

    assert {:error, %Error{kind: :cancelled, details: details}} = final_answer(ref)
    assert %{messages: %Messages{}, usage: %Usage{}} = details
  end

  # The run's last message; no event past the window comes before it.
  defp final_answer(ref) do
    receive do
      {:synapse_event, ^ref, {:text_delta, _}} ->
        flunk("an event past the window arrived")

      {:synapse_event, ^ref, final} ->
        final
    after
      10_000 -> flunk("the run did not answer")
    end
  end
end
