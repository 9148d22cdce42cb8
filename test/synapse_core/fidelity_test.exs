defmodule SynapseCore.FidelityTest do
  # A pydantic-ai agent behaves through Synapse as it does in Python:
  # non-streamed runs stay non-streamed, deps reach Python, histories are
  # pydantic-ai's bytes, outputs keep their type, errors say what happened.
  # Real workers, real pydantic-ai; comparisons with direct Python runs use
  # synapse_fixtures.direct_run (see SynapseCore.Fidelity).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Fidelity, Messages, Result, Tool, Usage}

  @moduletag capture_log: true

  defp start!(attr, extra \\ []) do
    start_fixture_agent!(attr, Keyword.put(extra, :agent, "synapse_fixtures.fidelity:#{attr}"))
  end

  defp double do
    Tool.new(
      name: "double",
      description: "Doubles n.",
      parameters: [n: :integer],
      function: fn %{n: n} -> n * 2 end
    )
  end

  # A tool that tells `test` it was called, then takes longer than the test waits.
  defp slow_double(test) do
    Tool.new(
      name: "double",
      parameters: [n: :integer],
      function: fn _ ->
        send(test, :tool_called)
        Process.sleep(5_000)
      end
    )
  end

  describe "run_sync and run are agent.run: model requests are not streamed" do
    test "a FunctionModel with no stream function works, with Elixir tools" do
      name = start!("nonstream_agent")

      assert {:ok, %Result{output: "doubled: 42"}} = Agent.run_sync(name, "go", tools: [double()])

      {:ok, run} = Agent.run(name, "go", tools: [double()])
      assert {:ok, %Result{output: "doubled: 42"}} = Agent.await(run)

      # Only run_stream streams, and this model cannot.
      assert_raise Error, ~r/stream_function/, fn ->
        name |> Agent.run_stream("go", tools: [double()]) |> Enum.to_list()
      end
    end

    test "with both functions, run_sync and run use the function, run_stream the stream function" do
      name = start!("two_function_agent")

      assert {:ok, %Result{output: "from the function"}} = Agent.run_sync(name, "x")

      assert {:ok, %Result{output: "from the function"}} =
               Agent.run_sync(name, "x", tools: [double()])

      {:ok, run} = Agent.run(name, "x")
      assert {:ok, %Result{output: "from the function"}} = Agent.await(run)

      events = name |> Agent.run_stream("x", tools: [double()]) |> Enum.to_list()
      assert {:result, %Result{output: "from the stream function"}} = List.last(events)
    end

    test "usage from a provider whose streams carry none: run_sync with tools reports it" do
      url = start_openai_server!(["--no-stream-usage"])
      name = unique_name()

      start_supervised!(
        {Agent, name: name, model: "openai-chat:gpt-4o-mini", env: openai_env(url)}
      )

      assert {:ok, %Result{usage: with_tools}} =
               Agent.run_sync(name, "count these words", tools: [double()])

      assert {:ok, %Result{usage: without}} = Agent.run_sync(name, "count these words")
      assert %Usage{requests: 1, input_tokens: input, output_tokens: output} = with_tools
      assert input > 0 and output > 0
      assert with_tools == without

      # What a streamed request reports there: nothing (so run_sync did not stream).
      events = name |> Agent.run_stream("count these words") |> Enum.to_list()
      assert {:result, %Result{usage: %Usage{input_tokens: 0}}} = List.last(events)
    end
  end

  describe "deps reach Python" do
    test "plain data is validated into the agent's deps_type (a dataclass with a date)" do
      name = start!("deps_agent")

      assert {:ok, %Result{output: json}} =
               Agent.run_sync(name, "who?", deps: %{name: "Ada", since: "2020-01-02", tier: 3})

      assert {:ok, %{"instructions" => "Customer Ada, tier 3, since 2020-01-02", "tier" => 3}} =
               SynapseCore.JSON.decode(json)
    end

    test "data that does not validate is :invalid_argument with field paths" do
      name = start!("deps_agent")

      assert {:error, %Error{kind: :invalid_argument, message: message, details: details}} =
               Agent.run_sync(name, "who?", deps: %{name: "Ada", since: "not a date"})

      assert message =~ "deps do not validate into the agent's deps_type Customer"
      assert [%{"loc" => ["deps", "since"], "msg" => msg, "type" => type}] = details.errors
      assert is_binary(msg) and type =~ "date"

      # The values refused are nowhere in the error, its traceback included
      # (deps may hold a secret).
      secret = "sk-not-a-date-#{System.unique_integer([:positive])}"

      assert {:error, %Error{kind: :invalid_argument} = error} =
               Agent.run_sync(name, "who?", deps: %{name: "Ada", since: secret})

      assert error.details.traceback =~ "ValidationError"
      refute :erlang.term_to_binary(error) =~ secret

      # Deps with no JSON form cannot be validated either.
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, "who?", deps: %{name: self()})

      assert message =~ "has no JSON form"
    end

    test "Elixir tools still get the Elixir term in context.deps" do
      name = start!("deps_agent")

      whoami =
        Tool.new(
          name: "whoami",
          description: "Who the caller is.",
          parameters: [],
          function: fn _args, context -> "#{context.deps.name} (#{inspect(context.deps.tag)})" end
        )

      deps = %{name: "Ada", since: "2020-01-02", tag: :vip}

      assert {:ok, %Result{output: json}} =
               Agent.run_sync(name, "who?", deps: deps, tools: [whoami])

      # Python got the validated dataclass; the Elixir tool the atoms.
      assert {:ok,
              %{
                "instructions" => "Customer Ada, tier 1, since 2020-01-02",
                "whoami" => ["Ada (:vip)"]
              }} = SynapseCore.JSON.decode(json)
    end

    test "an agent with no deps_type gets the data as plain values, or None without a JSON form" do
      name = start!("plain_deps_agent")

      assert {:ok, %Result{output: json}} =
               Agent.run_sync(name, "?", deps: %{user_id: 7, tags: ["a"]})

      assert {:ok, %{"type" => "dict", "deps" => %{"user_id" => 7, "tags" => ["a"]}}} =
               SynapseCore.JSON.decode(json)

      # Deps for the Elixir tools only (a pid): Python sees none.
      assert {:ok, %Result{output: json}} = Agent.run_sync(name, "?", deps: self())
      assert {:ok, %{"type" => "NoneType", "deps" => nil}} = SynapseCore.JSON.decode(json)
    end

    test "a deps factory, sync, async or taking no data, builds the run's deps" do
      for {factory, deps, expected} <- [
            {"make_session", %{user: "ada"}, "ada via sync, open=True"},
            {"make_session_async", %{user: "bob"}, "bob via async, open=True"},
            {"make_session_plain", nil, "nobody via no data, open=True"},
            {"session_scope_sync", %{user: "cy"}, "cy via context manager, open=True"}
          ] do
        name = start!("session_agent", deps_factory: "synapse_fixtures.fidelity:#{factory}")
        assert {:ok, %Result{output: ^expected}} = Agent.run_sync(name, "hi", deps: deps)
      end
    end

    test "a factory's context manager is entered for the run and exited after, on error and cancel too" do
      name = start!("session_agent", deps_factory: "synapse_fixtures.fidelity:session_scope")

      assert {:ok, %Result{output: "dee via async context manager, open=True"}} =
               Agent.run_sync(name, "hi", deps: %{user: "dee"})

      assert {:error, %Error{kind: :python_error}} =
               Agent.run_sync(name, "fail", deps: %{user: "eve"})

      {:ok, run} = Agent.run(name, "sleep 30", deps: %{user: "fay"})
      Process.sleep(300)
      :ok = Agent.cancel(run)

      events = fn ->
        {:ok, %Result{output: json}} = Agent.run_sync(name, "events?", deps: %{user: "q"})
        {:ok, events} = SynapseCore.JSON.decode(json)
        events
      end

      eventually(fn -> "exit fay RunCancelled" in events.() end)

      assert ["enter dee", "exit dee", "enter eve", "exit eve RuntimeError", "enter fay"] =
               Enum.take(events.(), 5)

      # The factory's argument is validated against its annotation.
      assert {:error,
              %Error{kind: :invalid_argument, details: %{errors: [%{"loc" => ["deps", "user"]}]}}} =
               Agent.run_sync(name, "hi", deps: %{name: "no user"})
    end

    test "a deps factory that does not exist fails the start" do
      assert {:error, %Error{kind: :startup_failed, message: message}} =
               SynapseCore.start_agent(
                 fixture_agent("session_agent",
                   agent: "synapse_fixtures.fidelity:session_agent",
                   deps_factory: "synapse_fixtures.fidelity:no_such_factory"
                 )
               )

      assert message =~ "no_such_factory"

      assert_raise ArgumentError, ~r/:deps_factory/, fn ->
        SynapseCore.Agent.child_spec(fixture_agent("session_agent", deps_factory: "nope"))
      end
    end
  end

  describe "message histories are pydantic-ai's bytes" do
    test "a history goes back byte for byte; a list of maps (the old form) does not" do
      name = start!("history_tool_agent")
      {:ok, first} = Agent.run_sync(name, "one")
      assert %Messages{count: 4} = first.messages
      assert inspect(first.messages) =~ ~r/#SynapseCore.Messages<4 messages, \d+ bytes>/

      # The tool's return as Python wrote it: keys in its order, the huge integer exact.
      assert first.messages.json =~
               ~s({"temperature":21,"city":"Paris","huge":1208925819614629174706176})

      {:ok, second} = Agent.run_sync(name, "two", message_history: first)

      assert binary_part(second.messages.json, 0, byte_size(first.messages.json) - 1) ==
               binary_part(first.messages.json, 0, byte_size(first.messages.json) - 1)

      # Decoded, the view is Elixir data; sent back, it is re-encoded (keys sorted).
      [_, %{"parts" => _}, %{"parts" => [%{"content" => content}]}, _] =
        Messages.decode!(first.messages)

      assert content == %{"temperature" => 21, "city" => "Paris", "huge" => 2 ** 80}

      {:ok, from_list} =
        Agent.run_sync(name, "two", message_history: Messages.decode!(first.messages))

      assert from_list.output == second.output
      # The list form is re-encoded with sorted keys: the tool's return changed order.
      sorted = ~s("content":{"city":"Paris","huge":1208925819614629174706176,"temperature":21})
      assert from_list.messages.json =~ sorted
      refute second.messages.json =~ sorted
    end

    test "new_messages and output_tool_return_content, as pydantic-ai has them" do
      name =
        start_fixture_agent!("tool_output_agent",
          agent: "synapse_fixtures.outputs:tool_output_agent"
        )

      {:ok, first} = Agent.run_sync(name, "a pet", output_tool_return_content: "Saved.")
      assert first.new_message_index == 0
      assert Result.new_messages(first) == first.messages
      last = first.messages |> Messages.decode!() |> List.last()
      assert [%{"part_kind" => "tool-return", "content" => "Saved."}] = last["parts"]

      {:ok, second} = Agent.run_sync(name, "another", message_history: first)
      assert second.new_message_index == first.messages.count
      new = Result.new_messages(second)
      assert new.count == second.messages.count - first.messages.count

      assert second.messages.json ==
               String.replace_suffix(first.messages.json, "]", "") <>
                 "," <>
                 String.replace_prefix(new.json, "[", "")

      # Text output has no output tool whose return could be set.
      text = start!("two_function_agent")

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(text, "x", output_tool_return_content: "Saved.")

      assert message =~ "output_tool_return_content"
    end

    test "a stored history is read back with from_json and continues the conversation" do
      name = start!("history_tool_agent")
      {:ok, first} = Agent.run_sync(name, "one")
      {:ok, stored} = Messages.from_json(first.messages.json)
      assert stored == first.messages

      assert {:ok, %Result{output: "7 messages"}} =
               Agent.run_sync(name, "two", message_history: stored)

      assert {:error, %Error{kind: :invalid_argument}} = Messages.from_json("not json")
    end

    test "integers beyond 64 bits are exact both ways" do
      name = start!("big_agent")

      assert {:ok, %Result{output: output, output_type: "int"}} =
               Agent.run_sync(name, "x", deps: 2 ** 70)

      assert output == 2 ** 70 + 1

      {:ok, json} = SynapseCore.JSON.encode(%{n: -(2 ** 100)})
      assert {:ok, %{"n" => n}} = SynapseCore.JSON.decode(json)
      assert n == -(2 ** 100)
    end
  end

  describe "issue 15: data crosses exactly or fails clearly" do
    test "a map with both :a and \"a\" is refused, never one value lost" do
      name = start!("plain_deps_agent")

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, "?",
                 model_settings: %{:temperature => 0.1, "temperature" => 0.2}
               )

      assert message =~ ~s(two keys named "temperature")
    end

    test "a NaN or infinite output is :unrepresentable, naming where it is" do
      name = start_fixture_agent!("float_agent", agent: "synapse_fixtures.outputs:float_agent")

      assert {:ok, %Result{output: 2.5, output_type: "float"}} = Agent.run_sync(name, "2.5")

      for text <- ["nan", "inf", "-inf"] do
        assert {:error, %Error{kind: :unrepresentable, message: message}} =
                 Agent.run_sync(name, text)

        assert message =~ "the output is"
        assert message =~ "neither JSON nor an Elixir float can hold"
      end
    end
  end

  describe "bytes in the output" do
    test "an output of bytes is the binary Python has, in the result and the last output event" do
      name = start_fixture_agent!("bytes_agent", agent: "synapse_fixtures.outputs:bytes_agent")
      pdf = "%PDF-1.7\n%" <> <<0xE2, 0xE3, 0xCF, 0xD3>> <> "\nhello"

      assert {:ok, %Result{output: ^pdf, output_type: "bytes"}} = Agent.run_sync(name, "hello")

      events = name |> Agent.run_stream("hello", events: [:output]) |> Enum.to_list()
      assert {:output, %{output: pdf, output_type: "bytes", partial: false}} in events
      assert {:result, %Result{output: ^pdf}} = List.last(events)
    end

    test "bytes that are not UTF-8 within structured output are :unrepresentable" do
      name =
        start_fixture_agent!("nested_bytes_agent",
          agent: "synapse_fixtures.outputs:nested_bytes_agent"
        )

      assert {:error, %Error{kind: :unrepresentable, message: message}} =
               Agent.run_sync(name, "hello")

      assert message =~ "bytes that are not UTF-8"
      assert message =~ "ser_json_bytes"
    end
  end

  describe "structured output keeps what Python knows" do
    # Each agent runs through Synapse (run_sync, then run_stream) and
    # directly in Python; outputs, their types, usage, messages and every
    # request the model got must be the same.
    for {attr, prompt, output, type} <- [
          {"function_output_agent", "add", 6 + 2 ** 70, "int"},
          {"tool_output_agent", "a pet", %{"name" => "Rex", "species" => "dog"}, "Pet"},
          {"native_output_agent", "a pet", %{"name" => "Tom", "species" => "cat"}, "Pet"},
          {"prompted_output_agent", "a pet", %{"name" => "Tom", "species" => "cat"}, "Pet"},
          {"text_output_agent", "world", "HELLO WORLD!", "str"},
          {"validated_agent", "a pet", %{"name" => "Rex", "species" => "dog"}, "Pet"},
          {"union_agent", "a pet", %{"name" => "Rex", "species" => "dog"}, "Pet"},
          {"union_agent", "nothing", %{}, "Unknown"}
        ] do
      test "#{attr} (#{prompt})" do
        ref = "synapse_fixtures.outputs:#{unquote(attr)}"
        record = Fidelity.record_path("synapse")
        direct_record = Fidelity.record_path("python")

        name =
          start_fixture_agent!(unquote(attr),
            agent: ref,
            env: [{"SYNAPSE_FIDELITY_RECORD", record}]
          )

        turns = [
          %{"prompt" => unquote(prompt)},
          %{"prompt" => unquote(prompt), "history" => true, "stream" => true}
        ]

        synapse = Fidelity.synapse_run(name, turns)

        [direct] =
          Fidelity.direct_run!([%{"agent" => ref, "record" => direct_record, "turns" => turns}])

        for {{ours, theirs}, turn} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
          Fidelity.assert_same_run(ours, theirs, "#{unquote(attr)}, turn #{turn}")
        end

        assert [%{"output" => unquote(Macro.escape(output)), "output_type" => unquote(type)} | _] =
                 synapse

        assert Fidelity.records(record) == Fidelity.records(direct_record)
      end
    end

    test "the output validator's retry is in the history, as in Python" do
      name =
        start_fixture_agent!("validated_agent", agent: "synapse_fixtures.outputs:validated_agent")

      {:ok, result} = Agent.run_sync(name, "a pet")
      assert result.usage.requests == 2

      assert [content] =
               for(
                 %{"parts" => parts} <- Messages.decode!(result.messages),
                 %{"outcome" => "retried", "content" => content} <- parts,
                 do: content
               )

      assert content =~ "must start with a capital letter"
    end
  end

  describe "errors say what happened, as data" do
    setup do
      script = Fidelity.record_path("script") |> Path.rootname() |> Kernel.<>(".json")

      write = fn answers ->
        {:ok, json} = SynapseCore.JSON.encode(answers)
        File.write!(script, json)
        script
      end

      %{write: write}
    end

    test "a model HTTP error carries status code, body and retry-after", %{write: write} do
      body = %{
        "message" => "Rate limit reached",
        "type" => "requests",
        "code" => "rate_limit_exceeded"
      }

      url =
        start_openai_server!([
          "--script",
          write.([%{"status" => 429, "body" => body, "headers" => %{"retry-after" => "7"}}])
        ])

      name = unique_name()

      start_supervised!(
        {Agent, name: name, model: "openai-chat:gpt-4o-mini", env: openai_env(url)}
      )

      assert {:error, %Error{kind: :model_http_error, details: details}} =
               Agent.run_sync(name, "hi", model_settings: [max_retries: 0])

      assert %{status_code: 429, retry_after: 7.0, body: ^body, model_name: "gpt-4o-mini"} =
               details

      assert details.provider_error_code == "rate_limit_exceeded"
    end

    test "a provider that cannot be reached is :model_unavailable" do
      name = unique_name()

      start_supervised!(
        {Agent,
         name: name, model: "openai-chat:gpt-4o-mini", env: openai_env("http://127.0.0.1:9/v1")}
      )

      assert {:error, %Error{kind: :model_unavailable, message: message, details: details}} =
               Agent.run_sync(name, "hi", model_settings: [max_retries: 0])

      assert message =~ "cannot be reached"
      assert %{phase: "connect", model_name: "gpt-4o-mini"} = details
    end

    test "a :python_error's message starts with the exception class" do
      name = start!("session_agent", deps_factory: "synapse_fixtures.fidelity:make_session")

      assert {:error,
              %Error{kind: :python_error, message: "RuntimeError: the model failed on purpose"}} =
               Agent.run_sync(name, "fail", deps: %{user: "x"})
    end

    test "a passed deadline returns the partial history and usage" do
      name = start!("nonstream_agent")

      slow =
        Tool.new(
          name: "double",
          parameters: [n: :integer],
          function: fn _ -> Process.sleep(5_000) end
        )

      assert {:error, %Error{kind: :timeout, details: details}} =
               Agent.run_sync(name, "go", tools: [slow], timeout: 500)

      # The model's request and its tool call were done: they are kept.
      assert %{messages: %Messages{count: count} = messages, usage: %Usage{requests: requests}} =
               details

      assert requests >= 1
      assert count >= 2

      assert [
               %{"kind" => "request"},
               %{"kind" => "response", "parts" => [%{"tool_name" => "double"}]} | _
             ] = Messages.decode!(messages)

      # ... and can be resumed from.
      assert {:ok, %Result{output: "doubled: 42"}} =
               Agent.run_sync(name, "again", message_history: messages, tools: [double()])
    end

    test "a stopped run that continued a history says where its own messages begin" do
      name = start!("nonstream_agent")
      {:ok, first} = Agent.run_sync(name, "go", tools: [double()])

      # A deadline passing, and await/2 giving up: both keep the index.
      slow = slow_double(self())

      assert {:error, %Error{kind: :timeout, details: timed_out}} =
               Agent.run_sync(name, "again",
                 message_history: first,
                 tools: [slow],
                 timeout: 500
               )

      {:ok, run} = Agent.run(name, "again", message_history: first, tools: [slow])
      assert_receive :tool_called, 5_000
      assert {:error, %Error{kind: :timeout, details: gave_up}} = Agent.await(run, 100)

      for details <- [timed_out, gave_up] do
        # pydantic-ai's RunCancelled.new_messages(): this run's request and its tool call.
        assert %{messages: messages, new_message_index: index} = details
        assert index == first.messages.count

        assert [%{"kind" => "request"}, %{"kind" => "response"} | _] =
                 messages |> Messages.slice(index) |> Messages.decode!()
      end
    end

    test "a timed-out run whose messages have no JSON form is still a :timeout" do
      name = start!("unkept_agent")

      assert {:error, %Error{kind: :timeout, message: message, details: details}} =
               Agent.run_sync(name, "go", tools: [slow_double(self())], timeout: 500)

      assert message =~ "timed out"
      assert message =~ "surrogate"
      refute Map.has_key?(details, :messages)
    end

    test "a run_sync with no tools (one unary call) that times out keeps its request too" do
      name = start!("session_agent", deps_factory: "synapse_fixtures.fidelity:make_session")

      assert {:error, %Error{kind: :timeout, details: details}} =
               Agent.run_sync(name, "sleep 30", deps: %{user: "x"}, timeout: 300)

      assert %{messages: %Messages{count: 1} = messages, usage: %Usage{}} = details
      assert [%{"parts" => [%{"content" => "sleep 30"}]}] = Messages.decode!(messages)
    end

    test "a cancelled run returns the partial history and usage to its awaiter" do
      name = start!("nonstream_agent")
      slow = slow_double(self())

      {:ok, run} = Agent.run(name, "go", tools: [slow])
      assert_receive :tool_called, 5_000
      # Another process cancels; the owner awaits.
      spawn(fn -> Agent.cancel(run) end)

      assert {:error, %Error{kind: :cancelled, details: details}} = Agent.await(run)
      assert %{messages: %Messages{count: count}, usage: %Usage{requests: 1}} = details
      assert count >= 2
    end
  end

  test "await/2 giving up keeps what the run did" do
    name = start!("nonstream_agent")
    slow = slow_double(self())

    {:ok, run} = Agent.run(name, "go", tools: [slow])
    assert_receive :tool_called, 5_000

    assert {:error, %Error{kind: :timeout, message: message, details: details}} =
             Agent.await(run, 100)

    assert message =~ "did not finish within 100 ms"
    assert %{messages: %Messages{count: count}, usage: %Usage{requests: 1}} = details
    assert count >= 2
  end

  describe "issue 15: a run that answered is never cancelled" do
    test "20 successful runs: no cancellation reaches Python, none is logged" do
      name = start!("watched_agent", deps_factory: "synapse_fixtures.fidelity:watched_scope")

      log =
        capture_log(fn ->
          for n <- 1..20 do
            assert {:ok, %Result{output: "doubled: 42"}} =
                     Agent.run_sync(name, "go", tools: [double()], deps: %{user: "run#{n}"})
          end

          # Let any late cancellation reach the worker and its log.
          Process.sleep(500)
        end)

      {:ok, %Result{output: json}} = Agent.run_sync(name, "exits?", deps: %{user: "q"})
      {:ok, exits} = SynapseCore.JSON.decode(json)
      assert Enum.take(exits, 20) == for(n <- 1..20, do: "run#{n}: ok")
      # Tests of other modules run meanwhile and log their own cancellations;
      # every line the worker logs about a run names its agent (as Python's
      # repr of the id).
      ours = "'#{SynapseCore.Worker.agent_id(name)}'"

      assert [] ==
               for(line <- String.split(log, "\n"), line =~ ours, line =~ ~r/cancel/i, do: line)
    end
  end
end
