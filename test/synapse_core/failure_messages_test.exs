defmodule SynapseCore.FailureMessagesTest do
  # A run that fails once it began keeps what it did, as a Python caller
  # recovers it with pydantic-ai's capture_run_messages(): each failure is
  # compared with the same agent run directly in Python (the messages' JSON
  # byte for byte, but for timestamps and ids), in every run mode, on both
  # transports.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Fidelity, Messages, Usage}

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  @ref "synapse_fixtures.failures:failing_agent"

  # Each failure (see synapse_fixtures.failures): the turn, in direct_run's
  # form, its kind, and the class of Python's exception.
  @failures [
    {%{"prompt" => "lookup", "usage_limits" => %{"request_limit" => 1}}, :usage_limit_exceeded,
     "UsageLimitExceeded"},
    {%{"prompt" => "explode"}, :python_error, "RuntimeError"},
    {%{"prompt" => "bad output"}, :output_validation_failed, "UnexpectedModelBehavior"},
    {%{"prompt" => "http error"}, :model_http_error, "ModelHTTPError"},
    # pydantic-ai refusing, in its run, a run with nothing to send.
    {%{"prompt" => nil}, :invalid_argument, "UserError"}
  ]

  @modes [:run_sync, :await, :run_stream]

  defp start_agent!(extra \\ []),
    do: start_fixture_agent!("failing_agent", Keyword.put(extra, :agent, @ref))

  defp run(name, :run_sync, prompt, opts), do: Agent.run_sync(name, prompt, opts)

  defp run(name, :await, prompt, opts) do
    {:ok, run} = Agent.run(name, prompt, opts)
    Agent.await(run)
  end

  defp run(name, :run_stream, prompt, opts) do
    events = name |> Agent.run_stream(prompt, opts) |> Enum.to_list()
    flunk("the stream ended without its failure: #{inspect(List.last(events))}")
  rescue
    error in Error -> {:error, error}
  end

  defp opts(turn) do
    case turn do
      %{"usage_limits" => limits} -> [usage_limits: limits]
      _ -> []
    end
  end

  # The messages' JSON, byte for byte, but for the values no two runs share.
  defp comparable(json),
    do: Regex.replace(~r/"(timestamp|run_id|conversation_id)":"[^"]*"/, json, ~S("\1":"-"))

  test "each failure keeps the messages Python's capture_run_messages() gives, in every run mode" do
    name = start_agent!()
    turns = Enum.map(@failures, &elem(&1, 0))

    # run_sync and run/3 are pydantic-ai's run; run_stream streams it.
    [quiet, streamed] =
      Fidelity.direct_run!([
        %{"agent" => @ref, "turns" => turns},
        %{"agent" => @ref, "turns" => Enum.map(turns, &Map.put(&1, "stream", true))}
      ])

    for {{turn, kind, type}, in_python, streamed_in_python} <-
          Enum.zip([@failures, quiet, streamed]),
        mode <- @modes do
      label = "#{inspect(turn["prompt"])}, #{mode}"
      python = if mode == :run_stream, do: streamed_in_python, else: in_python
      assert %{"error" => %{"type" => ^type, "messages_json" => expected}} = python

      assert {:error, %Error{kind: ^kind, details: details}} =
               run(name, mode, turn["prompt"], opts(turn))

      assert %{messages: %Messages{} = messages, new_message_index: 0} = details
      assert {label, comparable(messages.json)} == {label, comparable(expected)}
      assert messages.count == length(Messages.decode!(messages))
      # pydantic-ai gives neither for these failures: none is made up.
      refute Map.has_key?(details, :usage), label
      refute Map.has_key?(details, :run_id), label
    end
  end

  test "a failed run that continued a conversation says where its own messages begin, and resumes as in Python" do
    name = start_agent!()

    turns = [
      %{"prompt" => "hello"},
      %{"prompt" => "lookup", "history" => true, "usage_limits" => %{"request_limit" => 1}},
      # How pydantic-ai's docs recover: the failed run's messages, no new prompt.
      %{"history" => true}
    ]

    [first, failed, resumed] = Fidelity.synapse_run(name, turns)

    [[_, failed_in_python, resumed_in_python]] =
      Fidelity.direct_run!([%{"agent" => @ref, "turns" => turns}])

    assert %{"error" => %Error{kind: :usage_limit_exceeded, details: details}} = failed
    assert %{messages: messages, new_message_index: index} = details
    assert comparable(messages.json) == comparable(failed_in_python["error"]["messages_json"])
    assert index == first["result"].messages.count

    # This run's own: its request, the model's tool call, the tool's return.
    assert [
             %{"kind" => "request", "parts" => [%{"content" => "lookup"}]},
             %{"kind" => "response", "parts" => [%{"tool_name" => "lookup"}]},
             %{"kind" => "request", "parts" => [%{"part_kind" => "tool-return"}]}
           ] = messages |> Messages.slice(index) |> Messages.decode!()

    Fidelity.assert_same_run(resumed, resumed_in_python, "resumed from the failed run")
    assert resumed["result"].output == "done"
  end

  test "deps that fail to close after the run keep the whole run" do
    factory = "synapse_fixtures.failures:closing_fails"
    name = start_agent!(deps_factory: factory)

    [[%{"error" => %{"messages_json" => expected}}]] =
      Fidelity.direct_run!([
        %{
          "agent" => @ref,
          "deps_factory" => factory,
          "turns" => [%{"prompt" => "lookup", "deps" => nil}]
        }
      ])

    assert {:error,
            %Error{
              kind: :python_error,
              message: "RuntimeError: closing the deps failed",
              details: details
            }} = Agent.run_sync(name, "lookup")

    assert %{messages: %Messages{count: 4} = messages, new_message_index: 0} = details
    assert comparable(messages.json) == comparable(expected)
  end

  test "a failure before the run began keeps nothing" do
    name = start_fixture_agent!("deps_agent", agent: "synapse_fixtures.fidelity:deps_agent")

    assert {:error, %Error{kind: :invalid_argument, details: details}} =
             Agent.run_sync(name, "hi", deps: %{name: "ada", since: "not a date"})

    for key <- [:messages, :new_message_index, :usage, :run_id],
        do: refute(Map.has_key?(details, key))
  end

  test "messages with no JSON form do not lose the failure" do
    name = start_agent!()

    assert {:error, %Error{kind: :python_error, message: message, details: details}} =
             Agent.run_sync(name, "unkept")

    assert message =~ "RuntimeError: the tool exploded"
    assert message =~ "what the run did is not returned"
    assert message =~ "surrogate"
    refute Map.has_key?(details, :messages)
  end

  test "what a run did that is over the size a message may have does not lose the failure" do
    name = start_agent!(max_message_bytes: 4_000)
    {:ok, first} = Agent.run_sync(name, String.duplicate("x", 2_500))

    # The request (that history, and a prompt) fits; the history with what
    # the run added to it does not.
    assert {:error, %Error{kind: :python_error, message: message, details: details}} =
             Agent.run_sync(name, "explode", message_history: first)

    assert message =~ "RuntimeError: the tool exploded"
    assert message =~ "what the run did is not returned"
    assert message =~ "max_message_bytes"
    refute Map.has_key?(details, :messages)
  end

  test "a timed-out run still keeps pydantic-ai's usage and run id" do
    name = start_agent!()

    assert {:error, %Error{kind: :timeout, details: details}} =
             Agent.run_sync(name, "nap", timeout: 500)

    assert %{messages: %Messages{count: count}, usage: %Usage{requests: 1}, run_id: run_id} =
             details

    assert count >= 2
    assert is_binary(run_id) and run_id != ""
  end
end
