defmodule SynapseCore.RunSyncTest do
  # Against real Python workers under the real shepherd, through the NIF.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  alias SynapseCore.{Agent, Error, Messages, Result, Usage}

  describe "run_sync/3" do
    test "returns the TestModel's output and a non-zero usage" do
      name = start_fixture_agent!("echo_agent")

      assert {:ok, %Result{output: output, usage: %Usage{} = usage, messages: messages}} =
               Agent.run_sync(name, "hello")

      assert output == "success (no tool calls)"
      assert usage.requests == 1
      assert usage.input_tokens > 0
      assert usage.output_tokens > 0
      assert %Messages{count: 2} = messages
      assert [%{"kind" => "request"}, %{"kind" => "response"}] = Messages.decode!(messages)
    end

    test "an agent from a zero-argument factory" do
      name = start_fixture_agent!("make_echo_agent")
      assert {:ok, %Result{output: "success (no tool calls)"}} = Agent.run_sync(name, "hi")
    end

    test "an agent defined from Elixir, with a model and instructions" do
      name = unique_name()

      start_supervised!(
        {Agent, name: name, model: "test", instructions: "Be terse.", transport: transport()}
      )

      assert {:ok, %Result{output: "success (no tool calls)", messages: messages}} =
               Agent.run_sync(name, "hi")

      assert [request | _] = Messages.decode!(messages)
      assert request["instructions"] == "Be terse."
    end

    test "a two-turn conversation passes the history back" do
      name = start_fixture_agent!("history_agent")

      assert {:ok, %Result{output: "messages=1"} = first} = Agent.run_sync(name, "one")

      assert {:ok, %Result{output: "messages=3"} = second} =
               Agent.run_sync(name, "two", message_history: first.messages)

      assert second.messages.count == 4
      # The result itself is accepted as the history, too.
      assert {:ok, %Result{output: "messages=5"}} =
               Agent.run_sync(name, "three", message_history: second)
    end

    test "messages: false leaves the conversation out of a result, and nothing else" do
      name = start_fixture_agent!("history_agent")

      assert {:ok, %Result{messages: %Messages{}} = kept} = Agent.run_sync(name, "one")
      assert {:ok, %Result{messages: nil} = left} = Agent.run_sync(name, "one", messages: false)

      assert Map.take(left, [:output, :output_type, :usage, :new_message_index]) ==
               Map.take(kept, [:output, :output_type, :usage, :new_message_index])

      assert Result.new_messages(left) == nil
      assert inspect(left) =~ "messages: left out"

      # With a history: the run sees it, and only the result leaves it out.
      assert {:ok, %Result{output: "messages=3", messages: nil}} =
               Agent.run_sync(name, "two", message_history: kept, messages: false)

      # Such a result has no conversation to continue.
      assert_raise ArgumentError, ~r/messages: false/, fn ->
        Agent.run_sync(name, "two", message_history: left)
      end

      assert_raise ArgumentError, ~r/output_tool_return_content/, fn ->
        Agent.run_sync(name, "two", messages: false, output_tool_return_content: "ok")
      end

      assert_raise ArgumentError, ~r/:messages/, fn ->
        Agent.run_sync(name, "two", messages: :no)
      end
    end

    test "messages: false on the Run stream: a run with an Elixir tool, and a streamed run" do
      name = start_fixture_agent!("echo_agent")

      tool =
        SynapseCore.Tool.new(
          name: "lookup",
          parameters: [id: :integer],
          function: fn %{id: id} -> {:ok, "item #{id}"} end
        )

      assert {:ok, %Result{messages: nil, usage: %Usage{tool_calls: 1}}} =
               Agent.run_sync(name, "hi", tools: [tool], messages: false)

      assert {:ok, %Result{messages: %Messages{count: 4}}} =
               Agent.run_sync(name, "hi", tools: [tool])

      events = name |> Agent.run_stream("hi", messages: false) |> Enum.to_list()

      assert {:result, %Result{output: "success (no tool calls)", messages: nil}} =
               List.last(events)
    end

    test "model settings reach the model" do
      name = start_fixture_agent!("settings_agent")

      assert {:ok, %Result{output: output}} =
               Agent.run_sync(name, "x", model_settings: [temperature: 0.25, max_tokens: 12])

      assert output =~ ~s("max_tokens": 12)
      assert output =~ ~s("temperature": 0.25)
    end

    test "structured output arrives as a map with string keys" do
      name = start_fixture_agent!("city_agent")

      assert {:ok, %Result{output: %{"name" => city, "population" => population}}} =
               Agent.run_sync(name, "Which city?")

      assert is_binary(city)
      assert is_integer(population)
    end

    test "the model override replaces the agent's model" do
      name = start_fixture_agent!("failing_agent", model: "test")
      assert {:ok, %Result{output: "success (no tool calls)"}} = Agent.run_sync(name, "hi")
    end

    test "run_sync! returns the result or raises the error" do
      name = start_fixture_agent!("echo_agent")
      assert %Result{output: "success (no tool calls)"} = Agent.run_sync!(name, "hi")

      assert_raise Error, ~r/unknown_agent/, fn -> Agent.run_sync!(:no_such_agent, "hi") end
    end
  end

  describe "concurrency" do
    test "50 concurrent calls on one worker are all in flight at once" do
      name = start_fixture_agent!("concurrency_agent")

      outputs =
        1..50
        |> Task.async_stream(fn _ -> Agent.run_sync!(name, "50", timeout: 30_000).output end,
          max_concurrency: 50,
          timeout: 40_000
        )
        |> Enum.map(fn {:ok, output} -> output end)

      # Each run waits until it has seen 50 runs active at the same time.
      assert outputs == List.duplicate("peak=50", 50)
    end
  end

  describe "errors" do
    test "an unknown agent name" do
      assert {:error, %Error{kind: :unknown_agent, message: message}} =
               Agent.run_sync(:no_such_agent, "hi")

      assert message =~ ":no_such_agent"
    end

    test "invalid call options raise ArgumentError" do
      name = start_fixture_agent!("echo_agent")
      assert_raise ArgumentError, fn -> Agent.run_sync(name, "hi", bogus: 1) end
      assert_raise ArgumentError, ~r/:timeout/, fn -> Agent.run_sync(name, "hi", timeout: -1) end

      assert_raise ArgumentError, ~r/:message_history/, fn ->
        Agent.run_sync(name, "hi", message_history: "nope")
      end

      assert_raise ArgumentError, ~r/:model_settings/, fn ->
        Agent.run_sync(name, "hi", model_settings: 3)
      end

      assert_raise FunctionClauseError, fn -> Agent.run_sync(name, :not_a_string) end
    end

    test "a prompt that is not valid UTF-8" do
      name = start_fixture_agent!("echo_agent")

      assert {:error, %Error{kind: :invalid_argument, message: "the prompt is not valid UTF-8"}} =
               Agent.run_sync(name, <<0xFF, 0xFE>>)
    end

    test "a message history pydantic-ai cannot read" do
      name = start_fixture_agent!("echo_agent")

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, "hi", message_history: [%{"kind" => "nonsense"}])

      assert message =~ "message history"
      # The worker keeps serving.
      assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
    end

    test "data with no JSON form is refused before it is sent" do
      name = start_fixture_agent!("echo_agent")

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, "hi", model_settings: %{temperature: {1, 2}})

      assert message =~ "model_settings"
    end

    test "an exception raised in the run" do
      name = start_fixture_agent!("failing_agent")

      assert {:error, %Error{kind: :python_error, message: message, details: details}} =
               Agent.run_sync(name, "hi")

      assert message =~ "the model exploded"
      assert details.type == "ValueError"
      assert details.traceback =~ "in _explode"
      assert {:error, %Error{kind: :python_error}} = Agent.run_sync(name, "again")
    end

    test "a timeout cancels the run and the worker keeps serving" do
      name = start_fixture_agent!("slow_agent")

      assert {:error, %Error{kind: :timeout}} = Agent.run_sync(name, "10", timeout: 200)
      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0", timeout: 5_000)
    end
  end
end
