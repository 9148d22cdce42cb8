defmodule SynapseCore.Event do
  @default_kinds [:text_delta, :tool_call, :tool_result]

  @moduledoc """
  The events of a streamed run (`SynapseCore.Agent.run_stream/3`): every
  event pydantic-ai streams, as Elixir terms, in the order pydantic-ai
  emits them, then `{:result, %SynapseCore.Result{}}`.

  A run sends the kinds its `:events` option names: by default
  `#{inspect(@default_kinds)}` (the text and the
  tool calls), `:all` for every kind below. `SynapseCore.StreamState` folds
  them into the message being written, for a process that shows it.

  | event | pydantic-ai |
  |-------|-------------|
  | `{:part_start, %{index:, part:, previous_part_kind:}}` | `PartStartEvent` (the part without its content) |
  | `{:text_delta, text}` | `TextPartDelta` (and the text a `TextPart` starts with) |
  | `{:thinking_delta, text}` | `ThinkingPartDelta` (and the text a `ThinkingPart` starts with) |
  | `{:tool_call_delta, %{index:, tool_call_id:, tool_name_delta:, args_delta:}}` | `ToolCallPartDelta` (and the arguments a tool call part starts with) |
  | `{:part_delta, %{index:, delta:}}` | the rest of a `PartDeltaEvent`'s delta (signatures, provider details, ...) |
  | `{:part_end, %{index:, part:, next_part_kind:}}` | `PartEndEvent` |
  | `{:final_result, %{tool_name:, tool_call_id:}}` | `FinalResultEvent` |
  | `{:tool_call, %{id:, name:, args:, args_valid:}}` | `FunctionToolCallEvent` |
  | `{:tool_result, %{id:, name:, content:, retry:, outcome:, user_content:}}` | `FunctionToolResultEvent` |
  | `{:output_tool_call, %{id:, name:, args:, args_valid:}}` | `OutputToolCallEvent` |
  | `{:output_tool_result, %{id:, name:, content:, retry:, outcome:, user_content: nil}}` | `OutputToolResultEvent` |
  | `{:deferred_tool_requests, %{calls:, approvals:, metadata:}}` | `DeferredToolRequestsEvent` |
  | `{:output, %{output:, output_type:, partial:}}` | the output validated so far, as `AgentStream.stream_output` yields it |
  | `{:event, %{kind:, data:}}` | any other event (`event_kind` and its JSON): custom events, enqueued messages, ... |
  | `{:result, %SynapseCore.Result{}}` | the run's result: always last |

  Each is described below.

  ## The model's response, part by part

  A model response is made of parts (text, thinking, tool calls, ...),
  each with an `index` in the response:

    * `{:part_start, %{index: i, part: part, previous_part_kind: kind}}` -
      a part begins. `part` is pydantic-ai's JSON form of it as Elixir data
      (binary keys, as in a decoded history: `%{"part_kind" => "text",
      "content" => "", ...}`), *without its content*: the text, thinking or
      arguments it starts with follow as its first delta, so deltas alone
      carry a part's content. `kind` is the kind of the part before it
      (`"text"`, `"thinking"`, `"tool-call"`, ...) or `nil`. A new start
      with the same index replaces that part.
    * `{:text_delta, text}` - a piece of text, in order. The deltas of a run
      concatenate to all the text its model responses wrote (to the output,
      for a run with one response and text output). A delta belongs to the
      part the last `:part_start`, `:part_delta` or `:tool_call_delta` named
      (see `:part_delta` for text going back to an earlier part).
    * `{:thinking_delta, text}` - a piece of thinking, likewise.
    * `{:tool_call_delta, %{index: i, tool_call_id: id, tool_name_delta:
      name, args_delta: args}}` - a piece of a tool call: `args_delta` is
      the next fragment of its JSON arguments (a string), or arguments given
      as a map to merge, or `nil`. A model that streams arguments slowly
      sends them here as they come.
    * `{:part_delta, %{index: i, delta: delta}}` - any other change to a
      part (a thinking signature, a provider's details, citations): the rest
      of pydantic-ai's delta, as Elixir data, after the text it carried.
      When pydantic-ai adds text or thinking to a part other than the one
      named last (a model writing more text after starting a tool call: its
      text goes back to the text part), a `:part_delta` naming that part,
      with an empty delta of that kind (`"content_delta"` empty or `nil`),
      comes just before the `:text_delta` or `:thinking_delta`; a run that
      does not ask for `:part_delta` events does not get it.
    * `{:part_end, %{index: i, part: part, next_part_kind: kind}}` - the part
      is complete; `part` has all of it (its text, a tool call's `"args"` as
      a JSON string, a thinking part's `"signature"`).
    * `{:final_result, %{tool_name: name, tool_call_id: id}}` - the response
      matches the agent's output type (by an output tool, or by its text
      when `tool_name` is `nil`).

  ## Tools

    * `{:tool_call, %{id: id, name: name, args: args, args_valid: valid?}}` -
      the model called a function tool (the agent's, or an Elixir tool).
      `args` as decoded JSON (or the raw text when the model wrote invalid
      JSON); `args_valid` is `nil` when the call is not executed in this
      step.
    * `{:tool_result, %{id: id, name: name, content: content, retry: retry?,
      outcome: outcome}}` - that call's outcome: its return value, or
      (`retry: true`) the retry prompt the model got back; `outcome` is
      pydantic-ai's (`"success"`, `"failed"`, `"denied"`, `"retried"`);
      `user_content` is what the tool gave the model after its result
      (pydantic-ai's `ToolReturn.content`: a string, or a list of user
      content in the JSON form of pydantic-ai's messages, bytes in URL-safe base64),
      or `nil`.
    * `{:output_tool_call, call}` and `{:output_tool_result, result}` - the
      same for an output tool (the model's "final answer" call).
    * `{:deferred_tool_requests, %{calls: calls, approvals: approvals,
      metadata: metadata}}` - tool calls the run cannot make itself (they
      need an approval, or their result from outside): pydantic-ai's
      `DeferredToolRequests`, each call a tool-call part as in `:part_end`.

  ## Output

    * `{:output, %{output: output, output_type: type, partial: true}}` - the
      output validated so far, as it grows (pydantic-ai's `stream_output`,
      in its partial validation mode, output validators included), once the
      response matches the output type; then `partial: false` with the
      run's output, just before the result. Sent only when the run asks for
      `:output` events (`:all` does): validating the output at each delta
      costs the worker time, and calls the agent's output validators and
      functions on partial outputs, as `stream_output` does in Python.

  ## Anything else

    * `{:event, %{kind: kind, data: data}}` - an event with no form of its
      own: messages enqueued into the run (`"enqueued_messages"`), tools or
      capabilities made available mid-run, custom events a tool emits
      (`RunContext.emit`), capability events, ...; `kind` is pydantic-ai's
      `event_kind`, `data` its JSON form of the event as Elixir data.

  The run's end is `{:result, %SynapseCore.Result{}}` (or, for a stream,
  the failure raised).
  """

  @typedoc "A part of a model response, in pydantic-ai's JSON form."
  @type part :: %{optional(String.t()) => term()}

  @typedoc "A tool call and its outcome."
  @type tool_call :: %{
          id: String.t(),
          name: String.t(),
          args: term(),
          args_valid: boolean() | nil
        }
  @type tool_result :: %{
          id: String.t(),
          name: String.t(),
          content: term(),
          retry: boolean(),
          outcome: String.t(),
          user_content: String.t() | [map() | String.t()] | nil
        }

  @type t ::
          {:part_start,
           %{index: non_neg_integer(), part: part(), previous_part_kind: String.t() | nil}}
          | {:text_delta, String.t()}
          | {:thinking_delta, String.t()}
          | {:tool_call_delta,
             %{
               index: non_neg_integer(),
               tool_call_id: String.t() | nil,
               tool_name_delta: String.t() | nil,
               args_delta: String.t() | map() | nil
             }}
          | {:part_delta, %{index: non_neg_integer(), delta: map()}}
          | {:part_end,
             %{index: non_neg_integer(), part: part(), next_part_kind: String.t() | nil}}
          | {:final_result, %{tool_name: String.t() | nil, tool_call_id: String.t() | nil}}
          | {:tool_call, tool_call()}
          | {:tool_result, tool_result()}
          | {:output_tool_call, tool_call()}
          | {:output_tool_result, tool_result()}
          | {:deferred_tool_requests, %{calls: [part()], approvals: [part()], metadata: map()}}
          | {:output, %{output: term(), output_type: String.t(), partial: boolean()}}
          | {:event, %{kind: String.t(), data: term()}}
          | {:result, SynapseCore.Result.t()}

  @typedoc "A kind of event: the first element of its tuple."
  @type kind ::
          :part_start
          | :text_delta
          | :thinking_delta
          | :tool_call_delta
          | :part_delta
          | :part_end
          | :final_result
          | :tool_call
          | :tool_result
          | :output_tool_call
          | :output_tool_result
          | :deferred_tool_requests
          | :output
          | :event

  # Each kind, and the name of its field in the wire contract's `RunEvent`.
  @wire [
    part_start: "part_start",
    text_delta: "text_delta",
    thinking_delta: "thinking_delta",
    tool_call_delta: "tool_call_delta",
    part_delta: "part_delta",
    part_end: "part_end",
    final_result: "final_result",
    tool_call: "tool_call",
    tool_result: "tool_return",
    output_tool_call: "output_tool_call",
    output_tool_result: "output_tool_return",
    deferred_tool_requests: "deferred_tool_requests_json",
    output: "output",
    event: "other"
  ]

  @doc """
  Every kind of event, in the order this documentation lists them.

      iex> :thinking_delta in SynapseCore.Event.kinds()
      true
  """
  @spec kinds() :: [kind()]
  def kinds, do: Keyword.keys(@wire)

  @doc "The kinds a run sends when its `:events` option is not given."
  @spec default_kinds() :: [kind()]
  def default_kinds, do: @default_kinds

  @doc false
  # The wire contract's names of `kinds`, for the run's request.
  @spec wire_names([kind()]) :: [String.t()]
  def wire_names(kinds), do: Enum.map(kinds, &Keyword.fetch!(@wire, &1))
end
