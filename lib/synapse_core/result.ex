defmodule SynapseCore.Result do
  @moduledoc """
  The result of an agent run.

    * `output` - a string for agents whose output is text; for agents with a
      structured output type, the output decoded from JSON: maps with
      *string* keys, lists, numbers (integers of any size), booleans and
      `nil`. String keys because the keys come from the Python side and
      atoms are never created from external data (they are not garbage
      collected). An output of `bytes` (an output function's rendered
      file) is that binary; bytes within structured output are text, as
      Pydantic writes them, and an `:unrepresentable` error when they are
      not UTF-8.
    * `output_type` - the Python class of the output, as
      `type(output).__qualname__`: `"str"`, `"int"`, `"dict"`, or a model's
      name. For an agent whose output type is a union (`SeatPreference |
      Failed`), it says which member the output is, even when two members
      decode to the same map (`Failed()` and an empty model are both `%{}`).
    * `usage` - a `SynapseCore.Usage`.
    * `messages` - the whole conversation so far (the history that was given
      plus this run's messages): a `SynapseCore.Messages` holding
      pydantic-ai's own JSON bytes. Pass it (or the result) as
      `message_history:` to continue the conversation; store
      `messages.json`; read it with `SynapseCore.Messages.decode/1`. `nil`
      for a run with `messages: false`.
    * `new_message_index` - where this run's messages begin in `messages`;
      `new_messages/1` gives them (pydantic-ai's `new_messages()`).
    * `run_id` - pydantic-ai's id of this run.

  In iex (`inspect/2`), a result shows its output, output type, usage, the
  number of messages (and how many are new) and its run id, not the
  conversation itself:

      #SynapseCore.Result<output: "Hello!", output_type: "str",
       usage: #SynapseCore.Usage<input_tokens: 51, output_tokens: 4, requests: 1, tool_calls: 0>,
       messages: 4 (2 new), run_id: "...">
  """

  alias SynapseCore.{Messages, Usage}

  @type t :: %__MODULE__{
          output: String.t() | term(),
          output_type: String.t(),
          usage: Usage.t(),
          messages: Messages.t() | nil,
          new_message_index: non_neg_integer(),
          run_id: String.t()
        }

  defstruct output: nil,
            output_type: "",
            usage: %Usage{},
            messages: %Messages{json: "[]", count: 0},
            new_message_index: 0,
            run_id: ""

  @doc """
  The messages this run added to the conversation: pydantic-ai's
  `new_messages()`, each message's bytes as they are in `messages` (`nil`
  when the run left its messages out).
  """
  @spec new_messages(t()) :: Messages.t() | nil
  def new_messages(%__MODULE__{messages: nil}), do: nil

  def new_messages(%__MODULE__{messages: messages, new_message_index: index}),
    do: Messages.slice(messages, index)

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(result, opts) do
      messages =
        case result.messages do
          nil -> "left out"
          %{count: count} -> "#{count} (#{count - result.new_message_index} new)"
        end

      fields = [
        output: result.output,
        output_type: result.output_type,
        usage: result.usage,
        messages: messages,
        run_id: result.run_id
      ]

      container_doc("#SynapseCore.Result<", fields, ">", opts, &field/2,
        separator: ",",
        break: :flex
      )
    end

    # `messages` is a summary, shown as it is, not as a string.
    defp field({:messages, summary}, _opts), do: "messages: " <> summary
    defp field({key, value}, opts), do: concat(["#{key}: ", to_doc(value, opts)])
  end
end
