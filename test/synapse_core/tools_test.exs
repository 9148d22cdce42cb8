defmodule SynapseCore.ToolsTest do
  # Tools written in Elixir, called by real pydantic-ai runs in real workers.
  use ExUnit.Case, async: true
  use SynapseCore.Transports

  import ExUnit.CaptureLog, only: [with_log: 1]
  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Result, TestTools, Tool}
  alias SynapseCore.Tool.Context

  @moduletag capture_log: true

  # calling_agent's protocol: a JSON prompt listing the tool calls of its
  # first response; it then answers the JSON list of what the calls returned
  # (`content`) or the retry prompts they got (`retry`).
  defp script(calls, retry_calls \\ false) do
    encode(%{"calls" => calls, "retry_calls" => retry_calls})
  end

  # A tiny JSON encoder for the test prompts (the project has no JSON library).
  defp encode(map) when is_map(map),
    do:
      "{" <>
        Enum.map_join(map, ",", fn {k, v} -> encode(to_string(k)) <> ":" <> encode(v) end) <> "}"

  defp encode(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &encode/1) <> "]"
  defp encode(string) when is_binary(string), do: inspect(string)
  defp encode(value) when is_boolean(value) or is_number(value), do: to_string(value)

  defp call(name, args), do: %{"name" => name, "args" => args}

  # The tool-return parts of a result's messages, without what differs
  # between two runs.
  defp tool_returns(%Result{messages: messages}) do
    {:ok, messages} = SynapseCore.Messages.decode(messages)

    for %{"parts" => parts} <- messages,
        %{"part_kind" => "tool-return"} = part <- parts,
        do: Map.drop(part, ["timestamp"])
  end

  defp tool(name, function, opts \\ []) do
    Tool.new([name: name, function: function, parameters: [a: :integer]] ++ opts)
  end

  describe "the test model calls every tool" do
    test "with schema-valid arguments, which the Elixir functions see as declared" do
      name = start_fixture_agent!("tools_agent", tools: [TestTools])

      assert {:ok, %Result{output: output, usage: usage}} =
               Agent.run_sync(name, "go", deps: self())

      assert_received {:tool_called, :lookup, args, %Context{agent: ^name} = context}
      assert args.kind in [:order, :invoice]
      assert Enum.all?(args.ids, &is_integer/1)
      assert args.note == "none" or is_binary(args.note)
      assert is_binary(context.run_id) and context.run_id != ""
      assert is_binary(context.tool_call_id)
      # TestModel answers the tools' last returns, by name.
      assert output =~ ~s("multiply":)
      assert output =~ ~s("lookup":{"found":)
      assert usage.tool_calls == 2
    end

    test "alongside the Python agent's own tools" do
      name = start_fixture_agent!("tool_agent")
      multiply = TestTools.__synapse_tools__() |> Enum.find(&(&1.name == "multiply"))

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, "go", tools: [multiply])
      assert output =~ ~s("add":)
      assert output =~ ~s("multiply":)
    end
  end

  describe "a scripted model" do
    setup do
      %{name: start_fixture_agent!("calling_agent", tools: [TestTools])}
    end

    test "gets the Elixir-computed value back and answers with it", %{name: name} do
      prompt = script([call("multiply", %{"a" => 6, "b" => 7})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt)
      assert output == ~s([{"name": "multiply", "content": 42}])
    end

    test "run/3 and await/2 execute tools too", %{name: name} do
      {:ok, run} = Agent.run(name, script([call("multiply", %{"a" => 2, "b" => 21})]))
      assert {:ok, %Result{output: ~s([{"name": "multiply", "content": 42}])}} = Agent.await(run)
    end

    test "invalid arguments go back to the model as a retry", %{name: name} do
      prompt = script([call("multiply", %{"a" => "six", "b" => 7})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt)
      assert output =~ ~s("retry": "Invalid arguments for the tool multiply)
      assert output =~ "$.a: expected integer, got string"
    end

    test "numbers JSON cannot hold (1e400, NaN) are invalid arguments, not a string", %{
      name: name
    } do
      test = self()

      half =
        Tool.new(
          name: "half",
          parameters: [x: :number],
          function: fn %{x: x} ->
            send(test, :half_called)
            x / 2
          end
        )

      for args <- [~s({"x": 1e400}), ~s({"x": NaN}), ~s({"x": [1, -Infinity]})] do
        prompt = script([call("half", args)])
        assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [half])

        assert output =~
                 ~s("retry": "Invalid arguments for the tool half: a number that is not finite)

        refute output =~ "expected object, got string"
      end

      refute_received :half_called
    end

    test "{:failed, reason} is pydantic-ai's ToolFailed: the model sees a failure, no retry is used",
         %{name: name} do
      find_order =
        Tool.new(
          name: "find_order",
          description: "Looks an order up.",
          parameters: [id: :integer],
          max_retries: 0,
          function: fn %{id: id} -> {:failed, "no order #{id}"} end
        )

      # Twice in one response: with max_retries 0 a retry would fail the run.
      prompt = script([call("find_order", %{"id" => 42}), call("find_order", %{"id" => 7})])
      assert {:ok, elixir} = Agent.run_sync(name, prompt, tools: [find_order])

      # The same calls of a Python tool raising ToolFailed, in the worker.
      python = start_fixture_agent!("failing_lookup_agent")
      assert {:ok, direct} = Agent.run_sync(python, prompt)

      assert elixir.output ==
               ~s([{"name": "find_order", "failed": "no order 42"}, ) <>
                 ~s({"name": "find_order", "failed": "no order 7"}])

      assert elixir.output == direct.output
      assert [%{"outcome" => "failed"}, %{"outcome" => "failed"}] = tool_returns(elixir)
      assert tool_returns(elixir) == tool_returns(direct)
      assert elixir.usage.tool_calls == direct.usage.tool_calls
    end

    test "the context has the tool's retries, as pydantic-ai's ctx.max_retries", %{name: name} do
      test = self()
      report = fn label -> fn _args, context -> send(test, {label, context}) && :ok end end

      tools = [
        Tool.new(name: "own", max_retries: 3, function: report.(:own)),
        Tool.new(name: "default", function: report.(:default))
      ]

      prompt = script([call("own", %{}), call("default", %{})])
      assert {:ok, _} = Agent.run_sync(name, prompt, tools: tools)
      assert_received {:own, %Context{max_retries: 3, retry: 0}}
      # calling_agent's own default: pydantic-ai's, 1.
      assert_received {:default, %Context{max_retries: 1, retry: 0}}
    end

    test "once the retries are used up, the run fails with :tool_failed", %{name: name} do
      prompt = script([call("multiply", %{"a" => "six", "b" => 7})], true)

      assert {:error, %Error{kind: :tool_failed, message: message}} = Agent.run_sync(name, prompt)
      assert message =~ "multiply"
      assert message =~ "expected integer"
    end

    test "a tool name the run does not have", %{name: name} do
      prompt = script([call("nope", %{})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt)
      assert output =~ "Unknown tool name: 'nope'"
    end
  end

  describe "failing tools go back to the model as retries" do
    setup do
      %{name: start_fixture_agent!("calling_agent")}
    end

    test "a tool that raises", %{name: name} do
      raising = tool("explode", fn _ -> raise "kaboom" end)
      prompt = script([call("explode", %{"a" => 1})])

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [raising])
      assert output =~ ~s["retry": "The tool failed: ** (RuntimeError) kaboom"]
    end

    test "a tool that returns {:error, reason}", %{name: name} do
      refusing = tool("refuse", fn _ -> {:error, "not allowed today"} end)
      prompt = script([call("refuse", %{"a" => 1})])

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [refusing])
      assert output =~ ~s("retry": "not allowed today")
    end

    test "a tool slower than its timeout", %{name: name} do
      test = self()

      sleepy =
        tool(
          "sleepy",
          fn _ ->
            send(test, {:sleepy, self()})
            Process.sleep(:infinity)
          end,
          timeout: 200
        )

      prompt = script([call("sleepy", %{"a" => 1})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [sleepy])
      assert output =~ ~s("retry": "The tool did not answer within 200 ms.")
      assert_received {:sleepy, task}
      refute Process.alive?(task)
    end

    test "a tool still running when the run's deadline passes is stopped", %{name: name} do
      test = self()

      stuck =
        tool("stuck", fn _ ->
          send(test, {:stuck, self()})
          Process.sleep(:infinity)
        end)

      prompt = script([call("stuck", %{"a" => 1})])

      assert {:error, %Error{kind: :timeout}} =
               Agent.run_sync(name, prompt, tools: [stuck], timeout: 700)

      assert_received {:stuck, task}
      eventually(fn -> not Process.alive?(task) end)
    end

    test "a tool whose process dies, killed or even normally, still gets an answer",
         %{name: name} do
      killed = tool("killed", fn _ -> Process.exit(self(), :kill) end)
      quitting = tool("quitting", fn _ -> Process.exit(self(), :normal) end)
      prompt = script([call("killed", %{"a" => 1}), call("quitting", %{"a" => 2})])

      assert {:ok, %Result{output: output}} =
               Agent.run_sync(name, prompt, tools: [killed, quitting])

      assert output =~ ~s("retry": "The tool crashed: killed")
      assert output =~ ~s("retry": "The tool crashed: normal")
    end

    test "a tool's process killed as it answers is answered once", %{name: name} do
      # A large result is encoded on a dirty scheduler, which takes a while:
      # the linked process crashes meanwhile, and the runner hears of the
      # call's end while the encoding goes on. Either answer may be the one
      # (the result, or "crashed"), never both.
      payload = Enum.to_list(1..200_000)

      linked =
        tool("linked", fn _ ->
          spawn_link(fn ->
            Process.sleep(100)
            exit(:helper_failed)
          end)

          {:ok, payload}
        end)

      # Keeps the run going, for a second answer to reach Python (which would
      # say it ignores it).
      slow =
        tool("slow", fn _ ->
          Process.sleep(2_000)
          {:ok, "slow"}
        end)

      prompt = script([call("linked", %{"a" => 1}), call("slow", %{"a" => 2})])

      {result, log} =
        with_log(fn -> Agent.run_sync(name, prompt, tools: [linked, slow], timeout: 30_000) end)

      assert {:ok, %Result{output: output}} = result
      assert output =~ ~s("content": "slow")
      refute log =~ "ignoring a tool_result"
    end

    test "a crash's stacktrace, and the arguments in it, are not the model's to see",
         %{name: name} do
      linked =
        tool("linked", fn _ ->
          spawn_link(fn ->
            connect = fn %{connected: true} -> :ok end
            connect.(%{connected: false, api_key: "sk-SECRET-123"})
          end)

          Process.sleep(:infinity)
        end)

      prompt = script([call("linked", %{"a" => 1})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [linked])

      assert output =~
               ~s|"retry": "The tool crashed: ** (FunctionClauseError) no function clause matching|

      refute output =~ "sk-SECRET-123"
    end

    test "a process that code in the runner links, and that ends, is no concern of the run",
         %{name: name} do
      # A :telemetry handler runs where its event is emitted: for a tool's
      # start, in the run's tool runner, whose mailbox gets the exit of the
      # Task the handler awaits.
      id = {__MODULE__, make_ref()}

      handler = fn _event, _measurements, metadata, _config ->
        if metadata.agent == name, do: Task.await(Task.async(fn -> :exported end))
      end

      :ok = :telemetry.attach(id, [:synapse, :tool, :start], handler, nil)
      on_exit(fn -> :telemetry.detach(id) end)

      slow =
        tool("slow", fn _ ->
          Process.sleep(300)
          {:ok, "done"}
        end)

      prompt = script([call("slow", %{"a" => 1})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [slow])
      assert output =~ ~s("content": "done")
    end

    test "a tool sees its run's caller among its $callers, its runner in $ancestors, as in a Task",
         %{name: name} do
      test = self()

      callers =
        tool("callers", fn _ ->
          send(test, {:callers, Process.get(:"$callers"), Process.get(:"$ancestors")})
          {:ok, "seen"}
        end)

      prompt = script([call("callers", %{"a" => 1})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [callers])
      assert output =~ ~s("content": "seen")
      assert_received {:callers, [runner, ^test], [runner | _]}
      assert is_pid(runner) and runner != test
    end

    test "a tool still running when its runner is killed dies with it, even one trapping exits",
         %{name: name} do
      test = self()

      for trap_exit <- [false, true] do
        stuck =
          tool("stuck", fn _ ->
            Process.flag(:trap_exit, trap_exit)
            send(test, {:stuck, self(), Process.get(:"$callers")})
            Process.sleep(:infinity)
          end)

        prompt = script([call("stuck", %{"a" => 1})])
        caller = Task.async(fn -> Agent.run_sync(name, prompt, tools: [stuck]) end)
        assert_receive {:stuck, task, [runner | _]}, 10_000
        on_exit(fn -> Process.exit(task, :kill) end)
        Process.exit(runner, :kill)
        eventually(fn -> not Process.alive?(task) end)
        # The runner owned the run too: its exit cancels the run, which answers.
        assert {:error, %Error{kind: :cancelled}} = Task.await(caller, 10_000)
      end
    end

    test "a result with no JSON form", %{name: name} do
      pid_giver = tool("give_pid", fn _ -> {:ok, self()} end)
      prompt = script([call("give_pid", %{"a" => 1})])

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [pid_giver])
      assert output =~ ~s("retry": "The tool's result cannot be sent)
      assert output =~ "no JSON form"
    end

    test "an error reason or exception message that is not UTF-8", %{name: name} do
      bad_error = tool("bad_error", fn _ -> {:error, <<0xFF, ?a>>} end)
      bad_raise = tool("bad_raise", fn _ -> raise <<?b, 0xFE>> end)
      prompt = script([call("bad_error", %{"a" => 1}), call("bad_raise", %{"a" => 2})])

      assert {:ok, %Result{output: output}} =
               Agent.run_sync(name, prompt, tools: [bad_error, bad_raise])

      assert output =~ ~s("retry": "<<255, 97>>")
      assert output =~ ~s["retry": "The tool failed: ** (RuntimeError) <<98, 254>>"]
    end
  end

  describe "tool outcomes of every size" do
    # The runner encodes small outcomes on its own scheduler and the others
    # on a dirty one: both reach the model exactly.
    test "reach the model as they were returned" do
      name = start_fixture_agent!("calling_agent")
      long = String.duplicate("é", 20 * 1024)
      many = Enum.to_list(1..500)
      wide = Map.new(1..100, &{"k#{&1}", &1})
      big = 2 ** 70

      outcomes = %{
        "small" => %{"a" => [1, 2.5, nil, true], "b" => "text"},
        "long" => long,
        "many" => many,
        "wide" => wide,
        "big" => big,
        "nested" => Enum.reduce(1..70, [], &[&1, &2])
      }

      tools = for {tool_name, value} <- outcomes, do: tool(tool_name, fn _ -> {:ok, value} end)
      prompt = script(for {tool_name, _} <- outcomes, do: call(tool_name, %{"a" => 1}))

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: tools)
      {:ok, returned} = SynapseCore.JSON.decode(output)

      assert Map.new(returned, &{&1["name"], &1["content"]}) == outcomes
    end
  end

  describe "tool requests of every size" do
    # On the lane, a run's tool requests are consumed where they are read,
    # and from the first large one on by a task: in order either way.
    test "a large request and the small ones after it reach their tools" do
      name = start_fixture_agent!("calling_agent")
      long = String.duplicate("é", 20 * 1024)
      test = self()

      echo =
        Tool.new(
          name: "echo",
          parameters: [text: :string],
          function: fn %{text: text} ->
            send(test, {:echoed, text})
            {:ok, byte_size(text)}
          end
        )

      texts = [long, "short", "also short"]
      calls = Enum.map(texts, &call("echo", %{"text" => &1}))
      {:ok, prompt} = SynapseCore.JSON.encode(%{"calls" => calls, "retry_calls" => false})

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [echo])
      {:ok, returned} = SynapseCore.JSON.decode(output)
      assert Enum.map(returned, & &1["content"]) == Enum.map(texts, &byte_size/1)
      for text <- texts, do: assert_received({:echoed, ^text})
    end
  end

  describe "tool outcomes over the message size limit" do
    setup do
      %{name: start_fixture_agent!("calling_agent", max_message_bytes: 64 * 1024)}
    end

    test "a huge error reason or result becomes a retry prompt saying so", %{name: name} do
      huge = String.duplicate("x", 200 * 1024)
      big_error = tool("big_error", fn _ -> {:error, huge} end)
      big_result = tool("big_result", fn _ -> {:ok, huge} end)
      prompt = script([call("big_error", %{"a" => 1}), call("big_result", %{"a" => 2})])

      assert {:ok, %Result{output: output}} =
               Agent.run_sync(name, prompt, tools: [big_error, big_result])

      assert output =~ ~s("retry": "The tool's error message cannot be sent)
      assert output =~ ~s("retry": "The tool's result cannot be sent)
      assert output =~ "maximum message size"
    end

    test "a result at the limit on its own, over it with its request id, is refused too",
         %{name: name} do
      # 65,532 bytes of JSON: a `ToolResult` of 65,536 bytes without its
      # request id, more with it and the `RunInput` around it.
      edge = tool("edge", fn _ -> {:ok, String.duplicate("x", 65_530)} end)
      prompt = script([call("edge", %{"a" => 1})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [edge])
      assert output =~ ~s("retry": "The tool's result cannot be sent)
    end
  end

  describe "streaming with tools" do
    test "tool call and result events come in order and the stream finishes" do
      name = start_fixture_agent!("calling_agent", tools: [TestTools])
      prompt = script([call("multiply", %{"a" => 3, "b" => 5})])

      events = name |> Agent.run_stream(prompt) |> Enum.to_list()
      kinds = Enum.map(events, &elem(&1, 0))

      assert {:tool_call, %{id: id, name: "multiply", args: %{"a" => 3, "b" => 5}}} =
               Enum.find(events, &match?({:tool_call, _}, &1))

      assert {:tool_result, %{id: ^id, name: "multiply", content: 15, retry: false}} =
               Enum.find(events, &match?({:tool_result, _}, &1))

      assert Enum.find_index(kinds, &(&1 == :tool_call)) <
               Enum.find_index(kinds, &(&1 == :tool_result))

      assert {:result, %Result{output: ~s([{"name": "multiply", "content": 15}])}} =
               List.last(events)
    end

    test "parallel tool calls of one model response run in parallel" do
      name = start_fixture_agent!("calling_agent")
      test = self()

      rendezvous =
        tool("rendezvous", fn %{a: a}, context ->
          send(context.deps, {:arrived, a, self()})

          receive do
            :go -> a * 10
          after
            5_000 -> "nobody came"
          end
        end)

      prompt = script(for a <- 1..3, do: call("rendezvous", %{"a" => a}))
      stream = Agent.run_stream(name, prompt, tools: [rendezvous], deps: test)
      consumer = Task.async(fn -> Enum.to_list(stream) end)

      # All three calls are running at once before any of them may finish.
      tasks =
        for _ <- 1..3 do
          assert_receive {:arrived, _a, task}, 5_000
          task
        end

      Enum.each(tasks, &send(&1, :go))
      events = Task.await(consumer)

      results = for {:tool_result, %{content: content}} <- events, do: content
      assert Enum.sort(results) == [10, 20, 30]
      assert {:result, %Result{}} = List.last(events)
    end
  end

  describe "tool definitions" do
    test "agent tools and run tools together; one name twice is refused" do
      name = start_fixture_agent!("calling_agent", tools: [TestTools])
      double = tool("double", fn %{a: a} -> 2 * a end)
      prompt = script([call("double", %{"a" => 4}), call("multiply", %{"a" => 2, "b" => 2})])

      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [double])
      assert output =~ ~s({"name": "double", "content": 8})
      assert output =~ ~s({"name": "multiply", "content": 4})

      assert_raise ArgumentError, ~r/multiply/, fn ->
        Agent.run_sync(name, prompt, tools: [tool("multiply", fn _ -> 0 end)])
      end
    end

    test "a tool built by hand, its parameters with no JSON form, is refused where it is given" do
      bad = %Tool{
        name: "bad",
        parameters: %{"type" => "object", "default" => {:not, :json}},
        function: fn _ -> :ok end
      }

      assert_raise ArgumentError, ~r/parameters of tool "bad" have no JSON form/, fn ->
        Agent.child_spec(name: :bad_tool_agent, model: "test", tools: [bad])
      end

      name = start_fixture_agent!("calling_agent")

      assert_raise ArgumentError, ~r/parameters of tool "bad" have no JSON form/, fn ->
        Agent.run_sync(name, script([]), tools: [bad])
      end

      double = tool("double", fn %{a: a} -> 2 * a end)
      prompt = script([call("double", %{"a" => 4})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [double])
      assert output == ~s([{"name": "double", "content": 8}])
    end

    test "a JSON Schema map as parameters; arguments keep string keys" do
      name = start_fixture_agent!("calling_agent")

      echo =
        Tool.new(
          name: "echo",
          parameters: %{"type" => "object", "properties" => %{"text" => %{"type" => "string"}}},
          function: fn args -> args end
        )

      prompt = script([call("echo", %{"text" => "hi"})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [echo])
      assert output == ~s([{"name": "echo", "content": {"text": "hi"}}])
    end

    test "a tool given no :parameters takes none, as documented (the default is [])" do
      name = start_fixture_agent!("calling_agent")
      now = Tool.new(name: "now", function: fn args -> map_size(args) end)
      assert now.parameters == Tool.new(name: "now", parameters: [], function: & &1).parameters
      assert now.fields == []

      prompt = script([call("now", %{})])
      assert {:ok, %Result{output: output}} = Agent.run_sync(name, prompt, tools: [now])
      assert output == ~s([{"name": "now", "content": 0}])
    end

    test "invalid tools are refused when they are defined" do
      assert_raise ArgumentError, ~r/tool name/, fn ->
        Tool.new(name: "has space", function: fn _ -> :ok end)
      end

      assert_raise ArgumentError, ~r/arity 1 or 2/, fn ->
        Tool.new(name: "x", function: fn -> :ok end)
      end

      assert_raise ArgumentError, ~r/not a schema type/, fn ->
        Tool.new(name: "x", parameters: [a: :date], function: fn _ -> :ok end)
      end

      assert_raise ArgumentError, ~r/not a module of tools/, fn -> Tool.expand([Enum]) end
    end

    test "@tool errors are compile errors" do
      source = """
      defmodule SynapseCore.ToolsTest.Broken do
        use SynapseCore.Tools
        @tool a: :no_such_type
        def broken(_args), do: :ok
      end
      """

      assert_raise CompileError, ~r/invalid @tool for broken\/1.*not a schema type/, fn ->
        Code.compile_string(source)
      end

      source = """
      defmodule SynapseCore.ToolsTest.Private do
        use SynapseCore.Tools
        @tool []
        defp hidden(_args), do: :ok
      end
      """

      assert_raise CompileError, ~r/public function of arity 1 or 2/, fn ->
        Code.compile_string(source)
      end
    end

    test "a module's tools carry their docs as descriptions" do
      [multiply, lookup] = TestTools.__synapse_tools__()
      assert multiply.description == "Multiplies two integers."
      assert multiply.parameters["properties"]["a"]["description"] == "The first factor"
      assert lookup.parameters["properties"]["kind"] == %{"enum" => ["order", "invoice"]}
      assert lookup.parameters["required"] == ["kind", "ids"]
    end
  end
end
