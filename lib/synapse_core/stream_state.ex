defmodule SynapseCore.StreamState do
  @moduledoc """
  A streamed run's events folded into what it has written so far: its text,
  its thinking, its tool calls (arguments as they stream, decoded once
  complete, then their results) and its output. A process that shows a run
  as it goes (a LiveView, a socket) keeps one and renders its fields,
  knowing nothing of the event grammar (`SynapseCore.Event`):

      def handle_info({:synapse_event, ref, event}, %{assigns: %{run: %{ref: ref}}} = socket) do
        SynapseCore.Agent.ack(socket.assigns.run)
        {:noreply, update(socket, :reply, &SynapseCore.StreamState.apply_event(&1, event))}
      end

      # in the template: @reply.text, @reply.thinking, for call <- @reply.tool_calls ...

  or, for a whole stream:

      :support
      |> SynapseCore.Agent.run_stream("Hi", events: :all)
      |> SynapseCore.StreamState.from_events()

  Fields:

    * `text` - the run's text so far: its `:text_delta`s, concatenated;
    * `thinking` - its thinking so far, likewise (`:thinking_delta`, when
      the run sends them);
    * `tool_calls` - every tool call so far, in order, as `t:tool_call/0`:
      its arguments' JSON text as it streams (`:tool_call_delta`), the
      arguments decoded when the call is complete (its `:part_end`, or its
      `:tool_call` event), then its result;
    * `output` - the output validated so far (`:output` events), then the
      run's output;
    * `parts` - the parts of the model response being written, in order
      (pydantic-ai's JSON form as Elixir data, as `SynapseCore.Event`
      describes them), their content so far included;
    * `deferred` - the tool calls waiting for an approval or a result from
      outside (`:deferred_tool_requests`: `%{calls:, approvals:, metadata:}`),
      or `nil`;
    * `result` - the `SynapseCore.Result`, once the run is over (`done?`).

  Events of any kind may be missing (a run sends the kinds its `:events`
  option names): each field holds what the events received tell.
  """

  alias SynapseCore.{Event, JSON, Result}

  @typedoc """
  A tool call: `args_json` is its arguments' JSON text so far (`nil` when
  they came as a map); `args` the decoded arguments, `nil` until the call is
  complete (or when its JSON is invalid); `kind` is `:function` or
  `:output` once known; `result` its outcome (`content`, `retry`,
  `outcome`, `user_content`, as in `SynapseCore.Event`), `nil` until it
  returns.
  """
  @type tool_call :: %{
          id: String.t() | nil,
          name: String.t(),
          args_json: String.t() | nil,
          args: term(),
          kind: :function | :output | nil,
          result:
            %{content: term(), retry: boolean(), outcome: String.t() | nil, user_content: term()}
            | nil
        }

  @type t :: %__MODULE__{
          text: String.t(),
          thinking: String.t(),
          tool_calls: [tool_call()],
          output: term(),
          parts: [Event.part()],
          result: Result.t() | nil,
          deferred: %{calls: [Event.part()], approvals: [Event.part()], metadata: map()} | nil,
          done?: boolean()
        }

  defstruct text: "",
            thinking: "",
            tool_calls: [],
            output: nil,
            parts: [],
            deferred: nil,
            result: nil,
            done?: false,
            # The current response's parts by index, and the index the text
            # and thinking deltas go to (that of the last `:part_start`,
            # `:part_delta` or `:tool_call_delta`, as `SynapseCore.Event`
            # says); `response?` is false between model responses (after its
            # last part ends, or the tool events that follow it).
            by_index: %{},
            current: nil,
            response?: false

  @doc "An empty state, before any event."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc """
  Folds `events` (a list or a stream) from an empty state.

      iex> state = SynapseCore.StreamState.from_events([{:text_delta, "Hel"}, {:text_delta, "lo"}])
      iex> state.text
      "Hello"
  """
  @spec from_events(Enumerable.t()) :: t()
  def from_events(events), do: Enum.reduce(events, new(), &apply_event(&2, &1))

  @doc """
  The state after `event`. Events it does not know (a kind added later)
  leave it as it is.
  """
  @spec apply_event(t(), Event.t() | term()) :: t()
  def apply_event(state, event)

  def apply_event(state, {:text_delta, text}),
    do: %{append(state, "content", text) | text: state.text <> text}

  def apply_event(state, {:thinking_delta, text}),
    do: %{append(state, "content", text) | thinking: state.thinking <> text}

  def apply_event(state, {:part_start, %{index: index, part: part}}) do
    state = if state.response?, do: state, else: %{state | by_index: %{}, response?: true}
    state = %{state | current: index} |> put_part(index, part)

    case part do
      %{"part_kind" => "tool-call", "tool_name" => name} = call ->
        upsert_call(state, call["tool_call_id"], %{name: name, args_json: nil, args: nil})

      _ ->
        state
    end
  end

  def apply_event(state, {:tool_call_delta, %{index: index} = delta}) do
    state = %{state | current: index}

    part = Map.get(state.by_index, index, %{"part_kind" => "tool-call", "tool_name" => ""})
    name = (part["tool_name"] || "") <> (delta.tool_name_delta || "")
    id = delta.tool_call_id || part["tool_call_id"]
    args = merge_args(part["args"], delta.args_delta)
    part = Map.merge(part, %{"tool_name" => name, "tool_call_id" => id, "args" => args})
    args_json = if is_binary(args), do: args

    state
    |> put_part(index, part)
    |> upsert_call(id, %{name: name, args_json: args_json, args: if(is_map(args), do: args)})
  end

  def apply_event(state, {:part_delta, %{index: index, delta: delta}}) do
    state = %{state | current: index}

    case Map.fetch(state.by_index, index) do
      {:ok, part} -> put_part(state, index, apply_delta(part, delta))
      :error -> state
    end
  end

  def apply_event(state, {:part_end, %{index: index, part: part} = details}) do
    # The last part of a response has no next part: the next start begins
    # a new response.
    state = %{put_part(state, index, part) | response?: details[:next_part_kind] != nil}

    case part do
      %{"part_kind" => "tool-call", "tool_name" => name, "args" => args} = call ->
        upsert_call(state, call["tool_call_id"], %{
          name: name,
          args_json: if(is_binary(args), do: args),
          args: decoded(args)
        })

      _ ->
        state
    end
  end

  def apply_event(state, {kind, %{id: id, name: name, args: args}})
      when kind in [:tool_call, :output_tool_call] do
    call_kind = if kind == :tool_call, do: :function, else: :output
    upsert_call(%{state | response?: false}, id, %{name: name, args: args, kind: call_kind})
  end

  def apply_event(state, {kind, %{id: id, name: name} = returned})
      when kind in [:tool_result, :output_tool_result] do
    result = %{
      content: returned.content,
      retry: returned.retry,
      outcome: returned[:outcome],
      user_content: returned[:user_content]
    }

    upsert_call(%{state | response?: false}, id, %{name: name, result: result})
  end

  def apply_event(state, {:output, %{output: output}}), do: %{state | output: output}

  def apply_event(state, {:deferred_tool_requests, requests}), do: %{state | deferred: requests}

  def apply_event(state, {:result, %Result{} = result}),
    do: %{state | result: result, output: result.output, done?: true}

  def apply_event(state, {kind, _details})
      when kind in [:final_result, :event],
      do: state

  def apply_event(state, _unknown), do: state

  ## Parts

  defp put_part(state, index, part) do
    by_index = Map.put(state.by_index, index, part)
    %{state | by_index: by_index, parts: by_index |> Enum.sort() |> Enum.map(&elem(&1, 1))}
  end

  defp append(%{current: nil} = state, _key, _text), do: state

  defp append(%{current: index} = state, key, text) do
    case Map.fetch(state.by_index, index) do
      {:ok, part} -> put_part(state, index, Map.update(part, key, text, &((&1 || "") <> text)))
      :error -> state
    end
  end

  defp merge_args(args, nil), do: args
  defp merge_args(args, fragment) when is_binary(fragment) and is_map(args), do: args
  defp merge_args(args, fragment) when is_binary(fragment), do: (args || "") <> fragment
  defp merge_args(args, more) when is_map(more) and is_map(args), do: Map.merge(args, more)
  defp merge_args(_args, more) when is_map(more), do: more

  # The part's fields a delta changes, as pydantic-ai applies them (its
  # text was a `:text_delta` or `:thinking_delta`: an empty delta, naming
  # the part text goes to next, changes nothing).
  defp apply_delta(part, delta) do
    Enum.reduce(delta, part, fn
      {"signature_delta", signature}, part when is_binary(signature) ->
        Map.put(part, "signature", signature)

      {"citations_delta", citations}, part when is_list(citations) ->
        Map.put(part, "citations", citations)

      {"provider_name", name}, part when is_binary(name) ->
        Map.put(part, "provider_name", name)

      {"provider_details", details}, part when is_map(details) ->
        Map.update(part, "provider_details", details, &Map.merge(&1 || %{}, details))

      _other, part ->
        part
    end)
  end

  defp decoded(args) when is_map(args), do: args

  defp decoded(args) when is_binary(args) do
    case JSON.decode(args) do
      {:ok, value} -> value
      {:error, _} -> nil
    end
  end

  defp decoded(_args), do: nil

  ## Tool calls

  # Updates the call with `id` (the last one of that name when the id is
  # not known yet), or appends it.
  defp upsert_call(state, id, fields) do
    calls = state.tool_calls

    case Enum.find_index(calls, &same_call?(&1, id, fields.name)) do
      nil ->
        call =
          Map.merge(
            %{id: id, name: fields.name, args_json: nil, args: nil, kind: nil, result: nil},
            fields
          )

        %{state | tool_calls: calls ++ [call]}

      at ->
        %{state | tool_calls: List.update_at(calls, at, &merge_call(&1, id, fields))}
    end
  end

  defp same_call?(%{id: id}, id, _name) when id != nil, do: true
  defp same_call?(%{id: nil, name: name, result: nil}, _id, name), do: true
  defp same_call?(_call, _id, _name), do: false

  # Known values are not replaced by unknown ones (a `:tool_call` event
  # carries no argument text).
  defp merge_call(call, id, fields) do
    fields = for {key, value} <- fields, value != nil, into: %{}, do: {key, value}
    Map.merge(%{call | id: call.id || id}, fields)
  end
end
