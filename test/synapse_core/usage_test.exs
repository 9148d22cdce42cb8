defmodule SynapseCore.UsageTest do
  # What a run used (cost, every count, each model response's usage) and
  # `usage_limits:` (every field of pydantic-ai's UsageLimits), each compared
  # with the same run made directly in Python.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Fidelity, RequestUsage, Result, Usage}

  @moduletag timeout: 180_000
  @model "openai-chat:gpt-4o-mini"

  # Runs `turns` on `ref` (synapse_fixtures.fidelity) through Synapse and in
  # Python; asserts they are the same runs (usage included, every field);
  # returns Synapse's outcomes.
  defp compare!(ref, turns, extra \\ [], direct_case \\ %{}) do
    name = unique_name()

    start_supervised!(
      {Agent,
       [name: name, agent: "synapse_fixtures.fidelity:#{ref}", python_path: [fixtures_path()]] ++
         extra}
    )

    synapse = Fidelity.synapse_run(name, turns)

    [direct] =
      Fidelity.direct_run!([
        Map.merge(%{"agent" => "synapse_fixtures.fidelity:#{ref}", "turns" => turns}, direct_case)
      ])

    for {{ours, theirs}, index} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
      case {ours, theirs} do
        {%{"error" => %Error{} = error}, %{"error" => python}} ->
          assert String.ends_with?(error.details.type, "." <> python["type"]), "turn #{index}"
          assert String.ends_with?(error.message, python["message"]), "turn #{index}"

        _ ->
          Fidelity.assert_same_run(ours, theirs, "#{ref}, turn #{index}")
      end
    end

    {synapse, direct}
  end

  defp openai_case(url) do
    %{
      "model" => @model,
      "env" => Map.new(openai_env(url)),
      "rewind" => String.replace_suffix(url, "/v1", "")
    }
  end

  describe "usage" do
    test "a priced model: the cost and each response's usage are Python's, exactly" do
      url = start_openai_server!()

      turns = [
        %{"prompt" => "count these words please"},
        %{"prompt" => "and these", "history" => true, "stream" => true}
      ]

      {[first, second], _direct} =
        compare!("plain_agent", turns, [model: @model, env: openai_env(url)], openai_case(url))

      for %{"result" => %Result{usage: usage}} <- [first, second] do
        assert %Usage{requests: 1, cost: cost, by_request: [request]} = usage
        # genai-prices knows gpt-4o-mini: a positive decimal, as a string.
        assert cost =~ ~r/^0\.\d*[1-9]\d*$/
        assert %RequestUsage{model_name: "gpt-4o-mini", provider_name: "openai"} = request
        assert %Usage{requests: 1, cost: ^cost, input_tokens: input} = request.usage
        assert input == usage.input_tokens
      end
    end

    test "an unpriced model (a FunctionModel) has no cost: nil, not zero" do
      {[%{"result" => %Result{usage: usage}}], _direct} =
        compare!("history_tool_agent", [%{"prompt" => "the weather?"}])

      assert %Usage{requests: 2, tool_calls: 1, cost: nil, by_request: [first, second]} = usage

      assert %RequestUsage{usage: %Usage{cost: nil}, model_name: "function:_weather_once:"} =
               first

      assert first.usage.input_tokens + second.usage.input_tokens == usage.input_tokens
    end
  end

  describe "usage limits" do
    test "tool_calls_limit stops the run with pydantic-ai's error" do
      {[%{"error" => %Error{kind: :usage_limit_exceeded}}], [%{"error" => python}]} =
        compare!("history_tool_agent", [
          %{"prompt" => "the weather?", "usage_limits" => %{"tool_calls_limit" => 0}}
        ])

      assert python["type"] == "UsageLimitExceeded"
      assert python["message"] =~ "tool_calls_limit of 0"
    end

    test "cost_limit (a number or a decimal string) stops a priced run" do
      url = start_openai_server!()

      turns = [
        %{"prompt" => "count these words", "usage_limits" => %{"cost_limit" => 0.000001}},
        %{"prompt" => "count these words", "usage_limits" => %{"cost_limit" => "0.000001"}},
        %{"prompt" => "count these words", "usage_limits" => %{"cost_limit" => 1}}
      ]

      {[first, second, third], _direct} =
        compare!("plain_agent", turns, [model: @model, env: openai_env(url)], openai_case(url))

      for %{"error" => error} <- [first, second] do
        assert %Error{kind: :usage_limit_exceeded, message: message} = error
        assert message =~ "`cost_limit` of 0.000001"
      end

      assert %{"result" => %Result{output: "echo: count these words"}} = third
    end

    test "every other field of UsageLimits reaches pydantic-ai" do
      name = start_fixture_agent!("tool_agent")

      limits = [
        request_limit: nil,
        tool_calls_limit: 5,
        input_tokens_limit: 10_000,
        output_tokens_limit: 10_000,
        total_tokens_limit: 20_000,
        per_request_input_tokens_limit: 10_000
      ]

      assert {:ok, %Result{usage: %Usage{requests: 2}}} =
               Agent.run_sync(name, "add", usage_limits: limits)

      # Reaches the model, which cannot count tokens ahead (as in Python).
      assert {:error, %Error{kind: :python_error, message: message}} =
               Agent.run_sync(name, "add",
                 usage_limits: [count_tokens_before_request: true, input_tokens_limit: 100]
               )

      assert message =~ "Token counting ahead of the request is not supported by TestModel"

      for {key, limit} <- [
            request_limit: 1,
            input_tokens_limit: 1,
            output_tokens_limit: 1,
            total_tokens_limit: 1,
            per_request_input_tokens_limit: 1
          ] do
        assert {:error, %Error{kind: :usage_limit_exceeded, message: message}} =
                 Agent.run_sync(name, "add", usage_limits: [{key, limit}]),
               "#{key}"

        assert message =~ "#{key} of 1", "#{key}: #{message}"
      end
    end

    test "an unknown limit or a value of the wrong type is :invalid_argument naming it" do
      name = start_fixture_agent!("tool_agent")

      for {limits, expected} <- [
            {[bogus_limit: 1], ~r/unknown usage limit 'bogus_limit' \(known: cost_limit, /},
            {[request_limit: "1"], ~r/request_limit: Input should be a valid integer/},
            {[tool_calls_limit: 1.5], ~r/tool_calls_limit: /},
            {[cost_limit: true], ~r/cost_limit: /},
            {[cost_limit: "cheap"], ~r/cost_limit: /},
            {[count_tokens_before_request: "yes"], ~r/count_tokens_before_request: /}
          ] do
        assert {:error, %Error{kind: :invalid_argument, message: message}} =
                 Agent.run_sync(name, "add", usage_limits: limits),
               inspect(limits)

        assert message =~ expected, "#{inspect(limits)}: #{message}"
      end
    end
  end
end
