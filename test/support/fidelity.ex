defmodule SynapseCore.Fidelity do
  @moduledoc false
  # Runs a conversation with an agent through Synapse and directly in Python
  # (synapse_fixtures.direct_run, plain pydantic-ai), and puts both in one
  # comparable form. See test/synapse_core/fidelity_examples_test.exs.
  #
  # A conversation is a list of turns, maps with "prompt" and optionally
  # "deps" (the data; a key present with nil means "deps: nil"), "history"
  # (true: pass the previous turn's messages; after a failed turn, the
  # messages its error kept, if any), "stream" (true: run_stream),
  # "events" (a streamed turn's kinds: "all" or a list of names),
  # a "prompt" of parts (direct_run's JSON form of them, see `prompt/1`),
  # "stream_output" (true: run_stream with `:output` events, compared with
  # Python's `stream_output`), "model_settings", "usage_limits",
  # "output_tool_return_content" and "deferred_tool_results" (direct_run's
  # JSON form; a turn with it may have no "prompt").

  import ExUnit.Assertions

  alias SynapseCore.{
    Agent,
    DeferredToolRequests,
    JSON,
    Messages,
    RequestUsage,
    Result,
    TestHelpers,
    Usage
  }

  # What two runs of one agent never share (see synapse_fixtures.recording).
  @volatile ["timestamp", "run_id", "conversation_id"]

  @doc "A fresh file path for a test's records."
  def record_path(label) do
    dir = Path.join(System.tmp_dir!(), "synapse-fidelity-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    Path.join(dir, "#{label}.jsonl")
  end

  @doc "The JSON lines of `path`, decoded ([] when it does not exist)."
  def records(path) do
    case File.read(path) do
      {:ok, text} -> text |> String.split("\n", trim: true) |> Enum.map(&decode!/1)
      {:error, :enoent} -> []
    end
  end

  @doc """
  Runs `cases` with synapse_fixtures.direct_run (see its docstring) in a
  Python of Synapse's environment; `env` is added to the process's.
  """
  def direct_run!(cases, env \\ []) do
    {:ok, python} = SynapseCore.Python.interpreter()
    dir = Path.dirname(record_path("direct"))
    cases_path = Path.join(dir, "cases.json")
    out_path = Path.join(dir, "out.json")
    {:ok, json} = JSON.encode(cases)
    File.write!(cases_path, json)

    {output, status} =
      System.cmd(python, ["-m", "synapse_fixtures.direct_run", cases_path, out_path],
        env: [{"PYTHONPATH", TestHelpers.fixtures_path()} | env],
        stderr_to_stdout: true
      )

    assert status == 0, "direct_run failed:\n#{output}"
    out_path |> File.read!() |> decode!()
  end

  @doc """
  Runs `turns` on the agent `name` (the pydantic-ai agent `ref`, started
  with `SYNAPSE_FIDELITY_RECORD` set to `record`) through Synapse and
  directly in Python; asserts that every turn is the same run and that the
  model got the same requests. Returns Synapse's outcomes.
  """
  def assert_same_as_python!(name, ref, turns, record) do
    direct_record = record_path("python")
    synapse = synapse_run(name, turns)
    [direct] = direct_run!([%{"agent" => ref, "record" => direct_record, "turns" => turns}])

    for {{ours, theirs}, turn} <- synapse |> Enum.zip(direct) |> Enum.with_index(1) do
      assert_same_run(ours, theirs, "#{ref}, turn #{turn}")
    end

    assert records(record) == records(direct_record)
    synapse
  end

  @doc """
  Runs `turns` on the agent `name` through Synapse; returns per turn the
  outcome in direct_run's form (plus "result", the `SynapseCore.Result`).
  """
  def synapse_run(name, turns, extra_opts \\ []) do
    {outcomes, _} =
      Enum.map_reduce(turns, nil, fn turn, previous ->
        # (A turn resuming deferred calls may have no prompt: None, nil.)
        turn = Map.update(turn, "prompt", nil, &prompt/1)

        opts =
          extra_opts
          |> put_if(Map.has_key?(turn, "deps"), :deps, turn["deps"])
          |> put_if(turn["history"] == true, :message_history, previous)
          |> put_if(Map.has_key?(turn, "model_settings"), :model_settings, turn["model_settings"])
          |> put_if(Map.has_key?(turn, "usage_limits"), :usage_limits, turn["usage_limits"])
          |> put_if(
            Map.has_key?(turn, "output_tool_return_content"),
            :output_tool_return_content,
            turn["output_tool_return_content"]
          )
          |> put_if(
            Map.has_key?(turn, "deferred_tool_results"),
            :deferred_tool_results,
            deferred_tool_results(turn["deferred_tool_results"])
          )

        case run(name, turn, opts) do
          {:ok, result, events, outputs} -> {outcome(result, events, outputs), result}
          # As a caller resumes a failed run: from what it did.
          {:error, error} -> {%{"error" => error}, Map.get(error.details, :messages, previous)}
        end
      end)

    outcomes
  end

  defp run(name, %{"stream_output" => true, "prompt" => prompt}, opts) do
    events = name |> Agent.run_stream(prompt, [events: [:output]] ++ opts) |> Enum.to_list()
    {:result, result} = List.last(events)

    outputs = for {:output, %{output: output, output_type: type}} <- events, do: [output, type]

    {:ok, result, [], outputs}
  rescue
    error in SynapseCore.Error -> {:error, error}
  end

  defp run(name, %{"stream" => true, "prompt" => prompt} = turn, opts) do
    opts = if kinds = turn["events"], do: [events: kinds(kinds)] ++ opts, else: opts
    events = name |> Agent.run_stream(prompt, opts) |> Enum.to_list()
    {:result, result} = List.last(events)
    {:ok, result, Enum.flat_map(events, &event/1), []}
  rescue
    error in SynapseCore.Error -> {:error, error}
  end

  defp run(name, %{"prompt" => prompt}, opts) do
    with {:ok, result} <- Agent.run_sync(name, prompt, opts), do: {:ok, result, [], []}
  end

  @doc """
  A prompt in direct_run's JSON form as `SynapseCore.Prompt` parts: strings
  as they are, and maps with a "kind" (a "binary"'s "data" in base64), their
  other keys the part's options.
  """
  def prompt(nil), do: nil
  def prompt(text) when is_binary(text), do: text
  def prompt(parts) when is_list(parts), do: Enum.map(parts, &part/1)
  # direct_run's JSON form of deferred tool results, as Synapse takes them.
  defp deferred_tool_results(given) do
    approvals =
      Map.new(given["approvals"] || %{}, fn
        {id, decision} when is_boolean(decision) -> {id, decision}
        {id, %{"override_args" => args}} -> {id, {:approve, args}}
        {id, %{"message" => message}} -> {id, {:deny, message}}
      end)

    calls =
      Map.new(given["calls"] || %{}, fn
        {id, %{"return" => value}} -> {id, {:ok, value}}
        {id, %{"retry" => message}} -> {id, {:retry, message}}
        {id, %{"failed" => message}} -> {id, {:failed, message}}
      end)

    %{approvals: approvals, calls: calls}
  end

  defp part(text) when is_binary(text), do: text

  defp part(%{"kind" => "binary", "data" => data, "media_type" => type} = part),
    do: {:binary, Base.decode64!(data), type, part_options(part, ~w(kind data media_type))}

  defp part(%{"kind" => "uploaded-file", "file_id" => id, "provider_name" => provider} = part),
    do: {:uploaded_file, id, provider, part_options(part, ~w(kind file_id provider_name))}

  defp part(%{"kind" => "text-content", "content" => text} = part),
    do: {:text, text, part_options(part, ~w(kind content))}

  defp part(%{"kind" => "structured-content", "value" => value} = part),
    do: {:structured, value, part_options(part, ~w(kind value))}

  defp part(%{"kind" => "cache-point"} = part), do: {:cache_point, part_options(part, ~w(kind))}

  defp part(%{"kind" => kind, "url" => url} = part),
    do:
      {kind |> String.replace("-", "_") |> String.to_atom(), url,
       part_options(part, ~w(kind url))}

  defp part_options(part, taken) do
    for {key, value} <- Map.drop(part, taken) do
      {String.to_atom(key), option(key, value)}
    end
  end

  defp option("force_download", "allow-local"), do: :allow_local
  defp option("format", format), do: String.to_atom(format)
  defp option(_key, value), do: value

  defp kinds("all"), do: :all
  defp kinds(names), do: Enum.map(names, &String.to_existing_atom/1)

  # An event as direct_run writes pydantic-ai's (without the values no two
  # runs share).
  defp event({kind, text}) when kind in [:text_delta, :thinking_delta],
    do: [[Atom.to_string(kind), text]]

  defp event({kind, %{index: index, part: part} = details}) when kind in [:part_start, :part_end],
    do: [
      [
        Atom.to_string(kind),
        index,
        without_volatile(part),
        details[:previous_part_kind] || details[:next_part_kind]
      ]
    ]

  defp event({:tool_call_delta, delta}),
    do: [
      [
        "tool_call_delta",
        delta.index,
        delta.tool_call_id,
        delta.tool_name_delta,
        delta.args_delta
      ]
    ]

  defp event({:part_delta, %{index: index, delta: delta}}),
    do: [["part_delta", index, without_volatile(delta)]]

  defp event({:final_result, %{tool_name: name, tool_call_id: id}}),
    do: [["final_result", name, id]]

  defp event({kind, %{name: name, args: args}}) when kind in [:tool_call, :output_tool_call],
    do: [[Atom.to_string(kind), name, args]]

  defp event({kind, %{name: name, content: content, user_content: user_content}})
       when kind in [:tool_result, :output_tool_result],
       do: [
         [Atom.to_string(kind), name, without_volatile(content), without_volatile(user_content)]
       ]

  defp event({:deferred_tool_requests, requests}),
    do: [["deferred_tool_requests", without_volatile(Map.new(requests, &string_key/1))]]

  defp event({:event, %{kind: kind, data: data}}), do: [["event", kind, without_volatile(data)]]
  # Outputs are compared with Python's `stream_output` ("stream_output" turns).
  defp event({:output, _}), do: []
  defp event({:result, _}), do: []

  defp string_key({key, value}), do: {Atom.to_string(key), value}

  defp outcome(%Result{} = result, events, outputs) do
    %{
      "output" => output(result.output),
      "output_type" => result.output_type,
      "usage" => usage(result.usage),
      "messages_json" => result.messages.json,
      "new_messages_json" => Result.new_messages(result).json,
      "events" => events,
      "outputs" => outputs,
      "result" => result
    }
  end

  # A DeferredToolRequests in direct_run's JSON form.
  defp output(%DeferredToolRequests{approvals: approvals, calls: calls}) do
    call = fn call ->
      call
      |> Map.from_struct()
      |> Map.new(fn
        {:kind, kind} -> {"kind", Atom.to_string(kind)}
        {key, value} -> {Atom.to_string(key), value}
      end)
    end

    %{"approvals" => Enum.map(approvals, call), "calls" => Enum.map(calls, call)}
  end

  defp output(output), do: output

  # Usage as direct_run writes it: every field; each response's flat, with
  # its model (pydantic-ai's RequestUsage has no requests or tool calls).
  defp usage(%Usage{by_request: by_request} = usage),
    do: usage |> string_keys() |> Map.put("by_request", Enum.map(by_request, &request_usage/1))

  defp request_usage(%RequestUsage{usage: usage} = request) do
    usage
    |> string_keys()
    |> Map.drop(["requests", "tool_calls", "by_request"])
    |> Map.merge(%{"model_name" => request.model_name, "provider_name" => request.provider_name})
  end

  defp string_keys(struct),
    do:
      struct |> Map.from_struct() |> Map.new(fn {key, value} -> {Atom.to_string(key), value} end)

  @doc """
  Asserts that a Synapse outcome and a direct one are the same run: output,
  its type, usage, the stream's events, and the messages (all and new), but
  for the values that differ between any two runs (timestamps, ids).
  """
  def assert_same_run(synapse, direct, label) do
    refute Map.has_key?(synapse, "error"), "#{label}: Synapse failed: #{inspect(synapse)}"
    refute Map.has_key?(direct, "error"), "#{label}: Python failed: #{inspect(direct)}"
    # {label, value} on both sides: a failure's diff names the turn.
    assert {label, synapse["output"], synapse["output_type"]} ==
             {label, direct["output"], direct["output_type"]}

    assert {label, synapse["usage"]} == {label, direct["usage"]}

    assert {label, synapse["events"]} == {label, direct["events"]}
    assert {label, synapse["outputs"]} == {label, direct["outputs"]}

    assert {label, messages(synapse["messages_json"])} ==
             {label, messages(direct["messages_json"])}

    assert {label, messages(synapse["new_messages_json"])} ==
             {label, messages(direct["new_messages_json"])}
  end

  @doc "A history's messages, decoded, without the values no two runs share."
  def messages(json) when is_binary(json) do
    {:ok, %Messages{} = messages} = Messages.from_json(json)
    messages |> Messages.decode!() |> without_volatile()
  end

  @doc "`data` without the values no two runs share (timestamps, run ids), at any depth."
  def without_volatile(map) when is_map(map),
    do: for({k, v} <- map, k not in @volatile, into: %{}, do: {k, without_volatile(v)})

  def without_volatile(list) when is_list(list), do: Enum.map(list, &without_volatile/1)
  def without_volatile(other), do: other

  @doc "The tool calls of a history, in order: `{name, args}`."
  def tool_calls(json) do
    for %{"kind" => "response", "parts" => parts} <- messages(json),
        %{"part_kind" => "tool-call", "tool_name" => name, "args" => args} <- parts,
        do: {name, if(is_binary(args), do: decode!(args), else: args)}
  end

  defp put_if(opts, true, key, value), do: Keyword.put(opts, key, value)
  defp put_if(opts, false, _key, _value), do: opts

  defp decode!(json) do
    {:ok, term} = JSON.decode(json)
    term
  end
end
