defmodule SynapseCore.FidelityExamplesTest do
  # pydantic-ai's documented example agents (our own versions, in
  # test/support/python/synapse_fixtures/examples), each run through Synapse
  # and directly in Python in the same test, with the same models: outputs,
  # their types, usage, stream events, tool calls, the messages (all and
  # new) and every request the model received must be the same. The models
  # are recorded FunctionModels; the HTTP path is compared byte for byte
  # against a loopback OpenAI-compatible server.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Fidelity, Result}

  @moduletag capture_log: true

  @examples "synapse_fixtures.examples"

  # Starts the example agent `attr` of `module`; its model records to `record`.
  defp start_example!(ref, record, extra) do
    name = unique_name()

    start_supervised!(
      {SynapseCore.Agent,
       [
         name: name,
         agent: "#{@examples}.#{ref}",
         python_path: [fixtures_path()],
         env: [{"SYNAPSE_FIDELITY_RECORD", record} | Keyword.get(extra, :env, [])]
       ] ++ Keyword.delete(extra, :env)},
      id: name
    )

    name
  end

  # Runs `turns` both ways and compares everything; returns the Synapse outcomes.
  defp compare!(ref, turns, extra \\ [], direct_case \\ %{}) do
    synapse_record = Fidelity.record_path("synapse")
    python_record = Fidelity.record_path("python")
    name = start_example!(ref, synapse_record, extra)
    synapse = Fidelity.synapse_run(name, turns)

    [direct] =
      Fidelity.direct_run!([
        Map.merge(
          %{
            "agent" => "#{@examples}.#{ref}",
            "deps_factory" => if(factory = extra[:deps_factory], do: factory, else: nil),
            "record" => python_record,
            "turns" => turns
          },
          direct_case
        )
      ])

    for {{ours, theirs}, index} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
      Fidelity.assert_same_run(ours, theirs, "#{ref}, turn #{index}")
    end

    requests = Fidelity.records(synapse_record)
    # (A model given with :model is not the recorded one.)
    assert requests != [] or extra[:model] != nil
    assert requests == Fidelity.records(python_record)
    %{outcomes: synapse, requests: requests}
  end

  test "pydantic_model: structured output, run_sync, a second turn, run_stream" do
    turns = [
      %{"prompt" => "The windy city in the US of A."},
      %{"prompt" => "What is the capital of France?", "history" => true},
      %{"prompt" => "And the capital of the United States?", "history" => true, "stream" => true}
    ]

    %{outcomes: [first, second, third], requests: requests} =
      compare!("pydantic_model:agent", turns)

    assert first["output"] == %{"city" => "Chicago", "country" => "United States"}
    assert first["output_type"] == "MyModel"
    assert second["output"] == %{"city" => "Paris", "country" => "France"}
    assert third["output"]["city"] == "Washington, D.C."
    # run_sync's requests are not streamed; run_stream's are.
    assert Enum.map(requests, & &1["streamed"]) == [false, false, true]
    # The third turn's request holds the two turns before it.
    assert length(List.last(requests)["messages"]) == 5
  end

  test "roulette_wheel: deps from Elixir data (an int), a Python tool, bool output" do
    turns = [
      %{"prompt" => "Put my money on square eighteen", "deps" => 18},
      %{"prompt" => "I bet five is the winner", "deps" => 18, "history" => true},
      %{"prompt" => "Square 18 again please", "deps" => 18, "history" => true, "stream" => true}
    ]

    %{outcomes: [first, second, third]} = compare!("roulette_wheel:roulette_agent", turns)

    assert {first["output"], second["output"], third["output"]} == {true, false, true}
    assert first["output_type"] == "bool"

    assert Fidelity.tool_calls(second["new_messages_json"]) == [
             {"roulette_wheel", %{"square" => 5}},
             {"final_result", %{"response" => false}}
           ]

    assert [
             ["tool_call", "roulette_wheel", %{"square" => 18}],
             ["tool_result", "roulette_wheel", "winner", nil]
           ] = third["events"]
  end

  test "bank_support: deps from an async context manager factory, dynamic instructions" do
    turns = [
      %{"prompt" => "What is my balance?", "deps" => %{"customer_id" => 123}},
      %{"prompt" => "I just lost my card!", "deps" => %{"customer_id" => 123}, "history" => true},
      %{
        "prompt" => "What is my balance now?",
        "deps" => %{"customer_id" => 123},
        "history" => true,
        "stream" => true
      }
    ]

    factory = "#{@examples}.bank_support:connect"

    %{outcomes: [first, second, _third], requests: [request | _]} =
      compare!("bank_support:support_agent", turns, deps_factory: factory)

    assert %{"block_card" => false, "risk" => 1, "support_advice" => advice} = first["output"]
    assert advice =~ "Hello John"
    assert advice =~ "$123.45"
    assert first["output_type"] == "SupportOutput"
    assert %{"block_card" => true, "risk" => 8} = second["output"]
    assert request["instructions"] =~ "The customer's name is 'John'"
    assert [%{"name" => "customer_balance"}] = request["function_tools"]
  end

  test "weather_agent: parallel tool calls through a client the deps factory opens" do
    turns = [
      %{"prompt" => "What is the weather like in London and in Wiltshire?", "deps" => nil},
      %{"prompt" => "And in Paris?", "deps" => nil, "history" => true},
      %{"prompt" => "And in London?", "deps" => nil, "history" => true, "stream" => true}
    ]

    factory = "#{@examples}.weather_agent:open_client"

    %{outcomes: [first, second, third], requests: requests} =
      compare!("weather_agent:weather_agent", turns, deps_factory: factory)

    assert first["output"] == "London: Sunny, 21 °C; Wiltshire: Light rain, 16 °C."
    assert second["output"] == "Paris: Partly cloudy, 24 °C."

    # Two calls in one model response, twice: parallel tool calls.
    assert [
             {"get_lat_lng", %{"location_description" => "London"}},
             {"get_lat_lng", %{"location_description" => "Wiltshire"}},
             {"get_weather", %{"lat" => 51.5072, "lng" => -0.1276}},
             {"get_weather", %{"lat" => 51.3492, "lng" => -1.9927}}
           ] = Fidelity.tool_calls(first["new_messages_json"])

    assert %{"usage" => %{"requests" => 3, "tool_calls" => 4}} = first
    assert length(requests) == 9
    assert ["tool_call", "get_lat_lng", _] = hd(third["events"])
  end

  test "flight_booking: deps validated from plain data, a sub-agent sharing usage, an output validator's retry, a union output" do
    deps = %{
      "web_page_text" => flight_page(),
      "req_origin" => "SFO",
      "req_destination" => "ANC",
      "req_date" => "2025-01-10"
    }

    turns = [
      %{"prompt" => "Find me a flight from SFO to ANC on 2025-01-10", "deps" => deps},
      %{"prompt" => "Anything cheaper?", "deps" => deps, "history" => true},
      %{"prompt" => "Find it again", "deps" => deps, "history" => true, "stream" => true}
    ]

    %{outcomes: [first, second, third], requests: requests} =
      compare!("flight_booking:search_agent", turns)

    assert first["output"] == %{
             "flight_number" => "SFO-AK123",
             "price" => 350,
             "origin" => "SFO",
             "destination" => "ANC",
             "date" => "2025-01-10"
           }

    assert first["output_type"] == "FlightDetails"
    # The search's usage counts the extraction agent's request (usage=ctx.usage).
    assert %Result{usage: %{requests: 4}} = first["result"]

    assert Enum.any?(requests, fn %{"messages" => [%{"parts" => [part | _]} | _]} ->
             part["content"] == "Extract all the flight details from the given text."
           end)

    # The first proposal was rejected by the output validator, then corrected.
    retry_prompts =
      for %{"parts" => parts} <- Fidelity.messages(first["messages_json"]),
          %{"part_kind" => "tool-return", "outcome" => "retried", "content" => content} <- parts,
          do: content

    assert [content] = retry_prompts
    assert content =~ "Flight date should be 2025-01-10, not 2025-01-11"
    assert {second["output"], second["output_type"]} == {%{}, "NoFlightFound"}
    assert third["output_type"] == "FlightDetails"
  end

  test "flight_booking: the seat preference agent's union output says which member it is" do
    turns = [
      %{"prompt" => "I'd like a window seat with leg room, 1A"},
      %{"prompt" => "something comfortable", "history" => true},
      %{"prompt" => "Actually 14F", "history" => true, "stream" => true}
    ]

    %{outcomes: [first, second, third]} = compare!("flight_booking:seat_preference_agent", turns)

    assert {first["output"], first["output_type"]} ==
             {%{"row" => 1, "seat" => "A"}, "SeatPreference"}

    # Failed() is an empty map: only its type tells it from an empty model.
    assert {second["output"], second["output_type"]} == {%{}, "Failed"}
    assert third["output"] == %{"row" => 14, "seat" => "F"}
  end

  describe "over HTTP: the bytes the provider receives" do
    # The weather agent on an OpenAI-compatible server, one per side, with
    # the same script of answers: each request body through Synapse must be
    # the one Python sends, byte for byte, on every turn.
    @script [
      %{
        "tool_calls" => [
          %{
            "id" => "call_geo_1",
            "name" => "get_lat_lng",
            "arguments" => ~s({"location_description": "London"})
          },
          %{
            "id" => "call_geo_2",
            "name" => "get_lat_lng",
            "arguments" => ~s({"location_description": "Wiltshire"})
          }
        ]
      },
      %{
        "tool_calls" => [
          %{
            "id" => "call_w_1",
            "name" => "get_weather",
            "arguments" => ~s({"lat": 51.5072, "lng": -0.1276})
          },
          %{
            "id" => "call_w_2",
            "name" => "get_weather",
            "arguments" => ~s({"lat": 51.3492, "lng": -1.9927})
          }
        ]
      },
      %{"content" => "London is sunny at 21 °C; Wiltshire has light rain at 16 °C."},
      %{
        "tool_calls" => [
          %{
            "id" => "call_geo_3",
            "name" => "get_lat_lng",
            "arguments" => ~s({"location_description": "Paris"})
          }
        ]
      },
      %{
        "tool_calls" => [
          %{
            "id" => "call_w_3",
            "name" => "get_weather",
            "arguments" => ~s({"lat": 48.8566, "lng": 2.3522})
          }
        ]
      },
      %{"content" => "Paris is partly cloudy at 24 °C."},
      %{"content" => "Still sunny in London."}
    ]

    test "turn after turn, with tool calls, run_sync and run_stream" do
      turns = [
        %{"prompt" => "What is the weather like in London and in Wiltshire?", "deps" => nil},
        %{"prompt" => "And in Paris?", "deps" => nil, "history" => true, "stream" => true},
        %{"prompt" => "Thanks! London again?", "deps" => nil, "history" => true}
      ]

      script = Fidelity.record_path("script") |> Path.rootname() |> Kernel.<>(".json")
      {:ok, json} = SynapseCore.JSON.encode(@script)
      File.write!(script, json)
      # One server for both sides (the URL is in the messages), its script
      # started over for Python; the bodies it got, Synapse's first.
      bodies = Fidelity.record_path("bodies")
      url = start_openai_server!(["--script", script, "--record", bodies])

      %{outcomes: [first, second, third]} =
        compare!(
          "weather_agent:weather_agent",
          turns,
          [
            deps_factory: "#{@examples}.weather_agent:open_client",
            model: "openai-chat:gpt-4o-mini",
            env: openai_env(url)
          ],
          %{
            "model" => "openai-chat:gpt-4o-mini",
            "env" => Map.new(openai_env(url)),
            "rewind" => String.replace_suffix(url, "/v1", "")
          }
        )

      assert first["output"] == "London is sunny at 21 °C; Wiltshire has light rain at 16 °C."
      assert second["output"] == "Paris is partly cloudy at 24 °C."
      assert third["output"] == "Still sunny in London."
      # Usage as the provider reported it, on every turn.
      assert %{"usage" => %{"requests" => 3, "input_tokens" => input}} = first
      assert input > 0

      {ours, theirs} = bodies |> Fidelity.records() |> Enum.split(7)
      assert length(theirs) == 7
      assert ours == theirs
      # The tool returns travel back as the tool wrote them: keys not sorted.
      {:ok, %{"messages" => messages}} = SynapseCore.JSON.decode(List.last(ours)["body"])

      assert ~s({"temperature":"21 °C","description":"Sunny"}) in for(
               %{"role" => "tool", "content" => content} <- messages,
               do: content
             )
    end
  end

  defp flight_page,
    do: fixtures_path() |> Path.join("synapse_fixtures/examples/flights.txt") |> File.read!()
end
