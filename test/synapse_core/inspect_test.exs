defmodule SynapseCore.InspectTest do
  # What a person sees of a result in iex: its output, usage and the size of
  # its history, not the history itself.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Usage}

  @moduletag capture_log: true

  test "a result shows its output, usage and message counts, not its messages" do
    name = start_fixture_agent!("echo_agent")
    {:ok, first} = Agent.run_sync(name, "first question")
    {:ok, result} = Agent.run_sync(name, "second question", message_history: first)

    shown = inspect(result)

    assert shown =~ ~r/^#SynapseCore.Result<output: #{Regex.escape(inspect(result.output))}/
    assert shown =~ "output_type: \"str\""
    assert shown =~ "usage: #SynapseCore.Usage<input_tokens: #{result.usage.input_tokens},"
    assert shown =~ "messages: 4 (2 new)"
    assert shown =~ "run_id: #{inspect(result.run_id)}"
    refute shown =~ "first question"
    refute shown =~ "second question"
  end

  test "a usage leaves out cache counts that are 0" do
    assert inspect(%Usage{input_tokens: 5, output_tokens: 2, requests: 1}) ==
             "#SynapseCore.Usage<input_tokens: 5, output_tokens: 2, requests: 1, tool_calls: 0>"

    assert inspect(%Usage{cache_read_tokens: 3}) =~ "tool_calls: 0, cache_read_tokens: 3>"
    refute inspect(%Usage{cache_read_tokens: 3}) =~ "cache_write_tokens"
  end
end
