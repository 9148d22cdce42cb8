defmodule SynapseCore.EventsTest do
  # Every event pydantic-ai streams reaches Elixir, in order, as the same
  # agent run directly in Python streams it (synapse_fixtures.events, run
  # through Synapse and with synapse_fixtures.direct_run; see
  # SynapseCore.Fidelity); the outputs validated as they grow are Python's
  # `stream_output`'s; SynapseCore.StreamState folds events into the
  # message being written.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Event, Fidelity, Messages, Result, StreamState}

  @moduletag capture_log: true

  @thinking "synapse_fixtures.events:thinking_agent"
  @back_and_forth "synapse_fixtures.events:back_and_forth_agent"

  # Runs `turns` on `ref` through Synapse and in Python; asserts both are
  # the same run (events, outputs, messages, what the model got).
  defp same_as_python!(ref, turns) do
    record = Fidelity.record_path("synapse")
    name = start_fixture_agent!("events", agent: ref, env: [{"SYNAPSE_FIDELITY_RECORD", record}])
    Fidelity.assert_same_as_python!(name, ref, turns, record)
  end

  describe "every event pydantic-ai streams, in its order" do
    test "thinking, text, tool call argument deltas, part ends, tools, output tools, custom events" do
      [outcome] =
        same_as_python!(@thinking, [%{"prompt" => "go", "stream" => true, "events" => "all"}])

      kinds = outcome["events"] |> Enum.map(&hd/1) |> Enum.uniq()

      # Every kind this agent's run has, each compared above with Python's.
      for kind <- ~w(part_start thinking_delta part_delta text_delta tool_call_delta part_end
                     tool_call event tool_result final_result output_tool_call output_tool_result) do
        assert kind in kinds, "no #{kind} in #{inspect(kinds)}"
      end

      # The thinking signature came as a part delta after the thinking text.
      assert ["part_delta", 0, %{"signature_delta" => "sig-1"} = _] =
               Enum.find(outcome["events"], &match?(["part_delta" | _], &1))

      # The custom event the tool emitted (RunContext.emit).
      assert ["event", "custom", %{"value" => 21}] =
               Enum.find(outcome["events"], &match?(["event" | _], &1))
    end

    test "the default kinds and a chosen list are Python's events of those kinds" do
      same_as_python!(@thinking, [
        %{"prompt" => "go", "stream" => true},
        %{"prompt" => "go", "stream" => true, "events" => ["thinking_delta", "final_result"]}
      ])
    end

    test "text and thinking going back to a part started before: a part_delta names it first" do
      [all, _without_part_deltas] =
        same_as_python!(@back_and_forth, [
          %{"prompt" => "go", "stream" => true, "events" => "all"},
          %{"prompt" => "go", "stream" => true, "events" => ["part_start", "text_delta"]}
        ])

      # After the tool call (part 2) starts, pydantic-ai adds text to part
      # 1, thinking to part 0, then text to part 1 again: each time a part
      # other than the one named last. (Compared with Python's above.)
      after_call = Enum.drop_while(all["events"], &(not match?(["tool_call_delta", 2 | _], &1)))

      assert [
               ["tool_call_delta", 2 | _],
               ["part_delta", 1, %{"part_delta_kind" => "text", "content_delta" => ""}],
               ["text_delta", "lo"],
               ["part_delta", 0, %{"part_delta_kind" => "thinking", "content_delta" => nil}],
               ["thinking_delta", "think."],
               ["part_delta", 1, %{"part_delta_kind" => "text", "content_delta" => ""}],
               ["text_delta", "!"],
               ["part_end", 2 | _] | _
             ] = after_call
    end

    test "deferred tool requests end a run whose tool needs approval" do
      [outcome] =
        same_as_python!("synapse_fixtures.events:approval_agent", [
          %{"prompt" => "delete it", "stream" => true, "events" => "all"}
        ])

      assert [["deferred_tool_requests", %{"approvals" => [%{"tool_name" => "delete_file"}]}]] =
               Enum.filter(outcome["events"], &match?(["deferred_tool_requests" | _], &1))

      # StreamState holds them, for a process that shows what waits.
      name = start_fixture_agent!("approval", agent: "synapse_fixtures.events:approval_agent")
      state = name |> Agent.run_stream("delete it", events: :all) |> StreamState.from_events()
      assert %{approvals: [%{"tool_call_id" => "del_1"}], calls: []} = state.deferred
    end

    test "what a tool shows the model after its result is in its :tool_result, as in Python" do
      [outcome] =
        same_as_python!("synapse_fixtures.events:snapshot_agent", [
          %{"prompt" => "look", "stream" => true, "events" => "all"}
        ])

      # Compared with Python's FunctionToolResultEvent.content above; here
      # against what the tool returned.
      png = <<0x89, "PNG\r\n", 0x1A, "\n", 0, 0, 0, "\rIHDR", 0xFF, 0xFE>>

      assert [["tool_result", "snapshot", "snapshot taken", [text, image]]] =
               Enum.filter(outcome["events"], &match?(["tool_result" | _], &1))

      assert text == "The snapshot:"
      assert %{"kind" => "binary", "media_type" => "image/png", "data" => data} = image
      assert Base.url_decode64!(data) == png
    end

    test "the terms: atoms for Synapse's keys, pydantic-ai's JSON with binary keys" do
      name = start_fixture_agent!("events", agent: @thinking)
      events = name |> Agent.run_stream("go", events: :all) |> Enum.to_list()

      assert {:part_start,
              %{
                index: 0,
                part: %{"part_kind" => "thinking", "content" => ""},
                previous_part_kind: nil
              }} = hd(events)

      assert {:tool_call, %{id: "call_1", name: "double", args: %{"n" => 21}, args_valid: true}} in events

      assert {:tool_result,
              %{
                id: "call_1",
                name: "double",
                content: 42,
                retry: false,
                outcome: "success",
                user_content: nil
              }} in events

      assert {:final_result, %{tool_name: "final_result", tool_call_id: "out_1"}} in events
      assert {:result, %Result{output: %{"name" => "Rex"}}} = List.last(events)
      # Every event is one of the documented kinds (and the result).
      assert Enum.all?(events, fn {kind, _} -> kind in [:result | Event.kinds()] end)
    end

    test "every kind has its field in the wire contract, and every event field its kind" do
      {:ok, python} = SynapseCore.Python.interpreter()

      script = """
      from synapse_python import _events
      print(" ".join(sorted(_events._KINDS)))
      """

      {out, 0} =
        System.cmd(python, ["-c", script],
          env: [{"PYTHONPATH", SynapseCore.Python.package_dir()}],
          stderr_to_stdout: true
        )

      assert Enum.sort(Event.wire_names(Event.kinds())) == String.split(out)
      # The type lists every kind, and the kinds are the documented ones.
      {:ok, types} = Code.Typespec.fetch_types(Event)

      [{:type, {:kind, {:type, _, :union, members}, []}}] =
        for {_, {:kind, _, _}} = t <- types, do: t

      assert Enum.sort(for {:atom, _, kind} <- members, do: kind) == Enum.sort(Event.kinds())
    end

    test "unknown kinds, and no kinds at all, are refused" do
      assert_raise ArgumentError,
                   ~r/invalid :events option: expected :all or a non-empty list/,
                   fn ->
                     Agent.run_stream(:any, "x", events: [])
                   end

      assert_raise ArgumentError, ~r/events/, fn ->
        Agent.run_stream(:any, "x", events: [:nope])
      end

      assert_raise ArgumentError, ~r/events/, fn ->
        Agent.run_stream(:any, "x", events: :text_delta)
      end
    end

    test "a model streaming tool arguments slowly: each fragment reaches the consumer as it comes" do
      name = start_fixture_agent!("slow", agent: "synapse_fixtures.events:slow_args_agent")
      gate = tmp_dir("synapse-gate")
      File.mkdir_p!(gate)
      on_exit(fn -> File.rm_rf!(gate) end)

      {:ok, %{ref: ref} = run} =
        Agent.run_stream(name, "3 #{gate}",
          stream_to: self(),
          events: [:tool_call_delta, :tool_call]
        )

      # Fragment i is only written once the file i exists, which is
      # created here after fragment i-1 arrived: the run is in lockstep
      # with this process.
      fragments =
        for index <- 0..3 do
          assert_receive {:synapse_event, ^ref, {:tool_call_delta, %{args_delta: fragment}}},
                         30_000

          Agent.ack(run)

          if index < 3 do
            refute_received {:synapse_event, ^ref, {:tool_call, _}}
            File.touch!(Path.join(gate, "#{index}"))
          end

          fragment
        end

      # The closing fragment.
      assert_receive {:synapse_event, ^ref, {:tool_call_delta, %{args_delta: "]}"}}}, 30_000
      Agent.ack(run)

      assert Enum.join(fragments) == ~s({"items": ["item1", "item2", "item3")

      assert_receive {:synapse_event, ^ref,
                      {:tool_call, %{args: %{"items" => ["item1", "item2", "item3"]}}}},
                     30_000

      Agent.ack(run)
      assert_receive {:synapse_event, ^ref, {:result, %Result{output: "done"}}}, 30_000
    end
  end

  describe "outputs validated as they grow (stream_output)" do
    for ref <- [
          @thinking,
          "synapse_fixtures.outputs:tool_output_agent",
          "synapse_fixtures.outputs:native_output_agent",
          "synapse_fixtures.outputs:prompted_output_agent",
          "synapse_fixtures.outputs:text_output_agent"
        ] do
      test "are Python's stream_output: #{ref}" do
        [outcome] =
          same_as_python!(unquote(ref), [%{"prompt" => "a pet", "stream_output" => true}])

        assert [_, _ | _] = outcome["outputs"]
      end
    end

    test "partial ones first, then the run's output" do
      name = start_fixture_agent!("events", agent: @thinking)
      events = name |> Agent.run_stream("go", events: [:output]) |> Enum.to_list()
      outputs = for {:output, output} <- events, do: output

      # The output grows: the species is "do" before it is "dog".
      assert [%{partial: true, output: %{"name" => "Rex", "species" => "do"}} | _] = outputs

      assert %{partial: false, output: %{"name" => "Rex", "species" => "dog"}, output_type: "Pet"} =
               List.last(outputs)

      assert [{:output, _}, {:result, %Result{}}] = Enum.take(events, -2)
    end
  end

  describe "StreamState folds events into the message being written" do
    test "text, thinking, tool calls with their results, output; parts as pydantic-ai's response" do
      name = start_fixture_agent!("events", agent: @thinking)
      events = name |> Agent.run_stream("go", events: :all) |> Enum.to_list()
      state = StreamState.from_events(events)

      assert state.done?
      assert state.text == "Doubling it. "
      assert state.thinking == "Let me think."
      assert %Result{} = state.result
      assert state.output == %{"name" => "Rex", "species" => "dog"}

      assert [
               %{
                 id: "call_1",
                 name: "double",
                 kind: :function,
                 args: %{"n" => 21},
                 args_json: ~s({"n": 21}),
                 result: %{content: 42, retry: false, outcome: "success"}
               },
               %{id: "out_1", name: "final_result", kind: :output, args: %{"species" => "dog"}}
             ] = state.tool_calls

      # Folded up to the end of each model response, the parts are that
      # response's parts in the run's history.
      responses =
        for %{"kind" => "response", "parts" => parts} <- Messages.decode!(state.result.messages),
            do: Fidelity.without_volatile(parts)

      folded =
        events
        |> Enum.scan(StreamState.new(), &StreamState.apply_event(&2, &1))
        |> Enum.zip(events)
        |> Enum.filter(fn {_, event} -> match?({:part_end, %{next_part_kind: nil}}, event) end)
        |> Enum.map(fn {state, _} -> Fidelity.without_volatile(state.parts) end)

      assert folded == responses
    end

    test "text and thinking a model adds to parts it started before go to those parts" do
      # pydantic-ai adds the text after the tool call to the text part, and
      # the thinking to the thinking part: its response is
      # [thinking "Let me think.", text "Hello!", the call].
      ref = "synapse_fixtures.events:back_and_forth_agent"

      [[python]] =
        Fidelity.direct_run!([
          %{"agent" => ref, "turns" => [%{"prompt" => "go", "stream" => true}]}
        ])

      responses =
        for %{"kind" => "response", "parts" => parts} <-
              Fidelity.messages(python["messages_json"]),
            do: parts

      assert [
               [
                 %{"content" => "Let me think."},
                 %{"content" => "Hello!"},
                 %{"tool_name" => "shout"}
               ],
               _
             ] = responses

      name = start_fixture_agent!("back_and_forth", agent: @back_and_forth)
      events = name |> Agent.run_stream("go", events: :all) |> Enum.to_list()
      state = StreamState.from_events(events)
      assert state.text == "Hello!Done."
      assert state.thinking == "Let me think."

      # Folded up to the end of each model response, the parts are that
      # response's parts.
      folded =
        events
        |> Enum.scan(StreamState.new(), &StreamState.apply_event(&2, &1))
        |> Enum.zip(events)
        |> Enum.filter(fn {_, event} -> match?({:part_end, %{next_part_kind: nil}}, event) end)
        |> Enum.map(fn {state, _} -> Fidelity.without_volatile(state.parts) end)

      assert folded == responses
    end

    test "a response that follows one with no tool call starts its parts over" do
      text = fn index, content, next ->
        [
          {:part_start,
           %{
             index: index,
             part: %{"part_kind" => "text", "content" => ""},
             previous_part_kind: nil
           }},
          {:text_delta, content},
          {:part_end,
           %{
             index: index,
             part: %{"part_kind" => "text", "content" => content},
             next_part_kind: next
           }}
        ]
      end

      # An output retry: the first response's two parts, then a new one.
      state =
        StreamState.from_events(text.(0, "a", "text") ++ text.(1, "b", nil) ++ text.(0, "c", nil))

      assert state.parts == [%{"part_kind" => "text", "content" => "c"}]
      assert state.text == "abc"
    end

    test "while the arguments stream, the call shows their text so far" do
      name = start_fixture_agent!("events", agent: @thinking)

      states =
        name
        |> Agent.run_stream("go", events: [:part_start, :tool_call_delta])
        |> Enum.scan(StreamState.new(), &StreamState.apply_event(&2, &1))

      seen =
        for %{tool_calls: [%{name: "double", args_json: json} | _]} <- states,
            uniq: true,
            do: json

      assert [_ | _] = seen
      assert Enum.take(seen, -1) == [~s({"n": 21})]
      assert ~s({"n") in seen
    end

    test "a receiving process keeps a state, as a LiveView would" do
      name = start_fixture_agent!("events", agent: @thinking)
      {:ok, %{ref: ref} = run} = Agent.run_stream(name, "go", stream_to: self(), events: :all)

      state =
        Stream.repeatedly(fn ->
          assert_receive {:synapse_event, ^ref, event}, 30_000
          Agent.ack(run)
          event
        end)
        |> Enum.reduce_while(StreamState.new(), fn event, state ->
          state = StreamState.apply_event(state, event)
          if state.done?, do: {:halt, state}, else: {:cont, state}
        end)

      assert state.text == "Doubling it. "
      assert state.output == %{"name" => "Rex", "species" => "dog"}
    end
  end
end
