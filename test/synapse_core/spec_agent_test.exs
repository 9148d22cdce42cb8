defmodule SynapseCore.SpecAgentTest do
  # Agents defined from Elixir are pydantic-ai's declarative agent specs:
  # each run is compared with the same spec built in Python with
  # `Agent.from_spec` / `Agent.from_file` (synapse_fixtures.direct_run).
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Fidelity, Result}

  @moduletag timeout: 180_000
  @specs Path.expand("../support/specs", __DIR__)
  @model "openai-chat:gpt-4o-mini"

  # Starts an Elixir-defined agent with `opts`, runs `turns` on it and on
  # the direct case (a "spec" or "spec_file"); asserts they are the same
  # runs; returns Synapse's outcomes.
  defp compare!(opts, direct_case, turns) do
    name = unique_name()
    start_supervised!({Agent, [name: name] ++ opts})
    synapse = Fidelity.synapse_run(name, turns)
    [direct] = Fidelity.direct_run!([Map.put(direct_case, "turns", turns)])

    for {{ours, theirs}, index} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
      Fidelity.assert_same_run(ours, theirs, "turn #{index}")
    end

    synapse
  end

  # The fake OpenAI server for Python too, its answers started over.
  defp openai_case(url) do
    %{"env" => Map.new(openai_env(url)), "rewind" => String.replace_suffix(url, "/v1", "")}
  end

  defp start_error(opts) do
    assert {:error, %Error{} = error} = Agent.start_link([name: unique_name()] ++ opts)
    error
  end

  describe "from Elixir options" do
    test "model settings, retries, end strategy, tool timeout, description, metadata" do
      url = start_openai_server!()

      opts = [
        model: @model,
        instructions: "Be brief.",
        model_settings: [temperature: 0.3],
        retries: [tools: 2, output: 3],
        end_strategy: :exhaustive,
        tool_timeout: 5_000,
        description: "A brief agent.",
        metadata: %{team: "support"},
        env: openai_env(url)
      ]

      spec = %{
        "model" => @model,
        "instructions" => "Be brief.",
        "model_settings" => %{"temperature" => 0.3},
        "retries" => %{"tools" => 2, "output" => 3},
        "end_strategy" => "exhaustive",
        "tool_timeout" => 5.0,
        "description" => "A brief agent.",
        "metadata" => %{"team" => "support"}
      }

      [first, second] =
        compare!(opts, %{"spec" => spec} |> Map.merge(openai_case(url)), [
          %{"prompt" => "hello"},
          %{"prompt" => "again", "history" => true, "stream" => true}
        ])

      # The settings reached the model (the server echoes the temperature).
      assert first["output"] == "echo: hello (temperature=0.3)"
      assert second["output"] == "echo: again (temperature=0.3)"
      assert first["messages_json"] =~ "Be brief."
    end

    test "an MCP server (streamable HTTP) as a capability: its tools are the model's" do
      url = start_mcp_server!()

      [outcome] =
        compare!(
          [model: "test", capabilities: [{"MCP", url: url}]],
          %{"spec" => %{"model" => "test", "capabilities" => [%{"MCP" => %{"url" => url}}]}},
          [%{"prompt" => "use the tools"}]
        )

      # TestModel calls every tool once: both of the server's ran.
      assert SynapseCore.JSON.decode(outcome["output"]) == {:ok, %{"add" => 0, "shout" => "A"}}

      # Capabilities with arguments, several of them, in the map form too.
      capabilities = [
        %{"MCP" => %{url: url, allowed_tools: ["shout"], tool_prefix: "t"}},
        {"Thinking", effort: "low"}
      ]

      [outcome] =
        compare!(
          [model: "test", capabilities: capabilities],
          %{
            "spec" => %{
              "model" => "test",
              "capabilities" => [
                %{"MCP" => %{"url" => url, "allowed_tools" => ["shout"], "tool_prefix" => "t"}},
                %{"Thinking" => %{"effort" => "low"}}
              ]
            }
          },
          [%{"prompt" => "use the tools"}]
        )

      assert SynapseCore.JSON.decode(outcome["output"]) == {:ok, %{"t_shout" => "A"}}
    end

    test "templated instructions render the run's deps, as in Python" do
      instructions = "Address the customer as {{name}}."

      [outcome, _] =
        compare!(
          [model: "test", instructions: instructions],
          %{"spec" => %{"model" => "test", "instructions" => instructions}},
          [
            %{"prompt" => "hello", "deps" => %{"name" => "Ada"}},
            %{"prompt" => "hello"}
          ]
        )

      assert outcome["messages_json"] =~ "Address the customer as Ada."
    end

    test "an output schema with capabilities: structured output from the MCP tools' run" do
      url = start_mcp_server!()
      name = unique_name()

      start_supervised!(
        {Agent,
         name: name,
         model: "test",
         capabilities: [{"MCP", url: url}],
         output_schema: %{
           "type" => "object",
           "properties" => %{"answer" => %{"type" => "integer"}},
           "required" => ["answer"]
         }}
      )

      assert {:ok, %Result{output: %{"answer" => answer}}} = Agent.run_sync(name, "go")
      assert is_integer(answer)
    end
  end

  test "a secret argument read from the worker's environment, in no term" do
    url = start_mcp_server!()
    variable = "SYNAPSE_TEST_MCP_TOKEN_#{System.unique_integer([:positive])}"
    System.put_env(variable, "s3cret-token")
    on_exit(fn -> System.delete_env(variable) end)

    opts = [
      name: unique_name(),
      model: "test",
      capabilities: [{"MCP", url: url, authorization_token: {:system, variable}}],
      env: [variable]
    ]

    refute inspect(SynapseCore.Agent.Options.agent!(opts), limit: :infinity) =~ "s3cret"
    start_supervised!({Agent, opts})
    assert {:ok, %Result{output: output}} = Agent.run_sync(opts[:name], "use the tools")
    assert SynapseCore.JSON.decode(output) == {:ok, %{"add" => 0, "shout" => "A"}}

    # Not passed to the worker: a typed error with the argument's path.
    error = start_error(Keyword.delete(opts, :name) |> Keyword.put(:env, []))

    assert %Error{
             details: %{
               reason: :invalid_argument,
               errors: [%{"loc" => ["capabilities", 0, "MCP", "authorization_token"]}]
             }
           } = error

    assert error.message =~ "the environment variable #{variable} is not set in the worker"
  end

  describe "from a spec file" do
    test "a YAML file, supplemented by options as Agent.from_file's arguments do" do
      url = start_openai_server!()
      path = Path.join(@specs, "support.yaml")

      [first] =
        compare!(
          [
            spec: path,
            instructions: "Sign as Synapse.",
            model_settings: [max_tokens: 50],
            env: openai_env(url)
          ],
          %{
            "spec_file" => path,
            "spec_kwargs" => %{
              "instructions" => "Sign as Synapse.",
              "model_settings" => %{"max_tokens" => 50}
            }
          }
          |> Map.merge(openai_case(url)),
          [%{"prompt" => "hello"}]
        )

      # The file's settings and model, and both instructions, in order.
      assert first["output"] == "echo: hello (temperature=0.3)"

      assert first["messages_json"] =~
               "You answer support questions briefly.\\n\\nSign as Synapse."
    end

    test ":retries supplement the file's retries key by key, as Agent.from_file's do" do
      url = start_openai_server!()
      path = Path.join(@specs, "split_retries.yaml")
      name = unique_name()

      start_supervised!(
        {Agent, name: name, spec: path, retries: [tools: 1], env: openai_env(url)}
      )

      # The model answers text where the output schema wants a tool call:
      # the run fails once the output retries are spent, the file's 3 in
      # Python, which `retries={"tools": 1}` leaves as they are.
      [%{"error" => synapse}] = Fidelity.synapse_run(name, [%{"prompt" => "hello"}])

      [[%{"error" => direct}]] =
        Fidelity.direct_run!([
          %{
            "spec_file" => path,
            "spec_kwargs" => %{"retries" => %{"tools" => 1}},
            "turns" => [%{"prompt" => "hello"}]
          }
          |> Map.merge(openai_case(url))
        ])

      assert direct["message"] =~ "Exceeded maximum output retries (3)"
      assert %Error{kind: :output_validation_failed, message: message} = synapse
      assert message =~ "Exceeded maximum output retries (3)"
    end

    test "a JSON file, its model replaced by :model, its capabilities extended" do
      url = start_mcp_server!()
      path = Path.join(@specs, "tools.json")

      # The file's fields with the options' (capabilities added): the spec
      # Python gets whole.
      merged = %{
        "model" => "test",
        "instructions" => "Use the tools.",
        "capabilities" => [%{"MCP" => %{"url" => url}}]
      }

      [outcome] =
        compare!(
          [spec: path, model: "test", capabilities: [{"MCP", url: url}]],
          %{"spec" => merged},
          [%{"prompt" => "use the tools"}]
        )

      assert SynapseCore.JSON.decode(outcome["output"]) == {:ok, %{"add" => 0, "shout" => "A"}}
      assert outcome["messages_json"] =~ "Use the tools."
    end
  end

  test "{app, path}: a spec file inside an OTP application" do
    # The fixture, named relative to synapse_core's own directory.
    lib_dir = :synapse_core |> :code.lib_dir() |> to_string() |> Path.split()
    specs = Path.split(@specs)
    common = Enum.zip(lib_dir, specs) |> Enum.take_while(fn {a, b} -> a == b end) |> length()
    ups = List.duplicate("..", length(lib_dir) - common)
    relative = Path.join(ups ++ Enum.drop(specs, common) ++ ["tools.json"])

    name = unique_name()
    start_supervised!({Agent, name: name, spec: {:synapse_core, relative}, model: "test"})
    assert {:ok, %Result{output: "success (no tool calls)"} = result} = Agent.run_sync(name, "hi")
    assert result.messages.json =~ "Use the tools."
  end

  describe "bad specs" do
    test "a field of the wrong type in a file: :invalid_argument with its path" do
      error = start_error(spec: Path.join(@specs, "bad_type.yaml"))

      assert %Error{kind: :startup_failed, details: %{reason: :invalid_argument} = details} =
               error

      assert error.message =~ "bad_type.yaml does not validate"
      locs = Enum.map(details.errors, & &1["loc"])
      assert ["retries", "int"] in locs or Enum.any?(locs, &match?(["retries" | _], &1))
      assert ["end_strategy"] in locs
    end

    test "an unknown field in a file is refused, not ignored" do
      error = start_error(spec: Path.join(@specs, "unknown_field.yaml"))

      assert %Error{
               details: %{reason: :invalid_argument, errors: [%{"loc" => ["modle_settings"]}]}
             } = error

      assert error.message =~ "unknown field(s) 'modle_settings'"
    end

    test "a file that is not YAML" do
      error = start_error(spec: Path.join(@specs, "not_yaml.yaml"))
      assert %Error{details: %{reason: :invalid_argument}} = error
      assert error.message =~ "not_yaml.yaml is not valid YAML"
    end

    test "an unknown capability, or arguments a capability refuses: the capability's path" do
      error = start_error(model: "test", capabilities: ["Thinking", "NoSuchCapability"])

      assert %Error{
               details: %{
                 reason: :invalid_argument,
                 errors: [%{"loc" => ["capabilities", 1], "msg" => msg}]
               }
             } = error

      assert msg =~ "'NoSuchCapability' is not in"
      assert error.message =~ "capabilities[1] (NoSuchCapability)"

      error =
        start_error(model: "test", capabilities: [{"MCP", url: "http://x/mcp", tool_prefix: ""}])

      assert %Error{
               details: %{reason: :invalid_argument, errors: [%{"loc" => ["capabilities", 0]}]}
             } = error

      assert error.message =~ "tool_prefix=''"
    end

    test "options of the wrong type or range fail before anything starts" do
      for {key, bad} <- [
            retries: -1,
            retries: [tools: -1],
            retries: [other: 1],
            end_strategy: :never,
            tool_timeout: 0,
            capabilities: [1],
            capabilities: "MCP",
            capabilities: [%{"A" => 1, "B" => 2}],
            description: 1,
            metadata: [1],
            spec: Path.join(@specs, "missing.yaml"),
            spec: Path.join(@specs, "../specs"),
            spec: "agent.toml"
          ] do
        assert_raise ArgumentError, ~r/#{inspect(key)}/, fn ->
          Agent.start_link([{:name, unique_name()}, {key, bad}, {:model, "test"}])
        end
      end

      assert_raise ArgumentError, ~r/cannot be combined with :agent/, fn ->
        Agent.start_link(name: unique_name(), agent: "m:a", capabilities: ["Thinking"])
      end

      assert_raise ArgumentError, ~r/give either :agent/, fn ->
        Agent.start_link(name: unique_name(), capabilities: ["Thinking"])
      end
    end
  end
end
