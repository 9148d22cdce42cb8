defmodule SynapseCore.RunModesTest do
  # run/await/yield/cancel, run_stream, deadlines and cancellation, each
  # observed on the Python side, against real workers.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import SynapseCore.TestHelpers

  @moduletag capture_log: true

  alias SynapseCore.{Agent, Error, Result, Run, Usage}

  # The slow fixtures record the prompts of runs that were cancelled and
  # answer "cancelled?" with that list.
  defp cancelled_prompts(name) do
    {:ok, %Result{output: json}} = Agent.run_sync(name, "cancelled?")
    json
  end

  defp assert_cancelled_in_python(name, prompt) do
    eventually(fn -> String.contains?(cancelled_prompts(name), ~s("#{prompt}")) end)
  end

  describe "run/3, await/2, yield/2" do
    test "run returns a handle at once and await gives the result" do
      name = start_fixture_agent!("echo_agent")
      assert {:ok, %Run{agent: ^name, owner: owner}} = run = Agent.run(name, "hi")
      assert owner == self()
      {:ok, run} = run
      assert {:ok, %Result{output: "success (no tool calls)"}} = Agent.await(run)
    end

    test "yield returns nil while the run goes on, then the result" do
      name = start_fixture_agent!("slow_agent")
      {:ok, run} = Agent.run(name, "0.5")
      assert Agent.yield(run, 50) == nil
      assert {:ok, %Result{output: "done"}} = Agent.yield(run, 5_000)
    end

    test "a run that answered is over: cancelling it has nothing to wait for" do
      name = start_fixture_agent!("slow_agent")
      {:ok, run} = Agent.run(name, "0.3")
      assert {:ok, %Result{output: "done"}} = Agent.await(run)
      # The answer was taken: a cancel neither waits for another nor sends one.
      # The NIF notes the answer just after sending it, so the caller can
      # hold the answer a moment before the note is visible.
      eventually(fn -> SynapseCore.Native.run_cancel(run.handle) == :over end)
      assert :ok = Agent.cancel(run)
      refute_received {:synapse_reply, _, _}

      {:ok, running} = Agent.run(name, "0.3")
      assert SynapseCore.Native.run_cancel(running.handle) == :ok
      assert {:error, %SynapseCore.Error{kind: :cancelled}} = Agent.await(running)
    end

    test "only the process that started a run may await it" do
      name = start_fixture_agent!("echo_agent")
      {:ok, run} = Agent.run(name, "hi")

      assert {:error, %ArgumentError{}} =
               Task.async(fn ->
                 try do
                   Agent.await(run)
                 rescue
                   error -> {:error, error}
                 end
               end)
               |> Task.await()

      assert {:ok, %Result{}} = Agent.await(run)
    end

    test "the NIF builds exactly the Elixir structs" do
      name = start_fixture_agent!("echo_agent")
      {:ok, result} = Agent.run_sync(name, "hi")
      assert Enum.sort(Map.keys(result)) == Enum.sort(Map.keys(%Result{}))
      assert Enum.sort(Map.keys(result.usage)) == Enum.sort(Map.keys(%Usage{}))

      {:error, error} = Agent.run_sync(name, "hi", message_history: [%{"kind" => "x"}])
      assert Enum.sort(Map.keys(error)) == Enum.sort(Map.keys(%Error{kind: :x, message: ""}))
      assert Exception.message(error) =~ "invalid_argument"
    end
  end

  describe "cancellation reaches Python and the worker keeps serving" do
    setup do
      %{name: start_fixture_agent!("slow_agent")}
    end

    test "on timeout", %{name: name} do
      assert {:error, %Error{kind: :timeout}} = Agent.run_sync(name, "30.1", timeout: 300)
      assert_cancelled_in_python(name, "30.1")
      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    end

    test "on cancel/1", %{name: name} do
      {:ok, run} = Agent.run(name, "30.2")
      Process.sleep(200)
      assert :ok = Agent.cancel(run)
      assert_cancelled_in_python(name, "30.2")
      # The run's final message was taken out of the mailbox.
      refute_received {:synapse_reply, _, _}
      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    end

    test "on await/2 giving up", %{name: name} do
      {:ok, run} = Agent.run(name, "30.3")
      assert {:error, %Error{kind: :timeout}} = Agent.await(run, 200)
      assert_cancelled_in_python(name, "30.3")
    end

    test "when the caller process is killed", %{name: name} do
      caller = spawn(fn -> Agent.run_sync(name, "30.4") end)
      Process.sleep(300)
      Process.exit(caller, :kill)
      assert_cancelled_in_python(name, "30.4")
      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
    end

    test "when the process that called run/3 exits", %{name: name} do
      task =
        Task.async(fn ->
          {:ok, _run} = Agent.run(name, "30.5")
          # Long enough for the run to reach Python before this process exits.
          Process.sleep(300)
        end)

      Task.await(task)
      assert_cancelled_in_python(name, "30.5")
    end
  end

  describe "a run that cannot answer its cancel" do
    # A run asked to stop answers what it did; one whose worker cannot
    # answer in time is given up after a grace, and its caller still gets
    # exactly one reply.
    test "ends :cancelled after the grace, and the worker serves on" do
      name = start_fixture_agent!("blocking_agent")
      {:ok, run} = Agent.run(name, "6")
      Process.sleep(200)
      spawn(fn -> Agent.cancel(run) end)

      # The grace is 1 s; the worker answers after 6 s, and waiting 4 s
      # would end the wait with :timeout instead.
      assert {:error, %Error{kind: :cancelled}} = Agent.await(run, 4_000)
      assert {:ok, %Result{output: "done"}} = Agent.run_sync(name, "0")
      refute_received {:synapse_reply, _, _}
    end
  end

  describe "run_stream/3" do
    test "the deltas concatenate to the final output" do
      name = start_fixture_agent!("echo_agent")
      events = name |> Agent.run_stream("hello") |> Enum.to_list()

      assert [{:result, %Result{output: output}} | deltas] = Enum.reverse(events)
      assert deltas != []
      assert Enum.all?(deltas, &match?({:text_delta, _}, &1))
      assert deltas |> Enum.reverse() |> Enum.map_join(&elem(&1, 1)) == output
    end

    test "events arrive while the model is still producing" do
      name = start_fixture_agent!("slow_stream_agent")

      timed =
        name
        |> Agent.run_stream("5 0.2")
        |> Enum.map(fn event -> {System.monotonic_time(:millisecond), event} end)

      [{first_at, {:text_delta, "chunk1 "}} | _] = timed
      {done_at, {:result, %Result{output: output}}} = List.last(timed)
      assert output == "chunk1 chunk2 chunk3 chunk4 chunk5 "
      # Five chunks 200 ms apart: the first is delivered long before the end.
      assert done_at - first_at >= 500
    end

    test "the stream is lazy: nothing runs until it is enumerated" do
      name = start_fixture_agent!("slow_stream_agent")
      stream = Agent.run_stream(name, "1 0")
      refute_received {:synapse_event, _, _}
      assert [{:text_delta, "chunk1 "}, {:result, _}] = Enum.to_list(stream)
    end

    test "halting early cancels the run in Python" do
      name = start_fixture_agent!("slow_stream_agent")

      assert [{:text_delta, "chunk1 "}, {:text_delta, "chunk2 "}] =
               name |> Agent.run_stream("100 0.05") |> Enum.take(2)

      assert_cancelled_in_python(name, "100 0.05")
      refute_received {:synapse_event, _, _}
      assert [_, {:result, _}] = name |> Agent.run_stream("1 0") |> Enum.to_list()
    end

    test "an exception in the consumer cancels the run" do
      name = start_fixture_agent!("slow_stream_agent")

      assert_raise RuntimeError, "consumer failed", fn ->
        name |> Agent.run_stream("100 0.06") |> Enum.each(fn _ -> raise "consumer failed" end)
      end

      assert_cancelled_in_python(name, "100 0.06")
    end

    test "a failed run raises from the stream" do
      name = start_fixture_agent!("failing_agent")

      assert_raise Error, ~r/the model exploded/, fn ->
        name |> Agent.run_stream("x") |> Enum.to_list()
      end

      assert_raise Error, ~r/unknown_agent/, fn ->
        :no_such_agent |> Agent.run_stream("x") |> Enum.to_list()
      end
    end

    test "the stream's timeout cancels the run" do
      name = start_fixture_agent!("slow_stream_agent")

      assert_raise Error, ~r/timeout/, fn ->
        name |> Agent.run_stream("100 0.07", timeout: 300) |> Enum.to_list()
      end

      assert_cancelled_in_python(name, "100 0.07")
    end

    test "a conversation continues from a streamed result" do
      name = start_fixture_agent!("history_agent")
      [_ | _] = events = name |> Agent.run_stream("one") |> Enum.to_list()
      {:result, first} = List.last(events)
      assert first.output == "messages=1"

      assert {:ok, %Result{output: "messages=3"}} =
               Agent.run_sync(name, "two", message_history: first)
    end
  end

  describe "stream_to: pid" do
    test "delivers the events as messages to a relay process that acknowledges them" do
      name = start_fixture_agent!("slow_stream_agent")
      test = self()

      relay =
        spawn_link(fn ->
          receive do
            {:run, run} -> send(test, {:relayed, relay_loop(run, [])})
          end
        end)

      {:ok, run} = Agent.run_stream(name, "20 0", stream_to: relay, window: 4)
      assert %Run{receiver: ^relay} = run
      send(relay, {:run, run})

      assert_receive {:relayed, {texts, %Result{output: output}}}, 10_000
      assert Enum.join(texts) == output
      assert length(texts) == 20
    end

    test "at most `window` events wait in the receiver's mailbox" do
      name = start_fixture_agent!("slow_stream_agent")
      {:ok, %Run{ref: ref} = run} = Agent.run_stream(name, "50 0", stream_to: self(), window: 4)

      # The model produces 50 chunks at once; without acknowledgements only
      # four are delivered. (Waited for, not slept on: on a loaded machine
      # the run may take a while to begin.)
      delivered =
        for _ <- 1..4 do
          assert_receive {:synapse_event, ^ref, event}, 10_000
          event
        end

      refute_receive {:synapse_event, ^ref, _}, 500
      assert Enum.all?(delivered, &match?({:text_delta, _}, &1))

      :ok = Agent.ack(run, 4)

      {texts, %Result{output: output}} =
        relay_loop(run, Enum.reverse(for {_, t} <- delivered, do: t))

      assert length(texts) == 50
      assert Enum.join(texts) == output
    end

    test "an acknowledgement of more than any integer the NIF takes lets every event through" do
      name = start_fixture_agent!("slow_stream_agent")
      {:ok, %Run{ref: ref} = run} = Agent.run_stream(name, "30 0", stream_to: self(), window: 4)
      assert :ok = Agent.ack(run, Bitwise.bsl(1, 70))

      texts =
        Stream.repeatedly(fn ->
          receive do
            {:synapse_event, ^ref, event} -> event
          after
            10_000 -> flunk("the stream stalled without further acknowledgements")
          end
        end)
        |> Enum.take_while(&(not match?({:result, _}, &1)))

      assert length(texts) == 30
    end
  end

  defp relay_loop(%Run{ref: ref} = run, texts) do
    receive do
      {:synapse_event, ^ref, {:text_delta, text}} ->
        :ok = Agent.ack(run)
        relay_loop(run, [text | texts])

      {:synapse_event, ^ref, {:result, result}} ->
        {Enum.reverse(texts), result}
    after
      10_000 -> flunk("the stream stalled")
    end
  end

  describe "concurrency" do
    @tag timeout: 120_000
    test "1,000 concurrent streams on one agent all complete with their own output" do
      name = start_fixture_agent!("echo_stream_agent")

      results =
        1..1_000
        |> Task.async_stream(
          fn i ->
            prompt = "stream #{i} says #{String.duplicate("w#{i} ", 5)}"
            events = name |> Agent.run_stream(prompt, timeout: 90_000) |> Enum.to_list()
            {:result, %Result{output: output}} = List.last(events)
            deltas = for {:text_delta, text} <- events, into: "", do: text
            {prompt, deltas, output}
          end,
          max_concurrency: 1_000,
          timeout: 100_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert length(results) == 1_000

      for {prompt, deltas, output} <- results do
        assert output == prompt
        assert deltas == prompt
      end
    end
  end

  describe "conversation state, settings and limits" do
    test "usage limits pass through to pydantic-ai" do
      name = start_fixture_agent!("tool_agent")
      assert {:ok, %Result{usage: %Usage{requests: 2}}} = Agent.run_sync(name, "add")

      assert {:error, %Error{kind: :usage_limit_exceeded}} =
               Agent.run_sync(name, "add", usage_limits: [request_limit: 1])

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, "add", usage_limits: %{bogus_limit: 1})

      assert message =~ "bogus_limit"
    end

    test "model settings reach the model in a stream too" do
      name = start_fixture_agent!("settings_agent")
      events = name |> Agent.run_stream("x", model_settings: [temperature: 0.5]) |> Enum.to_list()
      {:result, %Result{output: output}} = List.last(events)
      assert output =~ ~s("temperature": 0.5)
    end
  end

  describe "structured output" do
    @schema %{
      "type" => "object",
      "title" => "Ticket",
      "properties" => %{
        "priority" => %{"type" => "string", "enum" => ["low", "high"]},
        "summary" => %{"type" => "string"},
        "tags" => %{"type" => "array", "items" => %{"type" => "string"}}
      },
      "required" => ["priority", "summary"]
    }

    test "an agent defined in Elixir with a JSON Schema answers Elixir data" do
      name = unique_name()

      start_supervised!(
        {Agent, name: name, model: "test", output_schema: @schema, transport: transport()}
      )

      assert {:ok, %Result{output: %{"priority" => priority, "summary" => summary}}} =
               Agent.run_sync(name, "File a ticket")

      assert priority in ["low", "high"]
      assert is_binary(summary)
    end

    test "an unsupported schema fails the start with a clear error" do
      schema = %{"type" => "object", "properties" => %{"a" => %{"$ref" => "#/x"}}}

      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(name: unique_name(), model: "test", output_schema: schema)

      assert message =~ "$ref"
    end

    test "output that never validates is an :output_validation_failed error" do
      name = start_fixture_agent!("invalid_city_agent")

      assert {:error, %Error{kind: :output_validation_failed, message: message}} =
               Agent.run_sync(name, "Which city?")

      assert message =~ "population"
    end
  end

  describe "the real provider code path, against a local OpenAI-compatible server" do
    setup do
      base_url = start_openai_server!()

      agent = fn key ->
        name = unique_name()

        start_supervised!(
          {Agent,
           name: name,
           transport: transport(),
           model: "openai-chat:gpt-4o-mini",
           env: [
             {"OPENAI_BASE_URL", base_url},
             {"OPENAI_API_KEY", key},
             {"NO_PROXY", "127.0.0.1"}
           ]},
          id: name
        )

        name
      end

      %{agent: agent}
    end

    test "run_sync", %{agent: agent} do
      name = agent.("test-key")

      assert {:ok, %Result{output: "echo: hello there", usage: %Usage{requests: 1} = usage}} =
               Agent.run_sync(name, "hello there")

      assert usage.input_tokens > 0
    end

    test "run_stream", %{agent: agent} do
      name = agent.("test-key")
      events = name |> Agent.run_stream("stream these words please") |> Enum.to_list()
      {:result, %Result{output: output}} = List.last(events)
      deltas = for {:text_delta, text} <- events, do: text

      assert output == "echo: stream these words please"
      assert length(deltas) > 1
      assert Enum.join(deltas) == output
    end

    test "model settings reach the provider", %{agent: agent} do
      name = agent.("test-key")

      assert {:ok, %Result{output: "echo: hi (temperature=0.3)"}} =
               Agent.run_sync(name, "hi", model_settings: [temperature: 0.3])
    end

    test "a provider error is a typed error", %{agent: agent} do
      name = agent.("wrong-key")

      assert {:error, %Error{kind: :model_http_error, message: message}} =
               Agent.run_sync(name, "hi")

      assert message =~ "401"
    end
  end
end
