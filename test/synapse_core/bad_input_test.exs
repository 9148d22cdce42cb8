defmodule SynapseCore.BadInputTest do
  # Hostile and malformed input: each gets a clear typed error and leaves
  # the agent serving.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Messages, Native, Result}

  @moduletag capture_log: true

  describe "prompts" do
    setup do
      %{name: start_fixture_agent!("echo_agent", max_message_bytes: 1_000_000)}
    end

    test "of the wrong type", %{name: name} do
      for prompt <- [42, %{}, {:tuple}, :none] do
        assert_raise FunctionClauseError, fn -> Agent.run_sync(name, prompt) end
      end

      # A list is a prompt of parts (SynapseCore.Prompt); a charlist is not.
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, ~c"charlist")

      assert message =~ "charlist"
    end

    test "none", %{name: name} do
      # Nothing to answer: pydantic-ai refuses, and says why.
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, nil)

      assert message =~ "No message history, user prompt, or instructions"

      # An agent with instructions, or a conversation, can go on from nothing.
      {:ok, first} = Agent.run_sync(name, "hi")
      assert {:ok, %Result{}} = Agent.run_sync(name, nil, message_history: first.messages)
    end

    test "invalid UTF-8", %{name: name} do
      assert {:error, %Error{kind: :invalid_argument}} = Agent.run_sync(name, "ok" <> <<0xC3>>)
    end

    test "large, under the limit", %{name: name} do
      assert {:ok, %Result{messages: messages}} =
               Agent.run_sync(name, String.duplicate("é", 200_000))

      assert [request | _] = Messages.decode!(messages)
      assert [%{"content" => content}] = request["parts"]
      assert String.length(content) == 200_000
    end

    test "over the configured maximum message size", %{name: name} do
      assert {:error, %Error{kind: :resource_exhausted, message: message}} =
               Agent.run_sync(name, String.duplicate("x", 2_000_000))

      assert message =~ "over the maximum message size of 1000000 bytes"
      assert {:ok, %Result{}} = Agent.run_sync(name, "still serving")
    end
  end

  test "a reply over the maximum message size" do
    name = start_fault_agent!("big_agent", max_message_bytes: 1_000_000)

    assert {:error, %Error{kind: :resource_exhausted}} = Agent.run_sync(name, "3000000")
    assert {:ok, %Result{output: "xxx"}} = Agent.run_sync(name, "3")
  end

  test "structured output nested beyond the depth limit" do
    name = start_fault_agent!("deep_agent")

    assert {:ok, %Result{output: %{"next" => _}}} = Agent.run_sync(name, "100")

    assert {:error, %Error{kind: :resource_exhausted, message: message}} =
             Agent.run_sync(name, "200")

    assert message =~ "nested deeper than 128"
    assert {:ok, %Result{}} = Agent.run_sync(name, "5")
  end

  test "Elixir data nested beyond the depth limit" do
    name = start_fixture_agent!("settings_agent")
    deep = Enum.reduce(1..200, 1, fn _, acc -> %{"a" => acc} end)

    assert {:error, %Error{kind: :resource_exhausted, message: message}} =
             Agent.run_sync(name, "x", model_settings: %{"extra" => deep})

    assert message =~ "nested deeper than 128"
  end

  test "keys from Python never become atoms" do
    name = start_fault_agent!("random_keys_agent")
    {:ok, %Result{}} = Agent.run_sync(name, "warm up")

    {:ok, %Result{output: output, messages: messages}} = Agent.run_sync(name, "go")

    assert map_size(output) == 20
    assert Enum.all?(Map.keys(output), &is_binary/1)
    assert [_ | _] = Messages.decode!(messages)

    # The keys are random: none exists as an atom unless the result made it
    # (checked per key, not with the atom count, which other tests running
    # at the same time change).
    for key <- Map.keys(output) do
      assert_raise ArgumentError, fn -> String.to_existing_atom(key) end
    end
  end

  test "message histories that are not pydantic-ai histories" do
    name = start_fixture_agent!("echo_agent")

    for history <- [
          [%{}],
          [%{"kind" => "request"}],
          [1, 2, 3],
          [%{"kind" => "response", "parts" => "x"}]
        ] do
      assert {:error, %Error{kind: :invalid_argument}} =
               Agent.run_sync(name, "hi", message_history: history)
    end

    assert {:ok, %Result{}} = Agent.run_sync(name, "hi")
  end

  test "an improper list is refused as a history or a prompt, naming it, in every run mode" do
    name = start_fixture_agent!("echo_agent")
    {:ok, first} = Agent.run_sync(name, "hi")
    [request | _] = Messages.decode!(first.messages)

    # An option of the wrong shape raises, as every bad option does.
    for history <- [[request | :oops], %{first | messages: [request | :oops]}],
        run <- [&Agent.run_sync/3, &Agent.run/3, &Agent.run_stream/3] do
      assert_raise ArgumentError, ~r/invalid :message_history option: .*improper list/, fn ->
        run.(name, "hi", message_history: history)
      end
    end

    # A prompt that is not valid is an :invalid_argument error.
    for prompt <- [["hi" | :oops], ["hi", {:text, "there"} | "end"], [?h | ?i]] do
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, prompt)

      assert message =~ "improper list"

      assert {:error, %Error{kind: :invalid_argument}} = Agent.run(name, prompt)

      assert_raise Error, ~r/improper list/, fn ->
        name |> Agent.run_stream(prompt) |> Enum.to_list()
      end
    end

    assert {:ok, %Result{}} = Agent.run_sync(name, "still serving", message_history: first)
  end

  test "a history struct built by hand from text that is not a JSON array cannot be sliced" do
    messages = %Messages{json: "not json", count: 2}

    assert_raise Error, ~r/not a JSON array/, fn -> Messages.slice(messages, 1) end

    assert_raise Error, fn ->
      Result.new_messages(%Result{messages: messages, new_message_index: 1})
    end
  end

  test "a malformed history's validation errors are data, each naming where it is, as deps' are" do
    name = start_fixture_agent!("echo_agent")

    history = [
      %{
        "kind" => "request",
        "parts" => [
          %{"part_kind" => "user-prompt", "content" => "hi", "timestamp" => "yesterday"}
        ]
      },
      %{"kind" => "response", "parts" => "x"}
    ]

    assert {:error, %Error{kind: :invalid_argument, message: message, details: details}} =
             Agent.run_sync(name, "hi", message_history: history)

    assert message =~ "2 validation error(s)"

    assert [
             %{
               "loc" => ["message_history", 0, "request", "parts", 0, "user-prompt", "timestamp"],
               "type" => "datetime_from_date_parsing"
             },
             %{"loc" => ["message_history", 1, "response", "parts"], "type" => "list_type"}
           ] = details[:errors]
  end

  test "a long bad value in a history is not echoed whole: every error's place is still said" do
    name = start_fixture_agent!("echo_agent")
    kind = "secret-" <> String.duplicate("x", 5_000)

    history = [
      %{"kind" => "request", "parts" => [%{"part_kind" => kind, "content" => "hi"}]},
      %{"kind" => "response", "parts" => "x"}
    ]

    assert {:error, %Error{kind: :invalid_argument, message: message}} =
             Agent.run_sync(name, "hi", message_history: history)

    assert message =~ "0.request.parts.0:"
    assert message =~ "1.response.parts: Input should be a valid array"
    refute message =~ String.duplicate("x", 500)
  end

  describe "the NIF never takes the VM down" do
    test "a panic in a NIF becomes an exception in the caller" do
      assert_raise ErlangError, fn -> Native.debug_panic(:nif, make_ref()) end
    end

    test "a panic while building a reply becomes an :internal error reply" do
      tag = make_ref()
      :ok = Native.debug_panic(:reply, tag)
      assert_receive {:synapse_reply, ^tag, {:error, %Error{kind: :internal}}}, 5_000
    end

    test "resources and terms of the wrong type are refused with ArgumentError" do
      assert_raise ArgumentError, fn -> Native.run_cancel(make_ref()) end
      assert_raise ArgumentError, fn -> Native.run_ack(:not_a_handle, 1) end
      assert_raise ArgumentError, fn -> Native.channel_connect(:nope, %{}) end
    end
  end
end
