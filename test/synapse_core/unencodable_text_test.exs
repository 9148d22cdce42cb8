defmodule SynapseCore.UnencodableTextTest do
  # Python strings may hold lone surrogates (a file name that is not UTF-8,
  # decoded by os.fsdecode); the wire's strings cannot. Data holding one is
  # refused as :unrepresentable, never blamed on the caller; diagnostic text
  # (errors, log records) arrives with it escaped, the error itself intact.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result}

  @moduletag capture_log: true

  setup_all do
    name = unique_name()

    {:ok, _} =
      SynapseCore.start_agent(
        fixture_agent("x", name: name, agent: "synapse_fixtures.faults:surrogate_agent")
      )

    on_exit(fn -> SynapseCore.stop_agent(name) end)
    %{name: name}
  end

  test "text output holding a lone surrogate is :unrepresentable, not the caller's error",
       %{name: name} do
    assert {:error, %Error{kind: :unrepresentable, message: message}} =
             Agent.run_sync(name, "text")

    refute message =~ "output_tool_return_content"
    assert message =~ "udce9"
  end

  test "a streamed text delta holding one is :unrepresentable", %{name: name} do
    error = assert_raise Error, fn -> name |> Agent.run_stream("text") |> Enum.to_list() end
    assert error.kind == :unrepresentable
    assert error.message =~ "the model's text"
  end

  test "an output holding one, from clean text, is :unrepresentable, streamed or not" do
    name = start_fixture_agent!("x", agent: "synapse_fixtures.faults:surrogate_output_agent")

    assert {:error, %Error{kind: :unrepresentable}} = Agent.run_sync(name, "report")

    for events <- [[:output], [:text_delta]] do
      error =
        assert_raise Error, fn ->
          name |> Agent.run_stream("report", events: events) |> Enum.to_list()
        end

      assert error.kind == :unrepresentable
      assert error.message =~ "the output"
    end
  end

  test "an exception whose message holds one arrives as itself, escaped", %{name: name} do
    assert {:error, %Error{kind: :python_error, message: message, details: details}} =
             Agent.run_sync(name, "raise")

    assert message == ~S(ValueError: no such file: caf\udce9)
    assert details.type == "ValueError"
    assert details.traceback =~ ~S(no such file: caf\udce9)
  end

  test "a log record holding one reaches Logger as its message", %{name: name} do
    id = :"synapse_test_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__, %{config: %{pid: self()}})
    on_exit(fn -> :logger.remove_handler(id) end)

    assert {:ok, %Result{output: "logged"}} = Agent.run_sync(name, "log")
    # The record travels on the worker's log pipe, beside the run's answer.
    assert_receive {:log_message, "no such file: caf\\udce9"}, 10_000
  end

  test "a streamed event holding one (a tool's result) is :unrepresentable too" do
    name = start_fixture_agent!("x", agent: "synapse_fixtures.faults:surrogate_tool_agent")

    # As for the run's messages, which hold the same result.
    assert {:error, %Error{kind: :unrepresentable}} = Agent.run_sync(name, "go")

    error = assert_raise Error, fn -> name |> Agent.run_stream("go") |> Enum.to_list() end
    assert error.kind == :unrepresentable
    assert error.message =~ "udce9"
  end

  test "an event the stream did not ask for is not converted: what it holds fails nothing" do
    name = start_fixture_agent!("x", agent: "synapse_fixtures.faults:surrogate_tool_agent")

    # Neither the tool's return (not asked for) nor the messages (left out) are sent.
    assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "go", messages: false)

    assert [{:text_delta, "done"}, {:result, %Result{output: "done"}}] =
             name
             |> Agent.run_stream("go", events: [:text_delta], messages: false)
             |> Enum.to_list()
  end

  @doc false
  # A :logger handler: the messages of entries about the surrogate, to the test.
  def log(%{msg: {:string, chardata}}, %{config: %{pid: pid}}) do
    message = IO.chardata_to_string(chardata)
    if message =~ "no such file", do: send(pid, {:log_message, message})
  end

  def log(_event, _config), do: :ok
end
